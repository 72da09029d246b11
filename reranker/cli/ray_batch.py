"""`rerank --batch IN --ray`: the batch on Ray Data replicas, answered as one process would.

Ray is imported only inside `run_ray_batch`: the plain CLI, and an install without the
`ray` extra, never load it.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import click

from convert.errors import ConversionError
from convert.output import check_not_an_input
from reranker.cli.documents_input import InputError, batch_requests, input_name
from reranker.extras import install_hint
from reranker.projector import sidecar_candidates

PARQUET_SUFFIXES = (".parquet", ".pq")

ray_options = [
    click.option("--ray", "use_ray", is_flag=True,
                 help="Run --batch on Ray Data replicas (needs the ray extra); same answers, "
                      "same order."),
    click.option("--ray-address",
                 help="Join this Ray cluster (default: $RAY_ADDRESS if set, else a local Ray "
                      "instance started and stopped by the command)."),
    click.option("--replicas", type=click.IntRange(min=1),
                 help="Model replicas (default: the cluster's CPUs / --threads-per-replica)."),
    click.option("--threads-per-replica", type=click.IntRange(min=1),
                 help="llama.cpp threads of a replica, and the CPUs Ray reserves for it "
                      "(default: 1)."),
    click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
                 help="With --ray: write the answers here (.jsonl, or .parquet for Parquet "
                      "input) instead of stdout; written to a temporary file, then renamed."),
]


def with_ray_options(command):
    for option in reversed(ray_options):
        command = option(command)
    return command


@dataclass(frozen=True)
class RayJob:
    address: str | None
    replicas: int | None
    threads_per_replica: int
    output: Path | None


def is_parquet(path: str | Path) -> bool:
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def ray_job(batch_file: IO[bytes] | None, use_ray: bool, address: str | None,
            replicas: int | None, threads_per_replica: int | None, output: Path | None,
            threads: int | None) -> RayJob | None:
    """The --ray settings, or None without --ray (whose options are then refused); usage
    errors are found here, before Ray starts."""
    if not use_ray:
        if address or replicas or threads_per_replica or output:
            raise click.UsageError("--ray-address, --replicas, --threads-per-replica and "
                                   "--output go with --batch --ray")
        if batch_file is not None and is_parquet(input_name(batch_file)):
            # Read as JSON Lines it would be answered line by line with encoding errors.
            raise click.UsageError("a Parquet --batch file is read by --ray (add --ray "
                                   f"--output OUT.parquet; {install_hint('ray')}); "
                                   "without it, --batch reads JSON Lines")
        return None
    if batch_file is None:
        raise click.UsageError("--ray runs a --batch file")
    if threads is not None:
        raise click.UsageError("with --ray, set --threads-per-replica instead of --threads")
    job = RayJob(address or os.environ.get("RAY_ADDRESS"), replicas, threads_per_replica or 1,
                 output)
    _check_formats(input_name(batch_file), job)
    return job


def _check_formats(batch_name: str, job: RayJob) -> None:
    if is_parquet(batch_name):
        if job.output is None or not is_parquet(job.output):
            raise click.UsageError("Parquet input is answered in Parquet: pass --output "
                                   "OUT.parquet")
    elif job.output is not None and is_parquet(job.output):
        raise click.UsageError("JSON Lines input is answered in JSON Lines: name --output "
                               "OUT.jsonl, or give the input as Parquet")


def run_ray_batch(batch_file: IO[bytes], job: RayJob, model_path: Path,
                  settings: dict) -> None:
    """Answer every request of `batch_file` on Ray replicas; exit 1 if any failed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise click.ClickException(f"--ray needs Ray: {install_hint('ray')}") from None
    from reranker.ray.summary import JobSummary

    name = input_name(batch_file)
    if job.output is not None:
        batch_path = batch_file.name if isinstance(getattr(batch_file, "name", None), str) else None
        try:
            check_not_an_input(job.output.expanduser(),
                               [model_path, *sidecar_candidates(model_path), batch_path])
        except ConversionError as e:
            raise click.UsageError(f"--output: {e}") from None
    parquet = is_parquet(name)
    # Read before Ray starts, so that an unreadable input costs no cluster start-up.
    table = _read_parquet(name) if parquet else None
    rows = None if parquet else _jsonl_rows(batch_file)
    summary = JobSummary()
    start = time.perf_counter()
    empty = not table.num_rows if parquet else not rows
    # An empty input is answered with an empty output, without starting Ray.
    with nullcontext((0, False)) if empty else _ray_session(job.address) as (cpus, local):
        import ray.data

        if parquet:
            dataset = _parquet_dataset(table)
        else:
            dataset = ray.data.from_items(rows) if rows else None
            # (from_items splits the rows into up to 200 blocks itself)
        answered = None
        if dataset is not None:
            answered = _answer(dataset, job, model_path, settings, cpus, local, parquet)
        if parquet:
            failed = _write_parquet(answered, table.schema, job.output, summary)
        else:
            failed = _write_jsonl(answered, job.output, summary)
    if summary.requests:
        for line in summary.lines(time.perf_counter() - start):
            click.echo(line, err=True)
    if failed:
        from reranker.cli.rerank_command import batch_failed

        raise batch_failed(failed, summary.requests, name, "row" if parquet else "line")


def _jsonl_rows(batch_file: IO[bytes]) -> list[dict]:
    """The input lines as rows: each request as JSON text (checked again by its replica,
    so JSON Lines and Parquet rows meet one contract), or the error body of a line that
    is not a request. Read here, by the driver: large jobs keep their data in Parquet."""
    from reranker.ray.columns import INPUT_ERROR, JSON_REQUEST, LINE

    rows = []
    for number, request in batch_requests(batch_file):
        if not isinstance(request, InputError):
            rows.append({LINE: number, JSON_REQUEST: request.model_dump_json(exclude_none=True),
                         INPUT_ERROR: None})
        else:
            rows.append({LINE: number, JSON_REQUEST: None,
                         INPUT_ERROR: json.dumps(request.body(), ensure_ascii=False)})
    return rows


@contextmanager
def _ray_session(address: str | None) -> Iterator[int]:
    """Ray for this command: the caller's if this process already runs one, else the
    cluster at `address`, else a new local instance stopped at the end. Yields the
    cluster's CPU count and whether this command started it."""
    import ray

    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address or "local", include_dashboard=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise click.ClickException(f"cannot start or join Ray at {address or 'local'}: "
                                       f"{e}") from None
        started = True
    try:
        yield int(ray.cluster_resources().get("CPU", 1)), started
    except ray.exceptions.RayError as e:
        if not isinstance(e, ray.exceptions.ActorDiedError) or e.actor_init_failed:
            # An exception (a bad model file) says why: its last line.
            raise click.ClickException(f"the Ray job failed: {_last_line(e)}") from None
        from reranker.ray import REPLICA_RESTARTS

        raise click.ClickException(
            f"a replica's process died (while loading the model, or {REPLICA_RESTARTS + 1} "
            "times while answering), so the job stopped (an --output file is not written). "
            "Killed by the kernel for memory (see `dmesg`)? "
            "Each replica holds the KV cache of the longest request it meets: use fewer "
            "--replicas or a smaller --block-tokens, or split the largest requests") from None
    finally:
        if started:
            ray.shutdown()


def _last_line(error: BaseException) -> str:
    """A Ray error's message is a remote traceback; its last line names the cause."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def _read_parquet(name: str):
    """The Parquet input, read by the driver rather than by ray.data.read_parquet: the
    read's tasks need a CPU each, and when the replicas reserve every CPU (the default)
    they wait for ever."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(name)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise click.ClickException(f"cannot read {name} as Parquet: {e}") from None
    _check_columns(table.column_names, name)
    return table


def _parquet_dataset(table):
    """`table` as a dataset of up to 200 blocks (a block is what one replica takes at a
    time), or None if it has no rows."""
    import ray.data

    if not table.num_rows:
        return None
    size = -(-table.num_rows // 200)
    return ray.data.from_arrow([table.slice(start, size)
                                for start in range(0, table.num_rows, size)])


def _check_columns(columns: list[str], name: str) -> None:
    missing = [c for c in ("query", "documents") if c not in columns]
    if missing:
        raise click.ClickException(f"{name} has no column {', '.join(missing)} (it has "
                                   f"{', '.join(columns) or 'none'}); a request row needs "
                                   "query and documents, optionally top_n and instruction")


def _answer(dataset, job: RayJob, model_path: Path, settings: dict, cpus: int, local: bool,
            parquet: bool):
    from reranker.ray import _rerank

    replicas = job.replicas or max(1, cpus // job.threads_per_replica)
    if local and replicas * job.threads_per_replica > cpus:
        # Ray would wait for ever for CPUs a local instance will never get (a cluster's
        # autoscaler may add them, so a joined cluster is trusted).
        raise click.UsageError(f"{replicas} replicas x {job.threads_per_replica} threads need "
                               f"{replicas * job.threads_per_replica} CPUs; this machine's "
                               f"Ray has {cpus}")
    return _rerank(dataset, model_path, replicas=replicas,
                   threads_per_replica=job.threads_per_replica, batch_size=1,
                   settings={**settings, "as_json": not parquet, "stats": True})


def _count(summary, batch, tokens: list[int | None], errors: list[bool]) -> None:
    from reranker.ray.columns import DOCUMENTS, REPLICA, SECONDS

    for replica, seconds, documents, token, error in zip(
            batch.column(REPLICA).to_pylist(), batch.column(SECONDS).to_pylist(),
            batch.column(DOCUMENTS).to_pylist(), tokens, errors):
        summary.add(replica, seconds, documents, token, not error)


def _write_jsonl(answered, output: Path | None, summary) -> list[int]:
    """The answers in input order, as the one-process --batch writes them; returns the
    line numbers of the failed requests."""
    from reranker.ray.columns import ANSWER, LINE

    failed = []
    with _output_text(output) as out:
        for batch in ([] if answered is None else
                      answered.iter_batches(batch_format="pyarrow", batch_size=None)):
            errors, tokens = [], []
            for number, text in zip(batch.column(LINE).to_pylist(),
                                    batch.column(ANSWER).to_pylist()):
                answer = json.loads(text)
                errors.append("error" in answer)
                tokens.append(answer.get("usage", {}).get("total_tokens"))
                if errors[-1]:  # as the one-process --batch: the error body and its line
                    failed.append(number)
                    answer["line"] = number
                out.write(json.dumps(answer, ensure_ascii=False) + "\n")
            _count(summary, batch, tokens, errors)
    return failed


def _write_parquet(answered, schema, output: Path, summary) -> list[int]:
    """The input rows with their answers, in input order; returns the 1-based numbers of
    the rows that failed."""
    import pyarrow.parquet as pq

    from reranker.ray.columns import (DOCUMENTS, ERROR, REPLICA, SECONDS, TOTAL_TOKENS,
                                      answer_columns)

    failed, writer, row = [], None, 0
    with _temporary(output) as tmp:
        try:
            for batch in ([] if answered is None else
                          answered.iter_batches(batch_format="pyarrow", batch_size=None)):
                errors = [e is not None for e in batch.column(ERROR).to_pylist()]
                failed += [row + i + 1 for i, e in enumerate(errors) if e]
                row += batch.num_rows
                _count(summary, batch, batch.column(TOTAL_TOKENS).to_pylist(), errors)
                table = batch.drop_columns([REPLICA, SECONDS, DOCUMENTS])
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            if writer is None:  # no rows: the input's columns and the answers', empty
                pq.write_table(answer_columns(schema.empty_table(), []), tmp)
        finally:
            if writer is not None:
                writer.close()
    return failed


@contextmanager
def _output_text(output: Path | None) -> Iterator[IO[str]]:
    if output is None:
        yield sys.stdout
        return
    with _temporary(output) as tmp, open(tmp, "w", encoding="utf-8") as out:
        yield out


@contextmanager
def _temporary(output: Path) -> Iterator[str]:
    """A temporary path beside `output`, renamed onto it when the block succeeds and
    removed when it fails: a failed or interrupted job leaves no half-written file."""
    output = output.expanduser()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp",
                                   dir=output.parent.resolve())
    except OSError as e:
        raise click.ClickException(f"cannot write {output}: {e.strerror}") from None
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
