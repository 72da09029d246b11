"""Rerank the first stage's top k of each judged query and measure before and after."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from reranker.evaluation.beir import BeirDataset, load_dataset
from reranker.evaluation.errors import DatasetError
from reranker.evaluation.first_stage import Candidates, bm25_candidates
from reranker.evaluation.metrics import check_cutoff, mean_metrics, query_metrics
from reranker.evaluation.trec_run import read_run, run_rankings
from reranker.reranker import Reranker, rank_scores

# progress(queries done, queries in all)
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class EvaluationInput:
    """A dataset, its first-stage candidates and the queries to evaluate."""
    dataset: BeirDataset
    candidates: Candidates
    query_ids: list[str]  # judged queries with a relevant document, in qrels order
    first_stage: str  # where the candidates came from, for reports
    top_k: int  # candidates per query prepared: the corpus kept or BM25's depth

    def reranking_depth(self, top_k: int | None) -> int:
        """`top_k`, or the prepared depth when None; deeper than prepared is refused:
        past it a run's documents were not loaded and BM25 retrieved nothing."""
        if top_k is None:
            return self.top_k
        check_cutoff(top_k, "top_k")
        if top_k > self.top_k:
            raise ValueError(f"top_k={top_k} is deeper than the {self.top_k} candidates per "
                             f"query prepare_evaluation kept; prepare with top_k={top_k} "
                             "(or more) to rerank that many")
        return top_k


def prepare_evaluation(dataset_dir: str | Path, *, split: str = "test",
                       run_file: str | Path | None = None, bm25: bool = False, top_k: int = 100,
                       max_queries: int | None = None) -> EvaluationInput:
    """Load a BEIR dataset with candidates from a TREC run file or from BM25 (one of them).

    With a run file only the corpus entries among its top k are kept in memory; BM25
    indexes the whole corpus and retrieves `top_k` for each evaluated query.
    """
    if (run_file is None) == (not bm25):
        raise ValueError("candidates come from a run file or from BM25: give exactly one")
    check_cutoff(top_k, "top_k")
    if max_queries is not None and max_queries < 1:
        raise ValueError(f"max_queries must be a positive integer, got {max_queries!r}")
    if run_file is not None:
        candidates = run_rankings(read_run(run_file))
        wanted = {doc_id for ranking in candidates.values() for doc_id in ranking[:top_k]}
        dataset = load_dataset(dataset_dir, split, only_documents=wanted)
    else:
        dataset = load_dataset(dataset_dir, split)
    query_ids = dataset.judged_query_ids()[:max_queries]
    if not query_ids:
        raise DatasetError(f"{Path(dataset_dir) / 'qrels' / f'{split}.tsv'}: no query has a "
                           "relevant document (relevance > 0), so there is nothing to measure")
    if bm25:
        candidates = bm25_candidates(dataset.corpus, {q: dataset.queries[q] for q in query_ids},
                                     depth=top_k)
    elif not any(candidates.get(q) for q in query_ids):  # every metric would be 0
        named = ", ".join(sorted(candidates)[:3]) + (", ..." if len(candidates) > 3 else "")
        raise DatasetError(f"run file {run_file} ranks none of the {len(query_ids)} judged "
                           f"queries of split {split!r} (it ranks {named}); is it a run for "
                           "another dataset or split?")
    else:
        # Here rather than halfway through the scoring, after the model has loaded.
        for query_id in query_ids:
            dataset.check_candidates(query_id, candidates.get(query_id, [])[:top_k])
    first_stage = "bm25" if bm25 else f"run {Path(run_file).name}"
    return EvaluationInput(dataset, candidates, query_ids, first_stage, top_k)


@dataclass(frozen=True)
class QueryOutcome:
    query_id: str
    reranked: int  # documents the reranker scored for this query
    before: dict[str, float]
    after: dict[str, float]


@dataclass(frozen=True)
class EvaluationReport:
    dataset: str
    split: str
    model: str
    first_stage: str
    top_k: int
    queries: int  # evaluated: judged queries with at least one relevant document
    queries_without_relevant_documents: int  # in the qrels but left out of the averages
    queries_without_candidates: int  # evaluated, counted as 0 before and after
    documents_reranked: int
    seconds: float  # time spent in the reranker
    before: dict[str, float]
    after: dict[str, float]
    per_query: list[QueryOutcome]

    @property
    def seconds_per_query(self) -> float:
        return self.seconds / self.queries if self.queries else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["seconds_per_query"] = self.seconds_per_query
        return out


def evaluate_reranking(ranker: Reranker, prepared: EvaluationInput, *,
                       top_k: int | None = None, ndcg_k: int = 10, mrr_k: int = 10,
                       progress: ProgressCallback | None = None) -> EvaluationReport:
    """Rerank each query's top `top_k` candidates (default: as many as `prepared` kept;
    more is refused) and compare nDCG@ndcg_k, MRR@mrr_k and Recall@top_k before and after.

    Candidates past the top k keep their first-stage order after the reranked ones,
    so Recall@top_k is the same before and after: it is the first stage's ceiling.
    """
    top_k = prepared.reranking_depth(top_k)
    dataset = prepared.dataset
    cutoffs = {"ndcg_k": ndcg_k, "mrr_k": mrr_k, "recall_k": top_k}
    for name, cutoff in cutoffs.items():
        check_cutoff(cutoff, name)  # before the first query is scored, not after it
    outcomes: list[QueryOutcome] = []
    seconds = 0.0
    total = len(prepared.query_ids)
    for done, query_id in enumerate(prepared.query_ids, start=1):
        ranking = prepared.candidates.get(query_id, [])
        head = ranking[:top_k]
        reranked = ranking
        if head:
            texts = dataset.passages(query_id, head)
            started = time.perf_counter()
            scored = ranker.score(dataset.queries[query_id], texts)
            seconds += time.perf_counter() - started
            reordered = [head[result.index] for result in rank_scores(scored, texts)]
            reranked = reordered + ranking[top_k:]
        judgments = dataset.qrels[query_id]
        outcomes.append(QueryOutcome(query_id, len(head),
                                     query_metrics(ranking, judgments, **cutoffs),
                                     query_metrics(reranked, judgments, **cutoffs)))
        if progress is not None:
            progress(done, total)
    return EvaluationReport(
        dataset=dataset.name, split=dataset.split, model=Path(ranker.model_path).name,
        first_stage=prepared.first_stage, top_k=top_k, queries=total,
        queries_without_relevant_documents=len(dataset.qrels) - len(dataset.judged_query_ids()),
        queries_without_candidates=sum(1 for o in outcomes if o.reranked == 0),
        documents_reranked=sum(o.reranked for o in outcomes), seconds=seconds,
        before=mean_metrics([o.before for o in outcomes]),
        after=mean_metrics([o.after for o in outcomes]), per_query=outcomes)
