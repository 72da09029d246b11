"""reranker-cli through click's CliRunner (in-process) and one real subprocess."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from processes import quantizer_pids, run_python, running
from reranker import Reranker
from reranker.cli.main import cli

DOCS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Bananas."]


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANKER_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def _rerank(runner, model, *args, input=None):
    return runner.invoke(cli, ["rerank", "-m", str(model), "-q", "capital of France", *args],
                         input=input)


def test_documents_from_arguments_as_a_table(runner, converted):
    done = _rerank(runner, converted("q8_0"), *sum((["-d", d] for d in DOCS), []))
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0].split() == ["rank", "index", "score", "document"]
    assert len(lines) == 4
    assert {line.split()[1] for line in lines[1:]} == {"0", "1", "2"}


def test_json_output_has_the_rerank_api_shape(runner, converted):
    done = _rerank(runner, converted("q8_0"), "--json", "--top-n", "2",
                   *sum((["-d", d] for d in DOCS), []))
    assert done.exit_code == 0, done.output
    body = json.loads(done.output)
    assert set(body) == {"model", "usage", "results"}
    assert body["usage"]["total_tokens"] > 0
    assert len(body["results"]) == 2
    first = body["results"][0]
    assert set(first) == {"index", "relevance_score", "document"}
    assert first["document"] == {"text": DOCS[first["index"]]}
    assert body["results"][0]["relevance_score"] >= body["results"][1]["relevance_score"]


def test_json_scores_equal_the_library(runner, converted, ranker_for):
    done = _rerank(runner, converted("q8_0"), "--json", *sum((["-d", d] for d in DOCS), []))
    expected = ranker_for("q8_0").rerank("capital of France", DOCS)
    got = json.loads(done.output)["results"]
    assert [r["index"] for r in got] == [r.index for r in expected]
    assert [r["relevance_score"] for r in got] == pytest.approx(
        [r.relevance_score for r in expected], abs=1e-6)


def test_block_tokens_splits_the_list_as_the_library_does(runner, converted):
    docs = [f"passage {i} " + "words about a harbor city " * 40 for i in range(12)]
    args = ["--json", *sum((["-d", d] for d in docs), [])]
    whole = json.loads(_rerank(runner, converted("q8_0"), *args).output)
    done = _rerank(runner, converted("q8_0"), "--block-tokens", "2048", *args)
    assert done.exit_code == 0, done.output
    split = json.loads(done.output)
    with Reranker(converted("q8_0"), n_threads=2, block_tokens=2048) as ranker:
        expected = ranker.score("capital of France", docs)
    assert expected.blocks > 1
    # Each extra block repeats the template and the query.
    assert split["usage"]["total_tokens"] == expected.total_tokens > whole["usage"]["total_tokens"]
    by_index = {r["index"]: r["relevance_score"] for r in split["results"]}
    assert [by_index[i] for i in range(len(docs))] == pytest.approx(expected.scores, abs=1e-6)


def test_block_tokens_below_the_minimum_is_a_usage_error(runner, converted):
    done = _rerank(runner, converted("q8_0"), "--block-tokens", "500", "-d", "x")
    assert done.exit_code == 2
    assert "--block-tokens" in done.output and "500" in done.output


def test_documents_from_a_plain_file_and_jsonl(runner, converted, tmp_path):
    plain = tmp_path / "docs.txt"
    plain.write_text("\n".join(DOCS) + "\n\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS)))
    outputs = []
    for path in (plain, jsonl):
        done = _rerank(runner, converted("q8_0"), "-f", str(path), "--json")
        assert done.exit_code == 0, done.output
        outputs.append(json.loads(done.output)["results"])
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 3


def test_documents_from_stdin(runner, converted):
    done = _rerank(runner, converted("q8_0"), "--json", input="\n".join(DOCS))
    assert done.exit_code == 0, done.output
    assert len(json.loads(done.output)["results"]) == 3


def test_batch_jsonl_in_and_out(runner, converted, tmp_path):
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(r) for r in [
        {"query": "France", "documents": DOCS},
        {"query": "fruit", "documents": [{"text": d} for d in DOCS], "top_n": 1},
    ]))
    done = runner.invoke(cli, ["rerank", "-m", str(converted("q8_0")), "--batch", str(batch)])
    assert done.exit_code == 0, done.output
    responses = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [len(r["results"]) for r in responses] == [3, 1]
    assert done.stderr.splitlines()[-1] == "queries: 2/2"  # not a bare "queries" label


@pytest.mark.parametrize("command", [["rerank", "-m", "", "-q", "q", "-d", "d"], ["inspect", ""]])
def test_an_empty_model_is_refused_not_taken_for_the_working_directory(runner, converted,
                                                                      tmp_path, command):
    """pathlib reads "" as "."; `-m "$MODEL"` with MODEL unset used whatever GGUF was here."""
    shutil.copy(converted("q8_0"), tmp_path / "here.gguf")
    done = runner.invoke(cli, command)
    assert done.exit_code == 1
    assert done.output == ("Error: the model is empty; give a GGUF path or a model name, or "
                           "leave it out for the default model\n")


@pytest.mark.parametrize("content,message", [
    ('{"text": "ok"}\n{"body": "no text"}\n', 'docs.jsonl:2: expected an object with a string "text"'),
    ('{"text": "ok"}\n{not json\n', "docs.jsonl:2: not valid JSON"),
    ("\n\n", "no documents to rank"),
])
def test_bad_document_files(runner, converted, tmp_path, content, message):
    path = tmp_path / "docs.jsonl"
    path.write_text(content)
    done = _rerank(runner, converted("q8_0"), "-f", str(path))
    assert done.exit_code == 1
    assert message in done.output
    assert "Traceback" not in done.output


def test_missing_model_says_how_to_get_one(runner):
    done = runner.invoke(cli, ["rerank", "-q", "x", "-d", "y"])
    assert done.exit_code == 1
    assert "reranker-cli pull" in done.output and "reranker-cli convert" in done.output


def test_unknown_model_name(runner):
    done = runner.invoke(cli, ["rerank", "-m", "no-such-model", "-q", "x", "-d", "y"])
    assert done.exit_code == 1 and "no-such-model" in done.output


def test_model_by_name_from_the_models_folder(runner, converted, tmp_path):
    (tmp_path / "models").mkdir()
    os.link(converted("q8_0"), tmp_path / "models" / "jina-reranker-v3-q8_0.gguf")
    by_name = runner.invoke(cli, ["rerank", "-m", "jina-reranker-v3-q8_0", "-q", "x", "-d", "y"])
    default = runner.invoke(cli, ["rerank", "-q", "x", "-d", "y"])
    assert by_name.exit_code == 0 and default.exit_code == 0, by_name.output + default.output
    assert by_name.output == default.output


def test_query_is_required(runner, converted):
    done = runner.invoke(cli, ["rerank", "-m", str(converted("q8_0")), "-d", "y"])
    assert done.exit_code == 2 and "--query is required" in done.output


def test_convert_quantize_and_inspect(runner, tiny_checkpoint, tmp_path):
    f16 = tmp_path / "m-f16.gguf"
    done = runner.invoke(cli, ["convert", str(tiny_checkpoint), "-o", str(f16), "-t", "f16"])
    assert done.exit_code == 0, done.output
    assert "f16" in done.output and "24 tensors" in done.output
    # stderr is not a terminal here: a count, not a bar's bare label ("tensors")
    assert "\ntensors: 24/24\n" in done.stderr and "\ntensors\n" not in done.stderr
    q4 = tmp_path / "m-q4.gguf"
    done = runner.invoke(cli, ["quantize", str(f16), "-o", str(q4), "-t", "q4_k_m"])
    assert done.exit_code == 0, done.output
    done = runner.invoke(cli, ["inspect", str(q4), "--json"])
    info = json.loads(done.output)
    assert info["file_type"] == "q4_k_m" and info["architecture"] == "qwen3"
    assert info["markers"] == {"<|embed_token|>": 151670, "<|rerank_token|>": 151671}
    assert info["projector"]["shapes"] == [[128, 256], [128, 128]]
    text = runner.invoke(cli, ["inspect", str(q4)]).output
    assert "q4_k_m" in text and "151670" in text


def test_a_quantize_that_cannot_start_prints_only_the_error(runner, tmp_path):
    """It announced "quantizing nope.gguf to q4_0..." before saying the file is missing."""
    done = runner.invoke(cli, ["quantize", "nope.gguf", "-o", "x.gguf", "-t", "q4_0"])
    assert done.exit_code == 1
    assert done.output == "Error: model file nope.gguf does not exist\n"


def test_convert_default_output_goes_to_models(runner, tiny_checkpoint, tmp_path):
    done = runner.invoke(cli, ["convert", str(tiny_checkpoint), "-t", "q8_0"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "models" / f"{tiny_checkpoint.name}-q8_0.gguf").is_file()


@pytest.mark.parametrize("source", [".", "./", "sub/.."])
def test_convert_names_a_relative_directory_by_its_own_name(runner, tiny_checkpoint, tmp_path,
                                                          monkeypatch, source):
    checkpoint = tmp_path / "my-checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint, copy_function=os.link)
    (checkpoint / "sub").mkdir()
    monkeypatch.chdir(checkpoint)
    done = runner.invoke(cli, ["convert", source, "-t", "f16"])
    assert done.exit_code == 0, done.output
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["my-checkpoint-f16.gguf"]


def test_convert_errors_are_one_line(runner, tmp_path):
    done = runner.invoke(cli, ["convert", str(tmp_path), "-o", str(tmp_path / "x.gguf")])
    assert done.exit_code == 1
    assert done.output.startswith("Error: ") and "no config.json" in done.output
    done = runner.invoke(cli, ["convert", str(tmp_path), "-t", "iq2_xxs", "-o", "x.gguf"])
    assert done.exit_code == 1 and "importance matrix" in done.output


@pytest.mark.parametrize("command", ["convert", "quantize", "rerank", "pull", "inspect", "serve",
                                     "eval", "compare"])
def test_every_command_has_help_with_an_example(runner, command):
    done = runner.invoke(cli, [command, "--help"])
    assert done.exit_code == 0
    assert "Example" in done.output and "reranker-cli" in done.output


def test_the_console_script_runs_as_a_process(converted):
    done = subprocess.run([sys.executable, "-m", "reranker.cli.main", "rerank", "-m",
                           str(converted("q8_0")), "-q", "x", "--json"], input="a\nb\n",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["results"]) == 2
    assert done.stderr == ""  # llama.cpp stays quiet without -v
    verbose = subprocess.run([sys.executable, "-m", "reranker.cli.main", "-v", "rerank", "-m",
                              str(converted("q8_0")), "-q", "x", "-d", "a"],
                             capture_output=True, text=True, timeout=120)
    assert "llama_model_loader" in verbose.stderr


NOT_UTF8 = "Paris\n".encode() + b"caf\xe9 au lait\n"  # 0xe9: Latin-1, not UTF-8


@pytest.mark.parametrize("how", ["documents-file", "documents-file -", "stdin", "batch"])
def test_input_that_is_not_utf8_names_the_input_and_byte_offset(runner, converted, tmp_path,
                                                                how):
    path = tmp_path / "docs.txt"
    path.write_bytes(NOT_UTF8)
    name = "docs.txt"
    if how == "documents-file":
        done = _rerank(runner, converted("q8_0"), "-f", str(path))
    elif how == "documents-file -":
        done = _rerank(runner, converted("q8_0"), "-f", "-", input=NOT_UTF8)
        name = "<stdin>"
    elif how == "stdin":
        done = _rerank(runner, converted("q8_0"), input=NOT_UTF8)
        name = "<stdin>"
    else:
        path.write_bytes(json.dumps({"query": "q", "documents": ["a"]}).encode() + b"\n"
                         + b'{"query": "caf\xe9", "documents": ["b"]}\n')
        done = runner.invoke(cli, ["rerank", "-m", str(converted("q8_0")), "--batch", str(path)])
    assert done.exit_code == 1
    offset = (NOT_UTF8 if name == "<stdin>" else path.read_bytes()).index(b"\xe9")
    message = f"not UTF-8 text (byte 0xe9 at byte offset {offset})"
    if how == "batch":  # the line is answered with an error; the others are scored
        answers = [json.loads(line) for line in done.stdout.splitlines()]
        assert "results" in answers[0] and answers[1]["line"] == 2
        assert message in answers[1]["error"]["message"]
        assert "1 of 2 requests in" in done.stderr and "docs.txt failed (line 2)" in done.stderr
    else:
        assert f"{name}:2: {message}" in done.output


@pytest.mark.parametrize("option", ["-q", "-d", "-i"])
def test_arguments_that_are_not_utf8_are_named(runner, converted, option):
    # Python hands on argv bytes that are not UTF-8 as surrogates (here: 0xe9).
    args = {"-q": "capital", "-d": "Paris", "-i": "rank"}
    args[option] = "caf\udce9"
    done = runner.invoke(cli, ["rerank", "-m", str(converted("q8_0")),
                               *sum(([k, v] for k, v in args.items()), [])])
    assert done.exit_code == 1
    name = {"-q": "--query", "-d": "--document 1", "-i": "--instruction"}[option]
    assert f"{name} is not UTF-8 (byte 0xe9 at byte offset 3)" in done.output


def test_a_lone_surrogate_in_json_is_named(runner, converted, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "half a pair \\ud83d"}\n')
    done = _rerank(runner, converted("q8_0"), "-f", str(path))
    assert done.exit_code == 1
    assert 'docs.jsonl:2: "text" holds a lone surrogate (\\ud83d)' in done.output


def test_a_byte_order_mark_does_not_hide_json_lines(runner, converted, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps({"text": d}) for d in DOCS).encode())
    done = _rerank(runner, converted("q8_0"), "-f", str(path), "--json")
    assert done.exit_code == 0, done.output
    assert sorted(r["document"]["text"] for r in json.loads(done.output)["results"]) == \
        sorted(DOCS)


def _model_used(runner) -> str:
    """The file name of the model `rerank` takes without --model."""
    done = runner.invoke(cli, ["rerank", "-q", "x", "-d", "y", "--json"])
    assert done.exit_code == 0, done.output
    return json.loads(done.output)["model"]


def test_the_only_model_in_the_folder_is_the_default(runner, converted, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    os.link(converted("q8_0"), models / "mine-f16.gguf")
    (models / "DEFAULT_MODEL").write_text("deleted-since.gguf\n")  # names a file no longer there
    assert _model_used(runner) == "mine-f16"
    done = runner.invoke(cli, ["inspect", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["file"] == str(models / "mine-f16.gguf")


def test_several_models_without_a_record_are_listed(runner, converted, tmp_path):
    models = tmp_path / "models"
    (models / "published").mkdir(parents=True)
    os.link(converted("q8_0"), models / "a.gguf")
    os.link(converted("q8_0"), models / "published" / "b.gguf")
    done = runner.invoke(cli, ["rerank", "-q", "x", "-d", "y"])
    assert done.exit_code == 1
    assert "holds 2 models (a.gguf, published/b.gguf); pass --model" in done.output
    # The name the README documents still wins among several...
    os.link(converted("q8_0"), models / "jina-reranker-v3-q8_0.gguf")
    assert _model_used(runner) == "jina-reranker-v3-q8_0"
    # ...and the record (which pull writes) over that.
    (models / "DEFAULT_MODEL").write_text("published/b.gguf\n")
    assert _model_used(runner) == "b"


@pytest.fixture
def short_context_model(tiny_checkpoint, tmp_path):
    """The tiny model with a 512-token context, so that a long instruction cannot fit."""
    import shutil

    from convert.api import convert_checkpoint

    checkpoint = tmp_path / "short"
    shutil.copytree(tiny_checkpoint, checkpoint, copy_function=os.link)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").unlink()  # a hard link to the shared fixture
    (checkpoint / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 512}))
    return convert_checkpoint(checkpoint, tmp_path / "short.gguf", "q8_0").path


def test_batch_answers_every_line_and_counts_the_failures(runner, short_context_model,
                                                         tmp_path):
    lines = [json.dumps({"query": "France", "documents": DOCS}).encode(),
             b"{not json",
             json.dumps({"query": 5, "documents": DOCS}).encode(),
             b"",  # blank: skipped, no answer
             json.dumps({"query": "q", "documents": ["a", 7]}).encode(),
             json.dumps({"query": "q", "documents": ["a"], "top_n": -1}).encode(),
             b'{"query": "caf\xe9", "documents": ["a"]}',  # Latin-1, not UTF-8
             json.dumps({"query": "q", "documents": ["a"], "instruction": "rank " * 600}).encode(),
             json.dumps({"query": "fruit", "documents": [{"text": d} for d in DOCS],
                         "top_n": 1}).encode(),
             b'{"query": "q", "documents": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"]
    batch = tmp_path / "batch.jsonl"
    batch.write_bytes(b"\n".join(lines) + b"\n")
    done = runner.invoke(cli, ["rerank", "-m", str(short_context_model), "--batch", str(batch)])
    assert done.exit_code == 1
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [len(a["results"]) if "results" in a else a["line"] for a in answers] == \
        [3, 2, 3, 5, 6, 7, 8, 1, 10]
    errors = {a["line"]: a["error"] for a in answers if "error" in a}
    assert {line: (e["type"], e.get("field")) for line, e in errors.items()} == {
        2: ("invalid_json", None), 3: ("invalid_request", "query"),
        5: ("invalid_request", "documents.1"), 6: ("invalid_request", "top_n"),
        7: ("invalid_json", None), 8: ("unprocessable", None), 10: ("invalid_json", None)}
    assert "byte 0xe9 at byte offset" in errors[7]["message"]
    assert "context is capped at 512" in errors[8]["message"]
    assert "nested too deeply" in errors[10]["message"]  # Python's parser recursed out
    assert f"7 of 9 requests in {batch} failed (line 2, 3, 5, 6, 7, 8, 10)" in done.stderr


def test_batch_refuses_options_it_would_ignore(runner, converted, tmp_path):
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps({"query": "q", "documents": DOCS}) + "\n")
    for option in (["--top-n", "1"], ["--instruction", "x"], ["--max-tokens-per-doc", "9"]):
        done = runner.invoke(cli, ["rerank", "-m", str(converted("q8_0")), "--batch", str(batch),
                                   *option])
        assert done.exit_code == 2 and "--batch takes each request's" in done.output


@pytest.mark.parametrize("command", [["convert", "SOURCE", "-t", "q8_0"], ["pull"]])
def test_a_models_folder_that_is_a_file_is_named(runner, tiny_checkpoint, tmp_path, monkeypatch,
                                                 command):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # pull must stop before any download
    (tmp_path / "models").write_text("not a folder")
    args = [str(tiny_checkpoint) if a == "SOURCE" else a for a in command]
    done = runner.invoke(cli, args)
    assert done.exit_code == 1
    assert f"the models folder {tmp_path / 'models'} ($RERANKER_MODELS_DIR" in done.output


def test_pull_file_must_be_a_gguf(runner, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    done = runner.invoke(cli, ["pull", "jinaai/jina-reranker-v3-GGUF", "--file", "README.md"])
    assert done.exit_code == 2 and "--file 'README.md' is not a .gguf file" in done.output


def _interrupt_when(job: subprocess.Popen, ready, what: str) -> None:
    """SIGINT to `job` once `ready()` is true, as Ctrl-C sends it."""
    deadline = time.monotonic() + 120
    while not ready():
        assert job.poll() is None, f"ended before {what}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.02)
    job.send_signal(signal.SIGINT)


@pytest.mark.slow  # a child process
def test_ctrl_c_during_llama_cpps_quantizer_writes_nothing(converted, tmp_path):
    """The quantizer runs in C and calls Python only to log: an interrupt raised in that
    callback was swallowed by ctypes, and the file was finished and kept (exit 0)."""
    out = tmp_path / "q.gguf"
    job = subprocess.Popen([sys.executable, "-m", "reranker.cli.main", "quantize",
                            str(converted("f16")), "-t", "q4_k_m", "-o", str(out),
                            "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    # Once llama.cpp has written into the temporary file, it is quantizing.
    _interrupt_when(job, lambda: any(p.stat().st_size for p in tmp_path.glob(".q.gguf.*")),
                    "quantizing")
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 1 and "Aborted!" in stderr, stderr
    assert "Exception ignored" not in stderr
    assert list(tmp_path.iterdir()) == []


def _start_quantizing(converted, tmp_path) -> tuple[subprocess.Popen, int]:
    """`quantize` as a child process, once llama.cpp's quantizer (its own child) runs."""
    job = subprocess.Popen([sys.executable, "-m", "reranker.cli.main", "quantize",
                            str(converted("f16")), "-t", "q4_k_m", "-o", str(tmp_path / "q.gguf"),
                            "--threads", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (started := quantizer_pids(job.pid)) and time.monotonic() < deadline:
        time.sleep(0.002)
    assert started, "the quantizer never started"
    return job, started.pop()


def _ends_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


@pytest.mark.slow  # child processes
def test_the_quantizer_ends_with_a_killed_command(converted, tmp_path):
    """`kill -9` of the command, even while its quantizer is still starting up (it took
    its parent's pid too late, and then quantized to the end), leaves no quantizer on and,
    as the quantizer removes the file it was writing, no temporary file either."""
    job, quantizer = _start_quantizing(converted, tmp_path)
    job.kill()
    job.communicate()
    assert _ends_within(quantizer, 3)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # child processes
def test_a_double_ctrl_c_still_stops_the_quantizer(converted, tmp_path):
    """The second interrupt could land before the first's kill (it does so only in some
    runs): the quantizer lived on and wrote a file after its temporary had been removed."""
    job, quantizer = _start_quantizing(converted, tmp_path)
    time.sleep(0.5)
    job.send_signal(signal.SIGINT)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 1 and "Traceback" not in stderr, stderr
    assert _ends_within(quantizer, 3)
    assert list(tmp_path.iterdir()) == []  # nothing written after the command ended


# A real SIGINT, sent by the child to itself from an import hook at its first import of
# numpy: that is while the command group is being imported, before any command runs.
INTERRUPTED_WHILE_IMPORTING = """
import os, signal, sys

class InterruptAtNumpy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptAtNumpy())
sys.argv[1:] = ["inspect", "nothing.gguf"]
from reranker.cli.entry import main
main()
"""


def test_ctrl_c_while_the_cli_imports_its_modules_ends_it_without_a_traceback():
    """The imports take about half a second; a Ctrl-C then printed a KeyboardInterrupt
    traceback from inside them."""
    done = run_python(INTERRUPTED_WHILE_IMPORTING)
    assert (done.returncode, done.stderr) == (1, "\nAborted!\n")


def test_import_reranker_loads_neither_numpy_nor_llama_cpp():
    import reranker

    assert sorted(reranker.__all__) == sorted(reranker._EXPORTS)
    for name in reranker.__all__:
        assert getattr(reranker, name).__name__ == name
    child = run_python("import sys, reranker\n"
                       "print(sorted({'numpy', 'llama_cpp', 'pydantic'} & set(sys.modules)))")
    assert child.stdout.strip() == "[]", child.stderr


@pytest.mark.slow  # a child process
def test_ctrl_c_during_a_batch_stops_it(converted, tmp_path):
    """An interrupt while llama.cpp decodes stops the run; it was swallowed in one of its
    callbacks and came out as a failed request ("llama_decode failed with status 2")."""
    batch = tmp_path / "batch.jsonl"
    long_docs = [f"word{j} " * 300 for j in range(8)]
    batch.write_text("".join(json.dumps({"query": f"q {i}", "documents": long_docs}) + "\n"
                             for i in range(200)))
    answers = tmp_path / "answers.jsonl"
    with open(answers, "w") as stdout:
        job = subprocess.Popen([sys.executable, "-m", "reranker.cli.main", "rerank", "-m",
                                str(converted("q8_0")), "--batch", str(batch), "--threads",
                                "1"], stdout=stdout, stderr=subprocess.PIPE, text=True)
        _interrupt_when(job, lambda: answers.stat().st_size > 0, "answering")
        _, stderr = job.communicate(timeout=120)
    assert job.returncode == 1 and stderr.rstrip().endswith("Aborted!"), stderr
    assert "Exception ignored" not in stderr and "status" not in answers.read_text()
    assert len(answers.read_text().splitlines()) < 200
