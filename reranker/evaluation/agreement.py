"""How closely two models' scores agree on the same documents: rank correlation,
top-k overlap and score differences."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

TOP_K = (1, 5, 10)


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists over the same items (ties handled as tau-b
    does, equal to scipy.stats.kendalltau); NaN when either list is constant or has
    fewer than two items, where a rank correlation means nothing.

    O(n^2) in memory and time, which is nothing for a reranker's <= a few hundred documents.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"score lists must have the same length, got {x.shape} and {y.shape}")
    upper = np.triu_indices(len(x), k=1)  # every pair once
    sign_x = np.sign(x[:, None] - x[None, :])[upper]
    sign_y = np.sign(y[:, None] - y[None, :])[upper]
    # Concordant minus discordant pairs, over the pairs untied in x times those untied in y.
    denominator = math.sqrt(float(np.count_nonzero(sign_x)) * float(np.count_nonzero(sign_y)))
    if denominator == 0:
        return math.nan
    return float(np.sum(sign_x * sign_y)) / denominator


def ranking(scores: Sequence[float]) -> np.ndarray:
    """Indices best first; ties keep input order (as `Reranker.rerank` sorts)."""
    return np.argsort(-np.asarray(scores), kind="stable")


def top_k_overlap(a: Sequence[float], b: Sequence[float], k: int) -> float:
    """Share of the top k documents by `a` that are also in the top k by `b`
    (1.0 for the same set; k is capped at the number of documents)."""
    k = min(k, len(a))
    if k == 0:
        return 1.0
    return len(set(ranking(a)[:k].tolist()) & set(ranking(b)[:k].tolist())) / k


@dataclass(frozen=True)
class Agreement:
    queries: int
    kendall_tau: float | None  # mean per-query tau-b; None if no query had two distinct scores
    top_1: float  # share of queries with the same best document
    top_5: float  # mean share of the top 5 in common
    top_10: float
    max_abs_diff: float  # over every document of every query
    mean_abs_diff: float

    def to_dict(self) -> dict:
        return asdict(self)


def measure_agreement(scores_a: Sequence[Sequence[float]],
                      scores_b: Sequence[Sequence[float]]) -> Agreement:
    """Agreement of two models' scores, query by query (scores in the same document order)."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"{len(scores_a)} queries against {len(scores_b)}")
    if not scores_a:
        raise ValueError("no queries to compare")
    taus, overlaps, differences = [], {k: [] for k in TOP_K}, []
    for a, b in zip(scores_a, scores_b, strict=True):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        tau = kendall_tau_b(a, b)
        if not math.isnan(tau):
            taus.append(tau)
        for k in TOP_K:
            overlaps[k].append(top_k_overlap(a, b, k))
        differences.append(np.abs(a - b))
    every_difference = np.concatenate(differences)
    return Agreement(
        queries=len(scores_a),
        kendall_tau=float(np.mean(taus)) if taus else None,
        top_1=float(np.mean(overlaps[1])), top_5=float(np.mean(overlaps[5])),
        top_10=float(np.mean(overlaps[10])),
        max_abs_diff=float(every_difference.max()) if every_difference.size else 0.0,
        mean_abs_diff=float(every_difference.mean()) if every_difference.size else 0.0)
