"""TREC run files: `qid Q0 docid rank score tag` per line, whitespace-separated."""
from __future__ import annotations

import math
from pathlib import Path

from reranker.evaluation.errors import DatasetError
from reranker.evaluation.text_files import numbered_lines

# query id -> {document id -> score}, the shape trec_eval and pytrec_eval read
Run = dict[str, dict[str, float]]


def read_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"run file {path} does not exist")
    run: Run = {}
    for number, line in numbered_lines(path):
        columns = line.split()
        if not columns:
            continue
        if len(columns) != 6:
            raise DatasetError.at(path, number, f"expected 6 columns (qid Q0 docid rank "
                                                f"score tag), got {len(columns)}")
        query_id, _, doc_id, rank, score, _ = columns
        try:
            int(rank)
        except ValueError:
            raise DatasetError.at(path, number, f"rank {rank!r} is not an integer") from None
        try:
            value = float(score)
        except ValueError:
            raise DatasetError.at(path, number, f"score {score!r} is not a number") from None
        if math.isnan(value):  # it would make the order undefined
            raise DatasetError.at(path, number, "score is NaN")
        scores = run.setdefault(query_id, {})
        if doc_id in scores:
            raise DatasetError.at(path, number, f"document {doc_id!r} appears twice "
                                                f"for query {query_id!r}")
        scores[doc_id] = value
    if not run:  # every metric would be 0, with nothing said
        raise DatasetError(f"run file {path} holds no rows (qid Q0 docid rank score tag)")
    return run


def ranked_documents(scores: dict[str, float]) -> list[str]:
    """Best first, ordered as trec_eval orders a run: by score, ties by document id
    descending. The rank column is ignored, as trec_eval ignores it."""
    by_id_descending = sorted(scores, reverse=True)
    return sorted(by_id_descending, key=lambda doc_id: -scores[doc_id])


def run_rankings(run: Run) -> dict[str, list[str]]:
    return {query_id: ranked_documents(scores) for query_id, scores in run.items()}
