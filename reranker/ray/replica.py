"""One model replica of a Ray Data job: a callable class that Ray runs as an actor.

Ray constructs it once per actor, so each replica reads the GGUF once and keeps its
llama.cpp context for every batch it is given. Each row becomes its answer through
`answer_batch_request`, the function the one-process `rerank --batch` calls, so the scores
and error bodies of the two paths cannot drift apart.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

import pyarrow as pa

from reranker.api_contract import model_id
from reranker.cli.documents_input import InputError, parse_request_line
from reranker.cli.rerank_command import answer_batch_request
from reranker.reranker import Reranker
from reranker.ray.columns import (ANSWER, INPUT_ERROR, JSON_REQUEST, answer_columns,
                                  stats_columns)


@dataclass(frozen=True)
class ReplicaSettings:
    """What every replica is built with (pickled once into each actor)."""
    model: str
    projector: str | None
    threads: int
    block_tokens: int
    cpu_path: str | None
    engine: str | None = None      # None: $RERANKER_ENGINE or doctor's verdict, per node
    top_n: int | None = None
    instruction: str | None = None
    as_json: bool = False          # answers as --batch's JSON text, not as columns
    include_documents: bool = True  # document texts in JSON answers, as --batch
    stats: bool = False            # which replica answered each row, in how long


class RerankReplica:
    def __init__(self, settings: ReplicaSettings):
        self._settings = settings
        # n_threads matches the actor's num_cpus: Ray reserves exactly the cores llama.cpp
        # uses, so replicas sharing a node do not oversubscribe it.
        self._ranker = Reranker(settings.model, settings.projector, n_threads=settings.threads,
                                block_tokens=settings.block_tokens, cpu_path=settings.cpu_path,
                                engine=settings.engine)
        self._model_name = model_id(settings.model)
        self._name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        answers, seconds, documents = [], [], []
        for row in batch.to_pylist():
            start = time.perf_counter()
            answer, count = self._answer(row)
            answers.append(answer)
            seconds.append(time.perf_counter() - start)
            documents.append(count)
        if self._settings.as_json:
            out = batch.select([c for c in batch.column_names if c not in (JSON_REQUEST,
                                                                            INPUT_ERROR)])
            out = out.append_column(ANSWER, pa.array(
                [json.dumps(a, ensure_ascii=False) for a in answers], pa.string()))
        else:
            out = answer_columns(batch, answers)
        if self._settings.stats:
            for name, column in stats_columns(self._name, seconds, documents).items():
                out = out.append_column(name, column)
        return out

    def _answer(self, row: dict) -> tuple[dict, int]:
        """The row's answer and how many documents its request has (0 if unreadable)."""
        if row.get(INPUT_ERROR) is not None:  # a line the driver could not read as a request
            return json.loads(row[INPUT_ERROR]), 0
        try:
            request = parse_request_line(row[JSON_REQUEST] if JSON_REQUEST in row
                                         else self._request_json(row))
        except InputError as e:
            return e.body(), 0
        return answer_batch_request(self._ranker, request, self._model_name,
                                    self._settings.include_documents), len(request.documents)

    def _request_json(self, row: dict) -> str:
        """A row of columns as the JSON request `parse_request_line` checks, so Parquet rows and
        JSON Lines are held to one contract. A row's own top_n / instruction win; the
        job's apply where the row has none."""
        record = {"query": row.get("query"), "documents": row.get("documents"),
                  "top_n": row.get("top_n"), "instruction": row.get("instruction")}
        if record["top_n"] is None:
            record["top_n"] = self._settings.top_n
        if record["instruction"] is None:
            record["instruction"] = self._settings.instruction
        try:
            return json.dumps(record, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as e:  # bytes, a date, NaN...: not a JSON request
            raise InputError(f"the row holds a value that is not text or a number ({e}); "
                             "store query, documents and instruction as strings") from None
