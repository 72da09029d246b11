"""The columns a rerank job adds to each row, with fixed Arrow types.

Types are fixed rather than inferred: a batch whose rows all failed would otherwise
give `results` a null type, and Ray could not put it in one Parquet file beside a
batch that was scored.
"""
from __future__ import annotations

import pyarrow as pa

RESULTS = "results"        # [{index, relevance_score}], best first; null for a failed row
TOTAL_TOKENS = "total_tokens"
ERROR = "error"            # {type, message, field}, as the server's error body; else null
REPLICA = "replica"        # host:pid of the replica that answered (with stats=True)
SECONDS = "seconds"        # how long it took to answer the row (with stats=True)
DOCUMENTS = "n_documents"  # how many documents the request had (with stats=True)

# Internal to the JSON Lines path of `reranker-cli rerank --ray`.
JSON_REQUEST = "_request"  # the request line, as JSON text
INPUT_ERROR = "_input_error"  # the error body of a line that was not a request
ANSWER = "_answer"         # the answer line, as JSON text
LINE = "_line"             # the line number in the input file

RESULTS_TYPE = pa.list_(pa.struct([("index", pa.int64()), ("relevance_score", pa.float64())]))
ERROR_TYPE = pa.struct([("type", pa.string()), ("message", pa.string()),
                        ("field", pa.string())])
ADDED = (RESULTS, TOTAL_TOKENS, ERROR)


def answer_columns(batch: pa.Table, answers: list[dict]) -> pa.Table:
    """`batch` with the answers (as `answer_batch_request` gives them) as result columns; a
    column of the same name in the input is replaced."""
    results, tokens, errors = [], [], []
    for answer in answers:
        error = answer.get("error")
        if error is None:
            results.append([{"index": r["index"], "relevance_score": r["relevance_score"]}
                            for r in answer["results"]])
            tokens.append(answer["usage"]["total_tokens"])
        else:
            results.append(None)
            tokens.append(None)
        errors.append(error and {"type": error["type"], "message": error["message"],
                                 "field": error.get("field")})
    out = batch.drop_columns([c for c in ADDED if c in batch.column_names])
    out = out.append_column(RESULTS, pa.array(results, RESULTS_TYPE))
    out = out.append_column(TOTAL_TOKENS, pa.array(tokens, pa.int64()))
    return out.append_column(ERROR, pa.array(errors, ERROR_TYPE))


def stats_columns(replica: str, seconds: list[float],
                  documents: list[int]) -> dict[str, pa.Array]:
    return {REPLICA: pa.array([replica] * len(seconds), pa.string()),
            SECONDS: pa.array(seconds, pa.float64()),
            DOCUMENTS: pa.array(documents, pa.int64())}
