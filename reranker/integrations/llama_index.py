"""LlamaIndex: `RerankerPostprocessor`, a node postprocessor that keeps the most relevant nodes.

    postprocessor = RerankerPostprocessor(model="models/jina-reranker-v3-q8_0.gguf", top_n=3)
    query_engine = index.as_query_engine(similarity_top_k=20,
                                         node_postprocessors=[postprocessor])
"""
from __future__ import annotations

import os
from typing import List, Optional

from reranker.extras import install_hint

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # the extra is not installed
    raise ImportError("reranker.integrations.llama_index needs llama-index-core: "
                      f"{install_hint('llama-index')}") from exc

from reranker.integrations._shared import (SharedModel, check_keywords, check_list,
                                           checked_shared_model)
from reranker.reranker import Reranker

dispatcher = get_dispatcher(__name__)


class RerankerPostprocessor(BaseNodePostprocessor):
    """Reorders nodes by jina-reranker-v3 relevance to the query and keeps the `top_n`.

    `model` is a GGUF path (loaded once per process for every wrapper on the same file
    and options, see `reranker.integrations._shared`) or a loaded `Reranker`, which is
    used as it is and never closed here. Each node is scored on
    `node.get_content(metadata_mode)`: by default the embedding view (text plus the
    metadata not excluded from embedding), as LlamaIndex's own rerankers do. The result is
    new `NodeWithScore`s around the same nodes, best first, with the reranker's scores;
    the caller's `NodeWithScore`s keep their retrieval scores.
    """

    model: str = Field(description="Absolute path of the GGUF file (the Reranker's, "
                                   "when one was passed).")
    top_n: Optional[int] = Field(default=3, description="Nodes to return; None returns all.")
    instruction: Optional[str] = Field(default=None,
                                       description="Passed to every Reranker.rerank call.")
    n_threads: Optional[int] = Field(default=None)
    block_tokens: Optional[int] = Field(default=None)
    cpu_path: Optional[str] = Field(default=None)
    engine: Optional[str] = Field(default=None)
    metadata_mode: MetadataMode = Field(default=MetadataMode.EMBED,
                                        description="Which node content is scored.")

    _shared: SharedModel = PrivateAttr()

    def __init__(self, model: str | os.PathLike | Reranker, *, top_n: Optional[int] = 3,
                 instruction: Optional[str] = None, n_threads: Optional[int] = None,
                 block_tokens: Optional[int] = None, cpu_path: Optional[str] = None,
                 engine: Optional[str] = None,
                 metadata_mode: MetadataMode | str = MetadataMode.EMBED, **kwargs):
        check_keywords("RerankerPostprocessor", kwargs, type(self).model_fields)
        load = dict(n_threads=n_threads, block_tokens=block_tokens, cpu_path=cpu_path,
                    engine=engine)
        shared = checked_shared_model(model, top_n=top_n, instruction=instruction, **load)
        super().__init__(model=shared.path, top_n=top_n, instruction=instruction, **load,
                         metadata_mode=MetadataMode(metadata_mode), **kwargs)
        self._shared = shared
        # Loaded now, as LlamaIndex's own rerankers load theirs: a wrong path fails where
        # the query engine is built, not at its first query.
        shared.get()

    @classmethod
    def class_name(cls) -> str:
        return "RerankerPostprocessor"

    @property
    def reranker(self) -> Reranker:
        """The Reranker this postprocessor scores with (shared: do not close it)."""
        return self._shared.get()

    def _postprocess_nodes(self, nodes: List[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        # The async path (apostprocess_nodes) runs this in a worker thread (LlamaIndex's
        # default), so scoring does not block the event loop.
        if query_bundle is None:
            raise ValueError("RerankerPostprocessor needs the query: pass query_str=... "
                             "or query_bundle=QueryBundle(...)")
        nodes = check_list("nodes", nodes, NodeWithScore, "llama_index NodeWithScore")
        if not nodes:
            return []
        top_n = len(nodes) if self.top_n is None else self.top_n
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_n,
                                          model_name=self.model))
        texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
        with self.callback_manager.event(
                CBEventType.RERANKING,
                payload={EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self.model,
                         EventPayload.QUERY_STR: query_bundle.query_str,
                         EventPayload.TOP_K: self.top_n}) as event:
            results = self._shared.rerank(query_bundle.query_str, texts, top_n=self.top_n,
                                          instruction=self.instruction)
            # New NodeWithScores: LlamaIndex's sentence-transformer reranker overwrites the
            # caller's scores in place, which loses the retrieval score.
            ranked = [NodeWithScore(node=nodes[r.index].node, score=r.relevance_score)
                      for r in results]
            event.on_end(payload={EventPayload.NODES: ranked})
        dispatcher.event(ReRankEndEvent(nodes=ranked))
        return ranked

    def close(self) -> None:
        """Release this postprocessor's hold on the shared model (freed once no wrapper
        holds it); a given Reranker stays open. Scoring again takes the model back."""
        self._shared.close()
