"""nDCG@k, MRR@k and Recall@k, following trec_eval's definitions.

- nDCG@k is trec_eval's ndcg_cut: gain = graded relevance, discount log2(rank + 1),
  normalized by the ideal ordering of every judged document; negative judgments
  count as 0.
- MRR@k is the reciprocal rank of the first document with relevance > 0 within the
  first k (trec_eval's recip_rank on a run cut at k), 0 if there is none.
- Recall@k is relevant documents in the first k over all relevant documents.

A ranking is a list of document ids, best first; unjudged documents count as
not relevant. Per query these equal pytrec_eval's values (tests check it).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

# query id -> {document id -> graded relevance}
Qrels = dict[str, dict[str, int]]


def check_cutoff(k: int, name: str = "k") -> None:
    """Refuse a cutoff below 1: ranking[:k] with k <= 0 is empty or, negative, cuts from
    the end, so the metric would be a number that means nothing."""
    if k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")


def ndcg_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    check_cutoff(k)
    gains = [max(judgments.get(doc_id, 0), 0) for doc_id in ranking[:k]]
    ideal = sorted((rel for rel in judgments.values() if rel > 0), reverse=True)[:k]
    ideal_dcg = _dcg(ideal)
    return _dcg(gains) / ideal_dcg if ideal_dcg > 0 else 0.0


def _dcg(gains: Iterable[int]) -> float:
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def reciprocal_rank_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    check_cutoff(k)
    for rank, doc_id in enumerate(ranking[:k], start=1):
        if judgments.get(doc_id, 0) > 0:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    check_cutoff(k)
    relevant = {doc_id for doc_id, rel in judgments.items() if rel > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def metric_names(ndcg_k: int = 10, mrr_k: int = 10, recall_k: int = 100) -> list[str]:
    return [f"ndcg@{ndcg_k}", f"mrr@{mrr_k}", f"recall@{recall_k}"]


def query_metrics(ranking: Sequence[str], judgments: Mapping[str, int], *, ndcg_k: int = 10,
                  mrr_k: int = 10, recall_k: int = 100) -> dict[str, float]:
    """The three metrics of one query, keyed as `metric_names` names them."""
    values = (ndcg_at_k(ranking, judgments, ndcg_k),
              reciprocal_rank_at_k(ranking, judgments, mrr_k),
              recall_at_k(ranking, judgments, recall_k))
    return dict(zip(metric_names(ndcg_k, mrr_k, recall_k), values, strict=True))


def mean_metrics(per_query: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average of per-query metrics (empty when there are no queries)."""
    if not per_query:
        return {}
    return {name: sum(q[name] for q in per_query) / len(per_query) for name in per_query[0]}


def evaluate_rankings(rankings: Mapping[str, Sequence[str]], qrels: Qrels, *, ndcg_k: int = 10,
                      mrr_k: int = 10, recall_k: int = 100) -> dict[str, float]:
    """Mean metrics over the judged queries that have a relevant document.

    A judged query missing from `rankings` counts as an empty ranking (0 on every
    metric, like trec_eval -c), so a first stage cannot look better by dropping queries.
    """
    per_query = [query_metrics(rankings.get(query_id, []), qrels[query_id], ndcg_k=ndcg_k,
                               mrr_k=mrr_k, recall_k=recall_k)
                 for query_id in queries_with_relevant_documents(qrels)]
    return mean_metrics(per_query)


def queries_with_relevant_documents(qrels: Qrels) -> list[str]:
    """Query ids in qrels order, less those without a relevant document: such a query
    scores 0 whatever the ranking, so it only dilutes an average (pytrec_eval still
    reports it, as 0)."""
    return [query_id for query_id, judgments in qrels.items()
            if any(rel > 0 for rel in judgments.values())]
