"""Splitting long candidate lists into blocks, and merging the blocks' query embeddings.

This follows the published `JinaForRanking.rerank()`: documents are taken in order
into a block until it holds `block_size` documents or its token budget
(`max_length - 2 * query_length`, minus each document's length) falls to
`max_doc_length` or below. Each block yields its own query embedding; the final
query embedding is their mean weighted by each block's best (1 + cosine) / 2.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_blocks(doc_lengths: Sequence[int], query_length: int, *, max_length: int,
                block_size: int, max_doc_length: int) -> list[list[int]]:
    """Document indices of each block, in input order."""
    blocks: list[list[int]] = []
    current: list[int] = []
    capacity = max_length - 2 * query_length
    for index, length in enumerate(doc_lengths):
        current.append(index)
        capacity -= length
        if len(current) >= block_size or capacity <= max_doc_length:
            blocks.append(current)
            current, capacity = [], max_length - 2 * query_length
    if current:
        blocks.append(current)
    return blocks


def cosine(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine of each row of `vectors` with `query` (zero vectors score 0, not NaN)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1) * np.linalg.norm(query)
    dots = vectors @ query
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def merge_query_embeddings(query_embeddings: Sequence[np.ndarray],
                           block_doc_embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """The weighted mean of the blocks' query embeddings, as published."""
    weights = [((1.0 + cosine(docs, query)) / 2.0).max()
               for query, docs in zip(query_embeddings, block_doc_embeddings)]
    return np.average(np.asarray(query_embeddings, dtype=np.float64), axis=0, weights=weights)
