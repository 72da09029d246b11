"""`rerank`: score documents against a query and print a table or rerank-API JSON."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from reranker import Reranker
from reranker.api_contract import (TOP_N_MINIMUM, RequestError, RerankRequest,
                                   RerankResultItem, answer_request, model_id, parse_request)
from reranker.errors import RerankerError
from reranker.cli.documents_input import (InputError, batch_requests, check_text, input_name,
                                          read_documents)
from reranker.cli.errors import friendly_errors
from reranker.cli.models_dir import MODEL_HELP, resolve_model
from reranker.cli.progress import ProgressBars
from reranker.cli.ray_batch import ray_job, with_ray_options
from reranker.cli.runtime_options import block_tokens_option, cpu_path_option, engine_option


def _table(results: list[RerankResultItem]) -> str:
    width = max(40, shutil.get_terminal_size((100, 20)).columns - 24)
    lines = [f"{'rank':>4}  {'index':>5}  {'score':>8}  document"]
    for rank, r in enumerate(results, start=1):
        text = " ".join(r.document.text.split()) if r.document is not None else ""
        if len(text) > width:
            text = text[:width - 1] + "…"
        lines.append(f"{rank:>4}  {r.index:>5}  {r.relevance_score:>8.4f}  {text}")
    return "\n".join(lines)


@click.command()
@click.option("--query", "-q", help="The query (required unless --batch is used).")
@click.option("--document", "-d", "documents", multiple=True,
              help="A document; repeat for each one.")
@click.option("--documents-file", "-f", type=click.File("rb"),
              help="Documents, one per line or JSON Lines with a \"text\" field; - for stdin.")
@click.option("--batch", "batch_file", type=click.File("rb"),
              help="JSON Lines of rerank requests ({\"query\", \"documents\", \"top_n\"?, "
                   "\"instruction\"?, \"return_documents\"?, \"max_tokens_per_doc\"?}); "
                   "writes one JSON response per line.")
@click.option("--model", "-m", help=MODEL_HELP)
@click.option("--projector", type=click.Path(dir_okay=False, path_type=Path),
              help="projector.safetensors for a backbone GGUF without one.")
@click.option("--top-n", "-n", type=click.IntRange(min=TOP_N_MINIMUM),
              help="Only the best N results.")
@click.option("--instruction", "-i", help="Extra ranking instruction placed in the prompt.")
@click.option("--max-tokens-per-doc", type=click.IntRange(min=1),
              help="Cut each document at this many tokens (the model's own limit, 2048, "
                   "always applies).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all available).")
@block_tokens_option
@cpu_path_option
@engine_option
@click.option("--json", "as_json", is_flag=True, help="Print the Jina/Cohere rerank response JSON.")
@click.option("--no-documents", is_flag=True, help="Leave document texts out of JSON output.")
@with_ray_options
def rerank(query, documents, documents_file, batch_file, model, projector, top_n, instruction,
           max_tokens_per_doc, threads, block_tokens, cpu_path, engine, as_json, no_documents,
           use_ray, ray_address, replicas, threads_per_replica, output) -> None:
    """Rank documents by relevance to a query, best first.

    Documents come from --document options, --documents-file, or standard input
    when neither is given. Blank lines in document files are skipped.

    \b
    Examples:
      reranker-cli rerank -q "capital of France" -d "Paris is..." -d "Berlin is..."
      reranker-cli rerank -q "capital of France" -f docs.txt --top-n 3 --json
      cat docs.jsonl | reranker-cli rerank -q "capital of France" -m models/jr3-q4_k_m.gguf
      reranker-cli rerank --batch requests.jsonl > responses.jsonl
      reranker-cli rerank --batch requests.parquet --ray -o answers.parquet
    """
    job = ray_job(batch_file, use_ray, ray_address, replicas, threads_per_replica, output,
                  threads)
    if batch_file is not None:
        if (query or documents or documents_file or top_n is not None
                or instruction is not None or max_tokens_per_doc is not None):
            raise click.UsageError("--batch takes each request's query, documents, top_n, "
                                   "instruction and max_tokens_per_doc from its file; drop "
                                   "--query, --document, --documents-file, --top-n, "
                                   "--instruction and --max-tokens-per-doc")
        if job is not None:
            from reranker.cli.ray_batch import run_ray_batch

            run_ray_batch(batch_file, job, resolve_model(model), dict(
                projector=projector, block_tokens=block_tokens, cpu_path=cpu_path,
                engine=engine, include_documents=not no_documents))
            return
        lines = list(batch_requests(batch_file))
    else:
        if query is None:
            raise click.UsageError("--query is required (or use --batch)")
        if not query:
            raise click.UsageError("--query is empty; give the text to rank the documents "
                                   "against")
        check_text(query, "--query")
        if instruction is not None:
            check_text(instruction, "--instruction")
        docs = [check_text(d, f"--document {i + 1}") for i, d in enumerate(documents)]
        if documents_file is not None:
            docs += read_documents(documents_file, input_name(documents_file))
        elif not docs:
            stdin = sys.stdin
            if stdin.isatty():
                raise click.UsageError("no documents: pass --document, --documents-file, "
                                       "or pipe them on stdin")
            docs = read_documents(stdin.buffer, "<stdin>")
        if not docs:
            raise click.ClickException("no documents to rank (the input was empty)")
        try:
            request = parse_request({"query": query, "documents": docs, "top_n": top_n,
                                     "instruction": instruction,
                                     "max_tokens_per_doc": max_tokens_per_doc,
                                     "return_documents": not (as_json and no_documents)})
        except RequestError as e:
            raise click.ClickException(e.message) from None

    model_path = resolve_model(model)
    with friendly_errors(), Reranker(model_path, projector, n_threads=threads,
                                     block_tokens=block_tokens, cpu_path=cpu_path,
                                     engine=engine) as ranker:
        if batch_file is None:
            response = answer_request(ranker, request, model_name=model_id(model_path))
            if as_json:
                click.echo(json.dumps(response.to_json(), ensure_ascii=False))
            else:
                click.echo(_table(response.results))
            return
        failed = _run_batch(ranker, lines, model_id(model_path),
                            include_documents=not no_documents)
    if failed:
        raise batch_failed(failed, len(lines), input_name(batch_file))


def batch_failed(failed: list[int], total: int, source: str, unit: str = "line"
                 ) -> click.ClickException:
    """The error a batch run exits with when some of its requests failed."""
    shown = ", ".join(map(str, failed[:10])) + (", ..." if len(failed) > 10 else "")
    return click.ClickException(f"{len(failed)} of {total} requests in {source} failed "
                                f"({unit} {shown}); each has an error object in its place "
                                "in the output")


def _run_batch(ranker: Reranker, lines: list[tuple[int, RerankRequest | InputError]],
               model_name: str, *, include_documents: bool) -> list[int]:
    """Answer each request in order, one line each; return the line numbers that failed.

    A failed line is answered with the server's error body plus its line number, and the
    lines after it go on: one bad line used to stop the run with half the answers written.
    """
    failed = []
    bars = ProgressBars()
    try:
        for number, request in lines:
            answer = answer_batch_request(ranker, request, model_name, include_documents)
            if "error" in answer:
                failed.append(number)
                answer["line"] = number
            click.echo(json.dumps(answer, ensure_ascii=False))
            bars.update("queries", len(lines))
    finally:
        bars.close()
    return failed


def answer_batch_request(ranker: Reranker, request: RerankRequest | InputError,
                         model_name: str, include_documents: bool = True) -> dict:
    """One batch request's answer as JSON: its rerank response, or the server's error body
    when the request was unusable (`request` is then the InputError) or could not be scored.

    The one place a batch request becomes its answer: the one-process `--batch` and the
    Ray replicas (reranker.ray) both call it, so they cannot drift apart.
    """
    if not isinstance(request, InputError):
        if not include_documents:
            request = request.model_copy(update={"return_documents": False})
        try:
            return answer_request(ranker, request, model_name=model_name).to_json()
        except RequestError as e:
            request = InputError.refusing(e)
        except RerankerError as e:  # well-formed but unscorable: the server's 422
            request = InputError(str(e), kind="unprocessable")
    return request.body()
