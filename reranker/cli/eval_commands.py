"""`eval` and `compare`: thin layers over `reranker.evaluation`."""
from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from convert.errors import ConversionError
from convert.output import atomic_output, check_not_an_input, check_output_path
from reranker import Reranker
from reranker.evaluation.compare import (RerankRequest, check_model_files, compare_models,
                                         ladder_files, quantization_ladder,
                                         requests_from_evaluation)
from reranker.evaluation.beir import dataset_files
from reranker.evaluation.rerank_eval import (EvaluationReport, evaluate_reranking,
                                             prepare_evaluation)
from reranker.extras import install_hint
from reranker.projector import sidecar_candidates
from reranker.cli.documents_input import input_name, read_batch
from reranker.cli.errors import friendly_errors
from reranker.cli.models_dir import MODEL_HELP, resolve_model
from reranker.cli.progress import ProgressBars
from reranker.cli.runtime_options import block_tokens_option, cpu_path_option, engine_option


def candidate_options(command):
    """Options shared by `eval` and `compare --dataset`: where candidates come from."""
    options = [
        click.option("--run", "run_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="First-stage candidates from a TREC run file (qid Q0 docid rank score "
                          "tag)."),
        click.option("--bm25", is_flag=True,
                     help="First-stage candidates from BM25 over the corpus (needs bm25s: "
                          f"{install_hint('eval')})."),
        click.option("--top-k", type=click.IntRange(min=1), default=100, show_default=True,
                     help="Candidates reranked per query."),
        click.option("--split", default="test", show_default=True,
                     help="Which judgments to use: qrels/SPLIT.tsv."),
        click.option("--max-queries", type=click.IntRange(min=1),
                     help="Only the first N queries (of a dataset: judged ones)."),
        click.option("--threads", type=click.IntRange(min=1),
                     help="CPU threads (default: all available)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _check_one_first_stage(run_file: Path | None, bm25: bool) -> None:
    if (run_file is None) == (not bm25):
        raise click.UsageError("give the first-stage candidates with either --run FILE or --bm25")


def write_json_atomically(path: Path, data: dict) -> None:
    """A reader never sees half a report: write beside it, then rename over it."""
    with atomic_output(path, force=True) as temporary:
        temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                             encoding="utf-8")


def _metric_label(name: str) -> str:
    metric, cutoff = name.split("@")
    return {"ndcg": "nDCG", "mrr": "MRR", "recall": "Recall"}.get(metric, metric) + "@" + cutoff


def _report_text(report: EvaluationReport) -> str:
    lines = [(f"dataset {report.dataset} ({report.split}), first stage {report.first_stage}, "
              f"model {report.model}"),
             f"{report.queries} queries, top {report.top_k} reranked"]
    notes = []
    if report.queries_without_candidates:
        notes.append(f"{report.queries_without_candidates} without candidates count as 0")
    if report.queries_without_relevant_documents:
        notes.append(f"{report.queries_without_relevant_documents} without a relevant document "
                     "left out")
    if notes:
        lines[-1] += f" ({'; '.join(notes)})"
    lines += ["", f"{'metric':12}{'before':>9}{'after':>9}{'change':>9}"]
    for name, before in report.before.items():
        after = report.after[name]
        lines.append(f"{_metric_label(name):12}{before:>9.4f}{after:>9.4f}{after - before:>+9.4f}")
    lines += ["", (f"reranked {report.documents_reranked} documents in {report.seconds:.1f} s "
                   f"({report.seconds_per_query:.3f} s/query)")]
    return "\n".join(lines)


def _check_report_path(json_report: Path | None, inputs: list[Path | None]) -> None:
    if json_report is None:
        return
    try:
        check_output_path(json_report, force=True)
        check_not_an_input(json_report, inputs)
    except ConversionError as e:
        raise click.UsageError(f"--json-report: {e}") from None


@click.command("eval")
@click.argument("dataset_dir", type=click.Path(file_okay=False, path_type=Path))
@candidate_options
@click.option("--model", "-m", help=MODEL_HELP)
@block_tokens_option
@cpu_path_option
@engine_option
@click.option("--json-report", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the whole report, with per-query metrics, as JSON.")
def evaluate(dataset_dir: Path, run_file: Path | None, bm25: bool, top_k: int, split: str,
             max_queries: int | None, threads: int | None, model: str | None,
             block_tokens: int, cpu_path: str | None, engine: str | None,
             json_report: Path | None) -> None:
    """Measure nDCG@10, MRR@10 and Recall@k of a first stage before and after reranking.

    DATASET_DIR is a retrieval dataset in the BEIR layout: corpus.jsonl,
    queries.jsonl and qrels/SPLIT.tsv. The top k candidates of each judged query
    (from a TREC run file, or BM25 over the corpus) are reranked; the rest keep
    their order, so Recall@k is the first stage's and does not change. Queries
    without a relevant document are left out; local files only.

    \b
    Examples:
      reranker-cli eval datasets/scifact --bm25 --top-k 100
      reranker-cli eval datasets/scifact --run bm25.trec -m models/jr3-q4_k_m.gguf \\
          --json-report scifact-q4_k_m.json
    """
    _check_one_first_stage(run_file, bm25)
    # The report's path is checked before the evaluation, not after it.
    _check_report_path(json_report, [run_file, *dataset_files(dataset_dir, split)])
    model_path = resolve_model(model)
    _check_report_path(json_report, [model_path, *sidecar_candidates(model_path)])
    bars = ProgressBars()
    with friendly_errors():
        click.echo(f"loading {dataset_dir}...", err=True)
        prepared = prepare_evaluation(dataset_dir, split=split, run_file=run_file, bm25=bm25,
                                      top_k=top_k, max_queries=max_queries)
        try:
            with Reranker(model_path, n_threads=threads, block_tokens=block_tokens,
                          cpu_path=cpu_path, engine=engine) as ranker:
                report = evaluate_reranking(
                    ranker, prepared, top_k=top_k,
                    progress=lambda done, total: bars.update("queries", total))
        finally:
            bars.close()
        if json_report is not None:
            write_json_atomically(json_report, report.to_dict())
    click.echo(_report_text(report))


# Options that only shape a dataset's queries and candidates; --requests refuses them rather
# than dropping them. --top-k is not applied to a requests file: its documents come in no
# ranked order, so a "top k" would be each line's first k, an arbitrary cut that the agreement
# would then be reported over; a user who wants fewer documents writes fewer.
DATASET_ONLY_OPTIONS = {"run_file": "--run", "bm25": "--bm25", "top_k": "--top-k",
                        "split": "--split"}


def _check_query_source(requests_file, dataset_dir: Path | None, run_file: Path | None,
                        bm25: bool) -> None:
    """Usage errors first, before any model file is read or dataset loaded."""
    if (requests_file is None) == (dataset_dir is None):
        raise click.UsageError("give the queries with either --requests FILE or --dataset DIR")
    if requests_file is not None:
        context = click.get_current_context()
        given = [option for name, option in DATASET_ONLY_OPTIONS.items()
                 if context.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
        if given:
            raise click.UsageError(f"{', '.join(given)}: for --dataset only; --requests FILE "
                                   "compares every document its lines list")
    else:
        _check_one_first_stage(run_file, bm25)


def _requests(requests_file, dataset_dir: Path | None, run_file: Path | None, bm25: bool,
              top_k: int, split: str, max_queries: int | None) -> list[RerankRequest]:
    if requests_file is not None:
        records = read_batch(requests_file, input_name(requests_file))[:max_queries]
        requests = [RerankRequest(r.query, r.document_texts(), r.instruction) for r in records]
    else:
        with friendly_errors():
            click.echo(f"loading {dataset_dir}...", err=True)
            prepared = prepare_evaluation(dataset_dir, split=split, run_file=run_file, bm25=bm25,
                                          top_k=top_k, max_queries=max_queries)
            requests = requests_from_evaluation(prepared, top_k)
    if not requests:
        raise click.ClickException("no queries with documents to compare")
    return requests


def _agreement_rows(agreement) -> list[tuple[str, str]]:
    tau = "n/a" if agreement.kendall_tau is None else f"{agreement.kendall_tau:.4f}"
    return [("Kendall tau (mean)", tau), ("top-1 agreement", f"{agreement.top_1:.3f}"),
            ("top-5 agreement", f"{agreement.top_5:.3f}"),
            ("top-10 agreement", f"{agreement.top_10:.3f}"),
            ("max |score diff|", f"{agreement.max_abs_diff:.2e}"),
            ("mean |score diff|", f"{agreement.mean_abs_diff:.2e}")]


def _comparison_text(comparison) -> str:
    a, b = comparison.a, comparison.b
    rows = [("", "A", "B"), ("file", Path(a.model).name, Path(b.model).name),
            ("type", a.file_type, b.file_type),
            ("size MB", f"{a.size_bytes / 1e6:.1f}", f"{b.size_bytes / 1e6:.1f}"),
            ("seconds/query", f"{a.seconds_per_query:.3f}", f"{b.seconds_per_query:.3f}")]
    width = max(len(row[1]) for row in rows) + 2
    lines = [f"{label:20}{first:{width}}{second}" for label, first, second in rows]
    lines += ["", f"agreement over {comparison.agreement.queries} queries"]
    lines += [f"{label:20}{value}" for label, value in _agreement_rows(comparison.agreement)]
    return "\n".join(lines)


def _ladder_text(rows) -> str:
    header = (f"{'type':10}{'size MB':>9}{'s/query':>9}{'tau':>8}{'top-1':>7}{'top-5':>7}"
              f"{'top-10':>8}{'max|diff|':>11}")
    lines = [header]
    for row in rows:
        run, agreement = row.run, row.agreement
        line = f"{run.file_type:10}{run.size_bytes / 1e6:>9.1f}{run.seconds_per_query:>9.3f}"
        if agreement is None:
            line += "  reference"
        else:
            tau = "n/a" if agreement.kendall_tau is None else f"{agreement.kendall_tau:.3f}"
            line += (f"{tau:>8}{agreement.top_1:>7.2f}{agreement.top_5:>7.2f}"
                     f"{agreement.top_10:>8.2f}{agreement.max_abs_diff:>11.1e}")
        lines.append(line)
    return "\n".join(lines)


@click.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--requests", "requests_file", type=click.File("rb"),
              metavar="FILE",
              help='Queries as JSON Lines of {"query", "documents"} (the rerank --batch format).')
@click.option("--dataset", "dataset_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Queries from a BEIR dataset directory, candidates from --run or --bm25.")
@candidate_options
@click.option("--ladder", is_flag=True,
              help="Compare every model (GGUF files or directories of them) with --reference.")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="Reference for --ladder (default: the largest file, the most precise type).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def compare(models: tuple[str, ...], requests_file, dataset_dir: Path | None,
            run_file: Path | None, bm25: bool, top_k: int, split: str, max_queries: int | None,
            threads: int | None, ladder: bool, reference: Path | None, as_json: bool) -> None:
    """Compare two model files (say f16 and q4_k_m) on the same queries.

    Reports Kendall tau, top-1/top-5/top-10 agreement, max and mean absolute
    score difference, and each model's seconds per query and size. With
    --ladder, MODELS are GGUF files or directories of them (one model's
    quantizations), each compared with --reference: the table for choosing a
    type. Models are loaded one at a time; local files only.

    \b
    Examples:
      reranker-cli compare models/jr3-f16.gguf models/jr3-q4_k_m.gguf --requests requests.jsonl
      reranker-cli compare A.gguf B.gguf --dataset datasets/scifact --bm25 --max-queries 50
      reranker-cli compare --ladder models/jr3/ --reference models/jr3/jr3-f16.gguf \\
          --requests requests.jsonl
    """
    if reference is not None and not ladder:
        raise click.UsageError("--reference goes with --ladder")
    if not ladder and len(models) != 2:
        raise click.UsageError(f"compare takes two models (got {len(models)}), or --ladder")
    _check_query_source(requests_file, dataset_dir, run_file, bm25)
    with friendly_errors():
        if ladder:
            files = ladder_files([Path(m) for m in models])
            reference = reference or files[0]
            # quantization_ladder checks them too; here, before a dataset is loaded (BM25
            # indexes the whole corpus), a file that is not a reranker stops at once.
            check_model_files([reference, *files])
        else:
            files = check_model_files([resolve_model(m) for m in models])
    requests = _requests(requests_file, dataset_dir, run_file, bm25, top_k, split, max_queries)
    bars = ProgressBars()

    def progress(path: Path, done: int, total: int) -> None:
        bars.update(str(path), total)  # by path: two files of one name are two bars

    with friendly_errors():
        try:
            if ladder:
                rows = quantization_ladder(reference, files, requests, n_threads=threads,
                                           progress=progress)
            else:
                comparison = compare_models(files[0], files[1], requests, n_threads=threads,
                                            progress=progress)
        finally:
            bars.close()
    if ladder:
        click.echo(json.dumps({"rows": [row.to_dict() for row in rows]}, indent=2) if as_json
                   else _ladder_text(rows))
    else:
        click.echo(json.dumps(comparison.to_dict(), indent=2) if as_json
                   else _comparison_text(comparison))
