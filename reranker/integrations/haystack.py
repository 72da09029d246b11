"""Haystack: `RerankerRanker`, a ranker component that keeps the most relevant documents.

    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store))
    pipeline.add_component("ranker", RerankerRanker(model="models/jina-reranker-v3-q8_0.gguf"))
    pipeline.connect("retriever.documents", "ranker.documents")

Saved pipelines name this class by its module, which Haystack 3 loads only from allowed
modules: `Pipeline.loads(text, allowed_modules=["reranker.*"])` (or
HAYSTACK_DESERIALIZATION_ALLOWLIST="reranker.*").
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from reranker.extras import install_hint

try:
    from haystack import Document, component, default_from_dict, default_to_dict
except ImportError as exc:  # the extra is not installed
    raise ImportError("reranker.integrations.haystack needs haystack-ai: "
                      f"{install_hint('haystack')}") from exc

from reranker.integrations._shared import (SharedModel, check_count, check_instruction,
                                           check_list)
from reranker.reranker import Reranker


@component
class RerankerRanker:
    """Ranks documents by jina-reranker-v3 relevance to the query and keeps the `top_k`.

    `model` is a GGUF path, loaded by `warm_up()` (or the first `run`) once per process
    for every wrapper on the same file and options (see `reranker.integrations._shared`),
    or a loaded `Reranker`, which is used as it is and never closed here. A document is
    scored on its `content` (None counts as ""), preceded by the values of
    `meta_fields_to_embed` joined with `embedding_separator`, as Haystack's own rankers
    do. The documents returned are copies, best first, with `score` set; the caller's
    keep theirs.
    """

    def __init__(self, model: str | os.PathLike | Reranker, top_k: int = 3,
                 instruction: str | None = None, n_threads: int | None = None,
                 block_tokens: int | None = None, cpu_path: str | None = None,
                 engine: str | None = None, meta_fields_to_embed: list[str] | None = None,
                 embedding_separator: str = "\n"):
        # Nothing is loaded here: Haystack builds components to validate and serialize
        # pipelines, and loads models in warm_up().
        check_count("top_k", top_k, minimum=1, allow_none=False)
        check_instruction(instruction)
        if meta_fields_to_embed is not None:
            meta_fields_to_embed = check_list("meta_fields_to_embed", meta_fields_to_embed,
                                              str, "str")
        if not isinstance(embedding_separator, str):
            raise TypeError(f"embedding_separator is {type(embedding_separator).__name__}; "
                            "expected str")
        self._shared = SharedModel(model, n_threads=n_threads, block_tokens=block_tokens,
                                   cpu_path=cpu_path, engine=engine)
        # to_dict saves a path as it was given, not the absolute one the model loads from:
        # a saved pipeline travels with its models (a repository, a container image), and
        # "models/m.gguf" then names the file next to wherever the pipeline is loaded, as a
        # relative path in any config file does; an absolute path would name this machine's.
        self.model = self._shared.path if self._shared.given else os.fspath(model)
        self.top_k = top_k
        self.instruction = instruction
        self.n_threads, self.block_tokens = n_threads, block_tokens
        self.cpu_path, self.engine = cpu_path, engine
        self.meta_fields_to_embed = meta_fields_to_embed
        self.embedding_separator = embedding_separator

    @property
    def reranker(self) -> Reranker:
        """The Reranker this component scores with (shared: do not close it)."""
        return self._shared.get()

    def warm_up(self) -> None:
        """Load the model (or take the process's already loaded one); idempotent."""
        self._shared.get()

    def close(self) -> None:
        """Release this component's hold on the shared model (freed once no wrapper holds
        it); a given Reranker stays open. `Pipeline.close()` calls it; a later run loads
        the model again."""
        self._shared.close()

    def to_dict(self) -> dict[str, Any]:
        """The component's init parameters. A Reranker passed in is saved as its file path,
        so `from_dict` loads that file with the options saved here."""
        return default_to_dict(self, model=self.model, top_k=self.top_k,
                               instruction=self.instruction, n_threads=self.n_threads,
                               block_tokens=self.block_tokens, cpu_path=self.cpu_path,
                               engine=self.engine, meta_fields_to_embed=self.meta_fields_to_embed,
                               embedding_separator=self.embedding_separator)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RerankerRanker:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document],
            top_k: int | None = None) -> dict[str, list[Document]]:
        """The `top_k` documents (this call's, else the component's) most relevant to
        `query`, best first, as copies with `score` set."""
        check_count("top_k", top_k, minimum=1, allow_none=True)
        docs = check_list("documents", documents, Document, "haystack Document")
        texts = [self._text(doc) for doc in docs]
        results = self._shared.rerank(query, texts, top_n=self.top_k if top_k is None else top_k,
                                      instruction=self.instruction)
        # dataclasses.replace, not assignment: Haystack warns on changing a Document in
        # place, and the caller's documents keep their retrieval scores. The meta dict is
        # copied too, so a later component changing it leaves the input alone.
        return {"documents": [dataclasses.replace(docs[r.index], score=r.relevance_score,
                                                  meta=dict(docs[r.index].meta))
                              for r in results]}

    def _text(self, doc: Document) -> str:
        meta = [str(doc.meta[key]) for key in self.meta_fields_to_embed or ()
                if doc.meta.get(key)]
        return self.embedding_separator.join([*meta, doc.content or ""])
