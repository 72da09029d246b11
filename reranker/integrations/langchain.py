"""LangChain: `RerankerCompressor`, a document compressor that keeps the most relevant documents.

    from langchain_classic.retrievers import ContextualCompressionRetriever
    compressor = RerankerCompressor(model="models/jina-reranker-v3-q8_0.gguf", top_n=3)
    retriever = ContextualCompressionRetriever(base_compressor=compressor,
                                               base_retriever=vector_store.as_retriever())
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from reranker.extras import install_hint

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import PrivateAttr
except ImportError as exc:  # the extra is not installed
    raise ImportError("reranker.integrations.langchain needs langchain-core: "
                      f"{install_hint('langchain')}") from exc

from reranker.integrations._shared import (SharedModel, check_keywords, check_list,
                                           checked_shared_model)
from reranker.reranker import Reranker


class RerankerCompressor(BaseDocumentCompressor):
    """Reorders documents by jina-reranker-v3 relevance to the query and keeps the `top_n`.

    `model` is a GGUF path (loaded once per process for every wrapper on the same file
    and options, see `reranker.integrations._shared`) or a loaded `Reranker`, which is
    used as it is and never closed here. The documents returned are copies, best first,
    with `metadata["relevance_score"]` added; the caller's documents are left unchanged.
    """

    model: str
    """Absolute path of the GGUF file (that of the Reranker, when one was passed)."""
    top_n: int | None = 3
    """How many documents to return; None returns them all, reordered."""
    instruction: str | None = None
    """Passed to every `Reranker.rerank` call (the model's task instruction)."""
    n_threads: int | None = None
    block_tokens: int | None = None
    cpu_path: str | None = None
    engine: str | None = None

    _shared: SharedModel = PrivateAttr()

    def __init__(self, model: str | os.PathLike | Reranker, *, top_n: int | None = 3,
                 instruction: str | None = None, n_threads: int | None = None,
                 block_tokens: int | None = None, cpu_path: str | None = None,
                 engine: str | None = None, **kwargs):
        check_keywords("RerankerCompressor", kwargs, type(self).model_fields)
        load = dict(n_threads=n_threads, block_tokens=block_tokens, cpu_path=cpu_path,
                    engine=engine)
        shared = checked_shared_model(model, top_n=top_n, instruction=instruction, **load)
        super().__init__(model=shared.path, top_n=top_n, instruction=instruction, **load,
                         **kwargs)
        self._shared = shared
        # Loaded now, as LangChain's own rerankers load theirs: a wrong path fails where
        # the retriever is built, not at its first query.
        shared.get()

    @property
    def reranker(self) -> Reranker:
        """The Reranker this compressor scores with (shared: do not close it)."""
        return self._shared.get()

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """The `top_n` documents most relevant to `query`, best first, each a copy with
        `metadata["relevance_score"]` set. `callbacks` is accepted for the interface;
        scoring reports no events."""
        docs = check_list("documents", documents, Document, "langchain_core Document")
        results = self._shared.rerank(query, [doc.page_content for doc in docs],
                                      top_n=self.top_n, instruction=self.instruction)
        return [_with_score(docs[r.index], r.relevance_score) for r in results]

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        """`compress_documents` in a worker thread: scoring takes the CPU for up to seconds,
        and the event loop keeps serving meanwhile (calls on one model run one at a time)."""
        return await asyncio.to_thread(self.compress_documents, documents, query, callbacks)

    def close(self) -> None:
        """Release this compressor's hold on the shared model (freed once no wrapper holds
        it); a given Reranker stays open. Scoring again takes the model back."""
        self._shared.close()


def _with_score(doc: Document, score: float) -> Document:
    # model_copy keeps the id, the type and any subclass; the metadata dict is new so the
    # caller's document does not gain the score.
    return doc.model_copy(update={"metadata": {**doc.metadata, "relevance_score": score}})
