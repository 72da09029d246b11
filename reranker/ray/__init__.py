"""Rerank a Ray Data dataset on a pool of model replicas (the `ray` extra).

Ray Data does the scheduling, queueing and retrying: each replica is an actor of a
`map_batches` actor pool that loads the GGUF once. Import this module only where Ray
is wanted; nothing else in the package imports it.
"""
from __future__ import annotations

from pathlib import Path

import ray.data

from reranker.api_contract import TOP_N_MINIMUM
from reranker.ray.columns import ERROR, RESULTS, TOTAL_TOKENS
from reranker.ray.replica import RerankReplica, ReplicaSettings
from reranker.reranker import BLOCK_TOKENS, resolve_model_file

__all__ = ["rerank_dataset", "ERROR", "RESULTS", "TOTAL_TOKENS", "REPLICA_RESTARTS"]

# How often a replica that died is restarted, and its batch run again, before the job fails.
REPLICA_RESTARTS = 3

def rerank_dataset(dataset: ray.data.Dataset, model: str | Path, *, replicas: int = 1,
                   threads_per_replica: int = 1, top_n: int | None = None,
                   instruction: str | None = None, projector: str | Path | None = None,
                   block_tokens: int = BLOCK_TOKENS, cpu_path: str | None = None,
                   engine: str | None = None, batch_size: int = 8,
                   stats: bool = False) -> ray.data.Dataset:
    """Each row of `dataset` (columns `query`, `documents`, optional `top_n` and
    `instruction`) with the columns `results` ([{index, relevance_score}] best first),
    `total_tokens` and `error` added; the rows keep their order.

    `model` is a path every node of the cluster can read (shared storage). A row that
    cannot be scored gets its error ({type, message, field}, as the server answers) and
    null results; the job goes on. A replica that dies (its process killed, out of
    memory) is restarted and its batch retried up to REPLICA_RESTARTS times; then the
    job fails with Ray's ActorDiedError. `top_n` and `instruction` apply to rows without
    their own. `stats=True` adds `replica`, `seconds` and `n_documents` (which replica
    answered, in how long, how many documents the request had). Lazy, as every Ray Data
    transform: nothing runs until it is consumed.

    The replicas reserve replicas x threads_per_replica CPUs for the whole job. Leave
    the stages before this one a CPU (ray.data.read_parquet's tasks need one each): on
    Ray 2.60 a read waiting for a CPU the replicas hold waits for ever.
    """
    return _rerank(dataset, model, replicas=replicas, threads_per_replica=threads_per_replica,
                   batch_size=batch_size, settings=dict(
                       projector=projector, block_tokens=block_tokens, cpu_path=cpu_path,
                       engine=engine, top_n=top_n, instruction=instruction, stats=stats))


def _rerank(dataset: ray.data.Dataset, model: str | Path, *, replicas: int,
            threads_per_replica: int, batch_size: int, settings: dict) -> ray.data.Dataset:
    """rerank_dataset with every replica setting open (the CLI's JSON Lines answers)."""
    if not isinstance(dataset, ray.data.Dataset):
        raise TypeError(f"dataset must be a ray.data.Dataset, got {type(dataset).__name__}")
    for name, value in (("replicas", replicas), ("threads_per_replica", threads_per_replica),
                        ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    top_n = settings.get("top_n")
    # The contract's bound (a row's own top_n is checked by it, per row).
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool)
                              or top_n < TOP_N_MINIMUM):
        raise ValueError(f"top_n must be an integer of at least {TOP_N_MINIMUM} or None, "
                         f"got {top_n!r}")
    # Checked here so a missing file is one clear error, not a replica that dies on start;
    # absolute, since the replicas do not run in this directory.
    model_file = resolve_model_file(model).resolve()
    projector = settings.pop("projector", None)
    replica = ReplicaSettings(model=str(model_file),
                              projector=None if projector is None else str(Path(projector).resolve()),
                              threads=threads_per_replica, **settings)
    out = dataset.map_batches(
        RerankReplica, fn_constructor_kwargs={"settings": replica}, batch_format="pyarrow",
        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=replicas),
        num_cpus=threads_per_replica,
        # A replica that dies (killed, out of memory, its node lost) is restarted and its
        # batch run again, but not forever as Ray Data's default would: a row that kills
        # every replica (a prompt too large for the memory) must end the job, not loop.
        # Ray 2.60 deprecates these actor options here and offers no other place for them.
        max_restarts=REPLICA_RESTARTS, max_task_retries=REPLICA_RESTARTS)
    # This dataset's own execution options (a copy of the context it was made in): the
    # caller's global DataContext is left as it was.
    out.context.execution_options.preserve_order = True
    return out
