"""Run models on the same queries and measure how far each strays from a reference,
and how fast and large each is: the numbers for choosing a quantization."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reranker.errors import ModelFileError
from reranker.evaluation.agreement import Agreement, measure_agreement
from reranker.evaluation.rerank_eval import EvaluationInput
from reranker.model_check import open_reranker_file
from reranker.model_info import describe_model
from reranker.reranker import Reranker, checkpoint_folder_error, resolve_model_file

# progress(model file, queries done, queries in all)
ModelProgress = Callable[[Path, int, int], None]


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: list[str]
    instruction: str | None = None


def requests_from_evaluation(prepared: EvaluationInput,
                             top_k: int | None = None) -> list[RerankRequest]:
    """Each evaluated query with the texts of its top k candidates (default: as many as
    `prepared` kept; more is refused); queries without any candidate are left out:
    there is nothing to compare."""
    top_k = prepared.reranking_depth(top_k)
    requests = []
    for query_id in prepared.query_ids:
        head = prepared.candidates.get(query_id, [])[:top_k]
        if head:
            requests.append(RerankRequest(prepared.dataset.queries[query_id],
                                          prepared.dataset.passages(query_id, head)))
    return requests


@dataclass(frozen=True)
class ModelRun:
    model: str
    file_type: str
    size_bytes: int
    queries: int
    seconds: float  # scoring time over every query, after an untimed warm-up request
    scores: list[np.ndarray] = field(repr=False)  # per query, in document order

    @property
    def seconds_per_query(self) -> float:
        return self.seconds / self.queries

    def to_dict(self) -> dict:
        return {"model": self.model, "file_type": self.file_type, "size_bytes": self.size_bytes,
                "queries": self.queries, "seconds": self.seconds,
                "seconds_per_query": self.seconds_per_query}


def file_type(path: str | Path) -> str:
    """The weight type as users name it (q4_k_m, f16...; f32 rather than all_f32)."""
    return describe_model(path)["file_type"].removeprefix("all_")


def check_model_files(models: Sequence[str | Path]) -> list[Path]:
    """Each model's GGUF, opened as the runtime opens it (metadata and projector, not the
    weights): a bad file later in the list must stop a comparison before the models
    ahead of it have scored every request."""
    paths = [resolve_model_file(model) for model in models]
    for path in paths:
        open_reranker_file(path)
    return paths


def run_model(model: str | Path, requests: Sequence[RerankRequest], *,
              n_threads: int | None = None, progress: ModelProgress | None = None) -> ModelRun:
    """Score every request with one model (loaded once, freed afterwards)."""
    if not requests:
        raise ValueError("no queries to run")
    path = resolve_model_file(model)
    all_scores, seconds = [], 0.0
    with Reranker(path, n_threads=n_threads) as ranker:
        # A fresh context allocates its buffers and grows with the longest prompt so far:
        # one untimed pass over the longest request keeps both out of the timing.
        longest = max(requests, key=lambda r: len(r.query) + sum(len(d) for d in r.documents))
        ranker.score(longest.query, longest.documents, instruction=longest.instruction)
        for done, request in enumerate(requests, start=1):
            started = time.perf_counter()
            scored = ranker.score(request.query, request.documents,
                                  instruction=request.instruction)
            seconds += time.perf_counter() - started
            all_scores.append(scored.scores)
            if progress is not None:
                progress(path, done, len(requests))
    return ModelRun(str(path), file_type(path), path.stat().st_size, len(requests), seconds,
                    all_scores)


@dataclass(frozen=True)
class Comparison:
    a: ModelRun
    b: ModelRun
    agreement: Agreement

    def to_dict(self) -> dict:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "agreement": self.agreement.to_dict()}


def compare_models(model_a: str | Path, model_b: str | Path, requests: Sequence[RerankRequest], *,
                   n_threads: int | None = None,
                   progress: ModelProgress | None = None) -> Comparison:
    """Both models on the same requests, one after the other (never both in memory)."""
    path_a, path_b = check_model_files([model_a, model_b])
    run_a = run_model(path_a, requests, n_threads=n_threads, progress=progress)
    run_b = run_model(path_b, requests, n_threads=n_threads, progress=progress)
    return Comparison(run_a, run_b, measure_agreement(run_a.scores, run_b.scores))


@dataclass(frozen=True)
class LadderRow:
    run: ModelRun
    agreement: Agreement | None  # against the reference; None for the reference itself

    def to_dict(self) -> dict:
        return {**self.run.to_dict(), "reference": self.agreement is None,
                "agreement": self.agreement.to_dict() if self.agreement else None}


def ladder_files(paths: Sequence[str | Path]) -> list[Path]:
    """GGUF files named directly or found in the given directories, largest (most
    precise) first, each file once."""
    found: dict[Path, Path] = {}
    for given in paths:
        given = Path(given).expanduser()
        if given.is_dir():
            files = sorted(given.glob("*.gguf"))
            if not files:
                raise checkpoint_folder_error(given) or ModelFileError(
                    f"{given} holds no .gguf files")
        elif given.is_file():
            files = [given]
        else:
            raise ModelFileError(f"model file {given} does not exist")
        for path in files:
            found.setdefault(path.resolve(), path)
    return sorted(found.values(), key=lambda p: (-p.stat().st_size, p.name))


def quantization_ladder(reference: str | Path, models: Sequence[str | Path],
                        requests: Sequence[RerankRequest], *, n_threads: int | None = None,
                        progress: ModelProgress | None = None) -> list[LadderRow]:
    """The reference first, then each other model with its agreement with the reference."""
    reference_path, *paths = check_model_files([reference, *models])
    reference_run = run_model(reference_path, requests, n_threads=n_threads, progress=progress)
    rows = [LadderRow(reference_run, None)]
    for path in paths:
        if path.resolve() == reference_path.resolve():
            continue
        run = run_model(path, requests, n_threads=n_threads, progress=progress)
        rows.append(LadderRow(run, measure_agreement(reference_run.scores, run.scores)))
    return rows
