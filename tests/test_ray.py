"""`rerank --batch --ray` and reranker.ray.rerank_dataset on a real local Ray instance.

One Ray instance (two CPUs) serves the module: starting Ray takes seconds on a small
machine. The CLI runs in-process through CliRunner and joins it; one subprocess test
runs the real command, which starts and stops a Ray instance of its own.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from reranker.cli.main import cli
from processes import pids_whose_command
from texts import MULTILINGUAL

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# `slow` (registered by the test-suite work on another branch) marks the tests that run a
# Ray job: each costs seconds of Ray scheduling, and the first one Ray's start-up.
DOCS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Bananas.",
        *[t for t in MULTILINGUAL if t]]


def _requests(count: int) -> list[dict]:
    """Varied, well-formed requests: list lengths, top_n and instructions differ."""
    out = []
    for i in range(count):
        docs = DOCS[i % 5:] + DOCS[:i % 3]
        request = {"query": f"question {i}: {DOCS[i % len(DOCS)][:30]}", "documents": docs}
        if i % 4 == 1:
            request["top_n"] = 2
        if i % 5 == 2:
            request["instruction"] = "Prefer documents about capitals."
        out.append(request)
    return out


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANKER_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


# Lines a user's file may hold besides requests: each is answered in its place.
BAD_LINES = [b"{not json",
             json.dumps({"documents": DOCS}).encode(),  # no query
             b'{"query": "caf\xe9", "documents": ["a"]}',  # Latin-1, not UTF-8
             json.dumps({"query": "q", "documents": ["a", 7]}).encode(),
             json.dumps({"query": "q", "documents": ["a"], "top_n": -1}).encode()]


def _batch_file(tmp_path, requests: list[dict], bad: list[bytes] = ()) -> tuple:
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in requests]
    for i, line in enumerate(bad):  # spread among the good lines, with a blank line
        lines.insert(2 + 3 * i, line)
    lines.insert(1, b"")
    path = tmp_path / "batch.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _one_process(model, batch):
    """The one-process `rerank --batch`, in a process of its own set up as a one-CPU
    replica: one llama.cpp thread, and one OpenBLAS thread, as Ray sets OMP_NUM_THREADS
    to an actor's num_cpus. The projector's float32 matmul runs in numpy, and OpenBLAS
    with two threads moves scores in the 8th digit, so only like for like is bit-exact."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "reranker.cli.main", "rerank", "-m", str(model),
                           "--batch", str(batch), "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_ray_batch_answers_exactly_as_one_process(local_ray, runner, converted, tmp_path):
    model = str(converted("q8_0"))
    batch = _batch_file(tmp_path, _requests(12), BAD_LINES)
    one = _one_process(model, batch)
    out = tmp_path / "ray.jsonl"
    done = runner.invoke(cli, ["rerank", "-m", model, "--batch", str(batch), "--ray",
                               "--replicas", "2", "-o", str(out)])
    assert one.returncode == 1 and done.exit_code == 1, done.output
    assert out.read_text(encoding="utf-8") == one.stdout  # same lines, order, scores
    answers = [json.loads(line) for line in one.stdout.splitlines()]
    assert len(answers) == 12 + len(BAD_LINES)
    assert sum("error" in a for a in answers) == len(BAD_LINES)
    failed = one.stderr.strip().splitlines()[-1]
    assert failed.startswith(f"Error: {len(BAD_LINES)} of 17 requests in {batch} failed (line ")
    assert failed in done.stderr
    summary = done.stderr
    tokens = sum(a["usage"]["total_tokens"] for a in answers if "usage" in a)
    documents = sum(len(r["documents"]) for r in _requests(12))
    assert f"17 requests (5 failed), {documents} documents, {tokens} tokens in " in summary
    assert summary.count("  replica ") in (1, 2)  # a replica that got no work is not listed
    assert not list(tmp_path.glob(".ray.jsonl.*"))  # the temporary file was renamed


@pytest.mark.slow
def test_rerank_dataset_adds_results_in_row_order(local_ray, converted, ranker_for):
    from reranker.ray import rerank_dataset

    requests = _requests(10)
    rows = [{"id": i, "query": r["query"], "documents": r["documents"]}
            for i, r in enumerate(requests)]
    dataset = ray.data.from_items(rows, override_num_blocks=5)  # blocks for two replicas
    out = rerank_dataset(dataset, converted("q8_0"), replicas=2, threads_per_replica=1,
                         top_n=3, batch_size=2).take_all()
    assert [row["id"] for row in out] == list(range(10))
    ranker = ranker_for("q8_0")
    for row, request in zip(out, requests):
        expected = ranker.rerank(request["query"], request["documents"], top_n=3)
        assert row["error"] is None
        assert [r["index"] for r in row["results"]] == [r.index for r in expected]
        assert [r["relevance_score"] for r in row["results"]] == pytest.approx(
            [r.relevance_score for r in expected], abs=1e-6)  # ranker_for runs two threads
        assert row["total_tokens"] > 0
        assert list(row["documents"]) == request["documents"]


@pytest.mark.slow
def test_parquet_round_trip_keeps_columns_rows_and_scores(local_ray, runner, converted,
                                                          tmp_path):
    model = str(converted("q8_0"))
    requests = _requests(9)
    requests[4] = {"query": None, "documents": ["a"]}  # a bad row: no query
    table = pa.table({
        "id": [f"r{i}" for i in range(9)],
        "query": [r["query"] for r in requests],
        "documents": [r["documents"] for r in requests],
        "top_n": pa.array([r.get("top_n") for r in requests], pa.int32()),
        "instruction": [r.get("instruction") for r in requests]})
    source = tmp_path / "in.parquet"
    pq.write_table(table, source, row_group_size=4)
    out = tmp_path / "out.parquet"
    done = runner.invoke(cli, ["rerank", "-m", model, "--batch", str(source), "--ray",
                               "--replicas", "2", "-o", str(out)])
    assert done.exit_code == 1
    assert f"1 of 9 requests in {source} failed (row 5)" in done.stderr
    got = pq.read_table(out)
    assert got.select(table.column_names).equals(table)  # input kept, in order
    assert got.column_names == [*table.column_names, "results", "total_tokens", "error"]

    jsonl = tmp_path / "same.jsonl"
    # The same rows, nulls included (a Parquet row has every column).
    jsonl.write_text("\n".join(json.dumps({name: r.get(name) for name in
                                           ("query", "documents", "top_n", "instruction")})
                               for r in requests) + "\n")
    one = _one_process(model, jsonl)
    expected = [json.loads(line) for line in one.stdout.splitlines()]
    for row, answer in zip(got.to_pylist(), expected):
        if "error" in answer:
            assert row["results"] is None and row["total_tokens"] is None
            assert row["error"]["field"] == "query"
            assert row["error"] == answer["error"]  # the one contract's refusal, word for word
            continue
        assert row["error"] is None
        assert row["results"] == [{"index": r["index"], "relevance_score": r["relevance_score"]}
                                  for r in answer["results"]]  # bit-identical floats
        assert row["total_tokens"] == answer["usage"]["total_tokens"]


def _replica_pid(row) -> int:
    return int(row["replica"].rsplit(":", 1)[1])


@pytest.mark.slow
def test_a_replica_killed_mid_job_loses_and_duplicates_no_row(local_ray, converted,
                                                               ranker_for):
    from reranker.ray import rerank_dataset

    requests = _requests(40)
    dataset = ray.data.from_items([{"id": i, **r} for i, r in enumerate(
        {"query": r["query"], "documents": r["documents"] * 4} for r in requests)])
    out = rerank_dataset(dataset, converted("q8_0"), replicas=2, batch_size=1, stats=True)
    rows, killed = [], None
    for row in out.iter_rows():
        rows.append(row)
        if killed is None:
            # The replica that answered first has more rows queued: kill its process as
            # the OOM killer or a lost node would, while the job still has rows to answer.
            killed = _replica_pid(row)
            os.kill(killed, signal.SIGKILL)
    assert [row["id"] for row in rows] == list(range(40))  # none lost, none twice
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)
    assert any(_replica_pid(row) != killed for row in rows[1:])
    ranker = ranker_for("q8_0")
    for row in rows[::7]:
        request = {"query": requests[row["id"]]["query"],
                   "documents": requests[row["id"]]["documents"] * 4}
        expected = ranker.rerank(request["query"], request["documents"])
        assert [r["index"] for r in row["results"]] == [r.index for r in expected]


@pytest.mark.parametrize("args, message", [
    (["--replicas", "2"], "go with --batch --ray"),
    (["--output", "x.jsonl"], "go with --batch --ray"),
    (["--ray", "--threads", "2"], "set --threads-per-replica instead of --threads"),
    (["--ray", "--output", "x.parquet"], "JSON Lines input is answered in JSON Lines"),
])
def test_ray_options_out_of_place_are_usage_errors(runner, converted, tmp_path, args, message):
    batch = _batch_file(tmp_path, _requests(2))
    done = runner.invoke(cli, ["rerank", "-m", str(converted("q8_0")), "--batch", str(batch),
                               *args])
    assert done.exit_code == 2 and message in done.output
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "x.parquet").exists()


def test_ray_needs_a_batch_and_parquet_needs_an_output(runner, converted, tmp_path):
    model = str(converted("q8_0"))
    done = runner.invoke(cli, ["rerank", "-m", model, "-q", "q", "-d", "a", "--ray"])
    assert done.exit_code == 2 and "--ray runs a --batch file" in done.output
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"query": ["q"], "documents": [["a"]]}), source)
    done = runner.invoke(cli, ["rerank", "-m", model, "--batch", str(source), "--ray"])
    assert done.exit_code == 2 and "pass --output OUT.parquet" in done.output
    # Without --ray the file would be read as JSON Lines: refused, naming --ray.
    done = runner.invoke(cli, ["rerank", "-m", model, "--batch", str(source)])
    assert done.exit_code == 2 and "a Parquet --batch file is read by --ray" in done.output
    assert done.stdout == ""


def test_unusable_parquet_input_is_refused_before_ray_starts(runner, converted, tmp_path):
    model, out = str(converted("q8_0")), tmp_path / "out.parquet"
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"question": ["q"], "documents": [["a"]]}), wrong)
    not_parquet = tmp_path / "text.parquet"
    not_parquet.write_text('{"query": "q", "documents": ["a"]}\n')
    for source, message in ((wrong, "has no column query (it has question, documents)"),
                            (not_parquet, "as Parquet")):
        done = runner.invoke(cli, ["rerank", "-m", model, "--batch", str(source), "--ray",
                                   "-o", str(out)])
        assert done.exit_code == 1 and message in done.output, done.output
        assert "Traceback" not in done.output and not out.exists()


def test_the_output_never_overwrites_an_input(runner, converted, tmp_path):
    batch = _batch_file(tmp_path, _requests(2))
    model = tmp_path / "model.gguf"
    shutil.copy(converted("q8_0"), model)
    before = batch.read_bytes(), model.read_bytes()
    for output in (batch, model):
        done = runner.invoke(cli, ["rerank", "-m", str(model), "--batch", str(batch), "--ray",
                                   "-o", str(output)])
        assert done.exit_code == 2 and "writing it would destroy that input" in done.output
    assert (batch.read_bytes(), model.read_bytes()) == before


def test_plain_cli_never_imports_ray():
    code = ("import sys, reranker.cli.main, reranker; "
            "sys.exit(1 if 'ray' in sys.modules or 'reranker.ray' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@pytest.mark.slow
def test_rerank_dataset_refuses_bad_arguments(local_ray, converted, tmp_path):
    from reranker.errors import ModelFileError
    from reranker.ray import rerank_dataset

    dataset = ray.data.from_items([{"query": "q", "documents": ["a"]}])
    with pytest.raises(TypeError, match="must be a ray.data.Dataset, got list"):
        rerank_dataset([{"query": "q"}], converted("q8_0"))
    for name, value in (("replicas", 0), ("threads_per_replica", True), ("batch_size", 1.5)):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            rerank_dataset(dataset, converted("q8_0"), **{name: value})
    for top_n in (-1, 0, True):
        with pytest.raises(ValueError, match="top_n must be an integer of at least 1"):
            rerank_dataset(dataset, converted("q8_0"), top_n=top_n)
    with pytest.raises(ModelFileError, match="does not exist"):
        rerank_dataset(dataset, tmp_path / "missing.gguf")


@pytest.mark.slow
def test_the_command_starts_and_stops_its_own_ray(converted, tmp_path):
    """The real command in a process of its own: it starts a local Ray instance, writes
    only answers on stdout (Ray's progress goes to stderr), and stops Ray at the end."""
    batch = _batch_file(tmp_path, _requests(3))
    done = subprocess.run([sys.executable, "-m", "reranker.cli.main", "rerank", "-m",
                           str(converted("q8_0")), "--batch", str(batch), "--ray",
                           "--replicas", "1"], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [len(a["results"]) for a in answers] == [len(r["documents"]) if "top_n" not in r
                                                    else r["top_n"] for r in _requests(3)]
    assert "3 requests (0 failed)" in done.stderr


def test_a_replica_answers_rows_of_any_type_with_a_result_or_an_error(converted):
    """The replica class on its own (Ray constructs and calls it the same way): rows
    whose columns have the wrong Arrow type each get an error naming the field."""
    from reranker.ray.replica import RerankReplica, ReplicaSettings
    from reranker.reranker import BLOCK_TOKENS

    replica = RerankReplica(ReplicaSettings(model=str(converted("q8_0")), projector=None,
                                            threads=1, block_tokens=BLOCK_TOKENS, cpu_path=None,
                                            top_n=1))
    cases = {
        "binary documents": (pa.table({"query": ["q"], "documents": [[b"raw"]]}), None),
        "float top_n": (pa.table({"query": ["q"], "documents": [["a", "b"]],
                                  "top_n": [1.5]}), "top_n"),
        "NaN top_n": (pa.table({"query": ["q"], "documents": [["a"]],
                                "top_n": [float("nan")]}), None),
        "integer query": (pa.table({"query": [7], "documents": [["a"]]}), "query"),
        "null documents": (pa.table({"query": ["q"], "documents": pa.array(
            [None], pa.list_(pa.string()))}), "documents"),
        "no documents column": (pa.table({"query": ["q"]}), "documents"),
        # The contract's decisions hold for Parquet rows too.
        "empty query": (pa.table({"query": [""], "documents": [["a"]]}), "query"),
        "empty documents": (pa.table({"query": ["q"], "documents": pa.array(
            [[]], pa.list_(pa.string()))}), "documents"),
    }
    for name, (table, field) in cases.items():
        row = replica(table).to_pylist()[0]
        assert row["results"] is None and row["total_tokens"] is None, name
        assert row["error"]["type"] == "invalid_request" and row["error"]["field"] == field, name
    # Odd but valid: a blank query, an empty document, the job's top_n, a row's own.
    table = pa.table({"query": [" ", "北京 😀"], "documents": [["", "a"], ["x", "y", "z"]],
                      "top_n": pa.array([None, 3], pa.int64())})
    rows = replica(table).to_pylist()
    assert [len(r["results"]) for r in rows] == [1, 3]
    assert all(r["error"] is None for r in rows)
    assert rows[1]["query"] == "北京 😀" and rows[1]["documents"] == ["x", "y", "z"]
    # Documents as structs with a "text" field, as JSON Lines may give them.
    structs = replica(pa.table({"query": ["q"], "documents": [[{"text": "x"}, {"text": "y"}]]}))
    assert [r["index"] for r in structs.to_pylist()[0]["results"]] in ([0], [1])


def test_an_empty_input_gets_an_empty_output_without_ray(runner, converted, tmp_path):
    model = str(converted("q8_0"))
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    out = tmp_path / "out.jsonl"
    done = runner.invoke(cli, ["rerank", "-m", model, "--batch", str(blank), "--ray",
                               "-o", str(out)])
    assert done.exit_code == 0 and out.read_text() == "" and "requests" not in done.stderr
    source = tmp_path / "none.parquet"
    pq.write_table(pa.table({"query": pa.array([], pa.string()),
                             "documents": pa.array([], pa.list_(pa.string()))}), source)
    done = runner.invoke(cli, ["rerank", "-m", model, "--batch", str(source), "--ray",
                               "-o", str(tmp_path / "none-out.parquet")])
    assert done.exit_code == 0, done.output
    got = pq.read_table(tmp_path / "none-out.parquet")
    assert got.num_rows == 0
    assert got.column_names == ["query", "documents", "results", "total_tokens", "error"]


@pytest.mark.slow
def test_a_model_no_replica_can_load_fails_the_job_with_its_reason(local_ray, runner, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf" * 100)
    batch = _batch_file(tmp_path, _requests(2))
    out = tmp_path / "out.jsonl"
    done = runner.invoke(cli, ["rerank", "-m", str(bad), "--batch", str(batch), "--ray",
                               "--replicas", "1", "-o", str(out)])
    assert done.exit_code == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: the Ray job failed: reranker.errors.ModelFileError: {bad} is not a GGUF "
        "file (bad magic bytes)")
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.*"))


def _raylet_pids() -> set[int]:
    """The raylet processes on this machine (one per running Ray instance)."""
    return pids_whose_command(lambda command: b"raylet" in command.split(b"\0")[0])


def _start_ray_batch(converted, tmp_path, requests: int):
    """The real `rerank --batch --ray` command as a child process, on `requests` requests;
    with its answers file and the file its stderr goes to (a pipe could fill with Ray's
    progress and stall it)."""
    batch = _batch_file(tmp_path, _requests(requests))
    output = tmp_path / "answers.jsonl"
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        job = subprocess.Popen([sys.executable, "-m", "reranker.cli.main", "rerank", "-m",
                                str(converted("q8_0")), "--batch", str(batch), "--ray",
                                "--replicas", "1", "--output", str(output)],
                               stdout=subprocess.DEVNULL, stderr=stderr)
    return job, output, log


def _wait_until_writing(job, tmp_path, log, deadline: float) -> None:
    """Until the job's temporary answers file exists: replicas are answering."""
    import time

    while not list(tmp_path.glob(".answers.jsonl.*.tmp")):
        assert job.poll() is None, log.read_text(errors="replace")[-2000:]
        assert time.monotonic() < deadline, "the job never started writing"
        time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_mid_job_leaves_no_output_and_stops_its_ray(converted, tmp_path):
    """The real command, interrupted as Ctrl-C interrupts it (SIGINT) while answers are
    being written: it exits non-zero, leaves neither the output nor its temporary file,
    and stops the Ray instance it started."""
    import time

    before = _raylet_pids()
    job, output, log = _start_ray_batch(converted, tmp_path, 4000)  # long enough to be caught
    try:
        _wait_until_writing(job, tmp_path, log, time.monotonic() + 240)
        started = _raylet_pids() - before
        assert started, "the command's own Ray instance is not running"
        time.sleep(2)
        assert job.poll() is None, "the job ended before it could be interrupted"
        job.send_signal(signal.SIGINT)
        returncode = job.wait(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert returncode != 0, log.read_text(errors="replace")[-2000:]
    assert "Traceback" not in log.read_text(errors="replace")
    assert not output.exists() and not list(tmp_path.glob(".answers.jsonl.*"))
    deadline = time.monotonic() + 60
    while _raylet_pids() & started and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _raylet_pids() & started, "the command's Ray instance outlived it"


def _replica_pids() -> set[int]:
    """The processes of this machine's rerank replicas (Ray names each after its class)."""
    return pids_whose_command(lambda command: b"RerankReplica" in command)


@pytest.mark.slow
def test_a_replica_that_keeps_dying_ends_the_job(converted, tmp_path):
    """A replica killed every time it runs (as the kernel kills one that a request puts
    out of memory) is restarted a bounded number of times, then the command stops with
    what to do, instead of restarting it forever (Ray Data's default). The killing is
    done from outside: no request can be made to kill a replica on demand."""
    import time

    from reranker.ray import REPLICA_RESTARTS

    before = _replica_pids()
    job, output, log = _start_ray_batch(converted, tmp_path, 3000)
    killed = set()
    try:
        deadline = time.monotonic() + 300
        # Killed once it answers: a replica that dies while loading ends the job at once.
        _wait_until_writing(job, tmp_path, log, deadline)
        while job.poll() is None:
            assert time.monotonic() < deadline, f"still running after {len(killed)} kills"
            for pid in _replica_pids() - before - killed:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.3)
    finally:
        if job.poll() is None:
            job.kill()
    text = log.read_text(errors="replace")
    assert job.returncode == 1, text[-2000:]
    assert 2 <= len(killed) <= REPLICA_RESTARTS + 1
    last = text.strip().splitlines()[-1]
    assert last.startswith("Error: a replica's process died") and "--replicas" in last
    # Ray Data logs the actor's death with its own stack; none of this command's frames.
    assert "reranker/cli" not in text
    assert not output.exists() and not list(tmp_path.glob(".answers.jsonl.*"))
