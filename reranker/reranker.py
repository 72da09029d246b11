"""`Reranker`: jina-reranker-v3 listwise scoring on a converted GGUF model."""
from __future__ import annotations

import logging
import shlex
import threading
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from numbers import Integral
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from gguf import LlamaFileType

from reranker.blocks import cosine, merge_query_embeddings
from reranker.cpu_path import resolve_cpu_path
from reranker.engine import LlamaEngine, check_kv_cache_type
from reranker.engine_choice import ROUTED, Engine, resolve_engine
from reranker.errors import (ModelFileError, RerankerCancelled, RerankerClosedError,
                             RerankerError)
from reranker.model_check import open_reranker_file
from reranker.model_format import FLOAT_FILE_TYPES, Keys
from reranker.scoring_plan import PlanLimits, PromptPlanner, ScoringPlan

if TYPE_CHECKING:  # imported when chosen: torch is an optional extra
    from reranker.routed_engine import RoutedEngine
    from reranker.torch_engine import TorchEngine

# Published defaults: `rerank()` arguments and the tokenizer's model_max_length.
MAX_QUERY_TOKENS = 512
MAX_DOC_TOKENS = 2048
BLOCK_SIZE = 125
BLOCK_TOKENS = 131072

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankResult:
    index: int  # position in the caller's list
    relevance_score: float  # cosine of the document's and the query's embeddings
    document: str
    embedding: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Scores:
    """Scores and projected embeddings in input order."""
    scores: np.ndarray  # [n_docs]
    doc_embeddings: np.ndarray  # [n_docs, projector output]
    query_embedding: np.ndarray
    total_tokens: int  # prompt tokens over every block (the usage the API reports)
    blocks: int
    decoded_tokens: int = 0  # of those, the ones llama.cpp decoded
    reused_tokens: int = 0  # and the ones whose KV cache was kept from the call before


def checkpoint_folder_error(path: Path) -> ModelFileError | None:
    """What to say when a Hugging Face checkpoint folder is given where a GGUF model
    belongs ("holds 0 .gguf files" did not say what to do); None for any other folder."""
    if (path / "config.json").is_file() and any(path.glob("*.safetensors*")):
        return ModelFileError(f"{path} is a Hugging Face checkpoint, not a GGUF model: convert "
                              f"it first (reranker-cli convert {shlex.quote(str(path))} -t q8_0)")
    return None


def resolve_model_file(model: str | Path) -> Path:
    """A GGUF path, or a directory holding exactly one GGUF."""
    if not isinstance(model, (str, PathLike)):
        raise TypeError(f"model is {type(model).__name__}; expected a path (str or "
                        "pathlib.Path) to a GGUF file or a directory holding one")
    if str(model) == "":  # pathlib reads it as "."
        raise ModelFileError("the model path is empty; give a GGUF file or a directory "
                             "holding one")
    path = Path(model).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if not found and (error := checkpoint_folder_error(path)) is not None:
            raise error
        if len(found) != 1:
            listing = ", ".join(p.name for p in found) or "none"
            raise ModelFileError(f"{path} holds {len(found)} .gguf files ({listing}); "
                                 "name the one to use")
        return found[0]
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    return path


class Reranker:
    """Scores documents against a query as jina-reranker-v3 does, on llama.cpp.

    Calls from several threads are safe: they are serialized on one llama.cpp
    context (decoding already uses every core given to it, so running two at once
    would not be faster). `close()` (or leaving a `with` block) waits for a running
    call, then frees it; any call after that raises RerankerClosedError.

    Flash attention defaults to on for quantized files and off for f32/f16/bf16
    ones: llama.cpp's CPU kernel computes it in f16, which moved f32 scores by 2e-4
    in the parity tests, and it was up to 10% faster on q4_k_m. `kv_cache_type`
    defaults to f32 for an all-f32 model and f16 otherwise. The weights are read
    into memory rather than mapped (`use_mmap=True` maps them): llama.cpp copies most
    quantized tensors into repacked buffers, and a mapping kept the file's pages
    resident beside the copies (about 200 MB more at q4_k_m). `cpu_path` picks llama.cpp's
    weight layout ("auto", "amx", "repack", "plain"; default $RERANKER_CPU_PATH or auto,
    see `reranker.cpu_path`): auto never takes AMX kernels that doctor has not verified.
    `engine` ("auto", "llama.cpp", "torch"; default $RERANKER_ENGINE or auto, see
    `reranker.engine_choice`) runs the backbone on llama.cpp or PyTorch; auto takes what
    doctor measured as faster for this file here (which may be both, each for the prompt
    lengths it is faster at), else llama.cpp. `ranker.engine_choice` says which and why;
    `ranker.engine.name` names the engine underneath.
    """

    def __init__(self, model: str | Path, projector: str | Path | None = None, *,
                 n_threads: int | None = None, max_context: int | None = None,
                 block_size: int = BLOCK_SIZE, block_tokens: int = BLOCK_TOKENS,
                 max_query_tokens: int = MAX_QUERY_TOKENS, max_doc_tokens: int = MAX_DOC_TOKENS,
                 n_batch: int = 2048, n_ubatch: int = 512, flash_attention: bool | None = None,
                 kv_cache_type: str | None = None, use_mmap: bool = False,
                 cpu_path: str | None = None, engine: str | None = None):
        for name, value in (("block_size", block_size), ("block_tokens", block_tokens),
                            ("max_query_tokens", max_query_tokens),
                            ("max_doc_tokens", max_doc_tokens), ("n_batch", n_batch),
                            ("n_ubatch", n_ubatch), ("n_threads", n_threads),
                            ("max_context", max_context)):
            optional = name in ("n_threads", "max_context")
            if (value is None and optional) or (_is_integer(value) and value >= 1):
                continue
            raise ValueError(f"{name} must be a positive integer{' or None' if optional else ''}"
                             f", got {value!r}")
        # numpy integers as plain ints: they reach ctypes fields and JSON answers.
        block_size, block_tokens, max_query_tokens, max_doc_tokens, n_batch, n_ubatch = (
            int(v) for v in (block_size, block_tokens, max_query_tokens, max_doc_tokens,
                             n_batch, n_ubatch))
        n_threads = None if n_threads is None else int(n_threads)
        max_context = None if max_context is None else int(max_context)
        for name, value, allowed in (("cpu_path", cpu_path, (str, type(None))),
                                     ("kv_cache_type", kv_cache_type, (str, type(None))),
                                     ("use_mmap", use_mmap, (bool,)),
                                     ("flash_attention", flash_attention, (bool, type(None)))):
            if not isinstance(value, allowed):
                raise TypeError(f"{name} is {type(value).__name__}; expected "
                                + " or ".join("None" if t is type(None) else t.__name__
                                              for t in allowed))
        self.model_path = resolve_model_file(model)
        opened = open_reranker_file(self.model_path, projector)
        self.metadata, self.projector = opened.metadata, opened.projector
        self.block_size, self.block_tokens = block_size, block_tokens
        self.max_query_tokens, self.max_doc_tokens = max_query_tokens, max_doc_tokens
        file_type = self.metadata.get(Keys.FILE_TYPE)
        if kv_cache_type is None:
            # An all-f32 model is chosen for exactness; an f16 cache costs it ~2e-5 in scores.
            kv_cache_type = "f32" if file_type == LlamaFileType.ALL_F32 else "f16"
        if flash_attention is None:
            # llama.cpp's CPU flash attention computes in f16 (~2e-4 on scores): noise next to
            # 4-8-bit weights, where it was up to 10% faster; float files keep exact attention.
            flash_attention = file_type is not None and file_type not in FLOAT_FILE_TYPES
        self.engine_choice: Engine = resolve_engine(engine, self.model_path)
        logger.info("engine %s: %s", self.engine_choice.name, self.engine_choice.reason)
        if self.engine_choice.name == "torch":
            from reranker.torch_engine import TorchEngine

            # llama.cpp's options are refused alike on either engine: whether a setting is
            # accepted must not turn on what doctor recorded for `auto` on this machine.
            check_kv_cache_type(kv_cache_type)
            resolve_cpu_path(cpu_path)

            self._engine = TorchEngine(self.model_path, n_threads=n_threads,
                                       max_context=max_context)
        else:
            self._engine = LlamaEngine(self.model_path, n_threads=n_threads,
                                       max_context=max_context, n_batch=n_batch,
                                       n_ubatch=n_ubatch, flash_attention=flash_attention,
                                       kv_cache_type=kv_cache_type, use_mmap=use_mmap,
                                       cpu_path=cpu_path)
            routed_from = self.engine_choice.torch_from_tokens
            if self.engine_choice.name == ROUTED and routed_from > self._engine.max_context:
                # No prompt can be that long here: loading torch would only cost memory.
                self.engine_choice = Engine("llama.cpp", (
                    f"{self.engine_choice.reason}; but prompts from {routed_from} tokens go to "
                    f"torch and the context is capped at {self._engine.max_context}, so "
                    "llama.cpp alone"))
                logger.info("engine %s: %s", self.engine_choice.name, self.engine_choice.reason)
            elif self.engine_choice.name == ROUTED:
                from reranker.routed_engine import RoutedEngine

                self._engine = RoutedEngine(self._engine, routed_from,
                                            n_threads=n_threads, max_context=max_context)
        self.cpu_path = self._engine.cpu_path
        self.projector.check_hidden_size(self._engine.hidden_size)
        self._planner = PromptPlanner(self._engine, PlanLimits(
            max_query_tokens=max_query_tokens, max_doc_tokens=max_doc_tokens,
            block_size=block_size, block_tokens=block_tokens))
        self._lock = threading.Lock()
        self._closed = False

    # -- public API -------------------------------------------------------------
    def rerank(self, query: str, documents: Sequence[str], *, top_n: int | None = None,
               instruction: str | None = None, return_embeddings: bool = False,
               max_doc_tokens: int | None = None) -> list[RerankResult]:
        """Documents sorted by relevance, best first; the caller's list is not changed.

        `max_doc_tokens` cuts every document of this call at that many tokens when it is
        below the Reranker's own `max_doc_tokens` (Cohere's `max_tokens_per_doc`).
        """
        _check_top_n(top_n)
        docs = _document_list(documents)
        scored = self.score(query, docs, instruction=instruction, max_doc_tokens=max_doc_tokens)
        return rank_scores(scored, docs, top_n=top_n, return_embeddings=return_embeddings)

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
              should_stop: Callable[[], bool] | None = None,
              max_doc_tokens: int | None = None) -> Scores:
        """Scores and embeddings in input order (the primitive `rerank` sorts).

        `should_stop` (e.g. `threading.Event().is_set`) is asked between blocks and, from
        llama.cpp's decoding thread, during each decode: once it answers true the call
        raises RerankerCancelled within about one graph operation. `max_doc_tokens` as in
        `rerank`.
        """
        docs = _checked_inputs(query, documents, instruction, max_doc_tokens)
        with self._lock:
            self._check_open()  # an empty list too: a closed Reranker answers nothing
            plan = self._planner.plan(query, docs, instruction, max_doc_tokens, should_stop)
            return self._score(plan, should_stop)

    def plan(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
             max_doc_tokens: int | None = None,
             should_stop: Callable[[], bool] | None = None,
             max_input_tokens: int | None = None) -> ScoringPlan:
        """The prompts `score` would decode: blocks with their token ids and marker positions.

        Also each text's token count after truncation (`input_tokens`, what a server's
        token limit caps). Raises InputTooLongError for a query or instruction that leaves
        no room for a document, as `score` does, before anything is decoded;
        RerankerCancelled once `should_stop` answers true (asked before each document); and
        TooManyTokensError as soon as the texts hold more than `max_input_tokens` (a
        server's limit), without tokenizing the rest.
        """
        docs = _checked_inputs(query, documents, instruction, max_doc_tokens)
        if max_input_tokens is not None and (not _is_integer(max_input_tokens)
                                             or max_input_tokens < 1):
            raise ValueError(f"max_input_tokens must be a positive integer or None, "
                             f"got {max_input_tokens!r}")
        with self._lock:
            self._check_open()
            return self._planner.plan(query, docs, instruction, max_doc_tokens, should_stop,
                                      max_input_tokens)

    def score_plan(self, plan: ScoringPlan, *,
                   should_stop: Callable[[], bool] | None = None) -> Scores:
        """`score` on a plan made by this Reranker's `plan` (so its tokens are not counted twice)."""
        if not isinstance(plan, ScoringPlan):
            raise TypeError(f"plan is {type(plan).__name__}; expected a ScoringPlan "
                            "from Reranker.plan()")
        with self._lock:
            self._check_open()
            return self._score(plan, should_stop)

    @property
    def engine(self) -> LlamaEngine | TorchEngine | RoutedEngine:
        """The engine underneath (`.name`: "llama.cpp", "torch" or "llama.cpp+torch"):
        tokenizer, hidden states."""
        return self._engine

    def count_tokens(self, text: str) -> int:
        """The tokens of `text` as the model reads it (before any truncation)."""
        _check_text("text", text)
        with self._lock:  # so that close() cannot free the vocabulary meanwhile
            self._check_open()
            return len(self._planner.encode(text))

    @property
    def closed(self) -> bool:
        """True once `close()` has been called: every call then raises RerankerClosedError."""
        return self._closed

    def close(self) -> None:
        """Free llama.cpp's model and context, once a call running in another thread ends.

        Idempotent. Every call after it raises RerankerClosedError.
        """
        with self._lock:
            self._closed = True
            self._engine.close()

    def __enter__(self) -> Reranker:
        self._check_open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RerankerClosedError(f"this Reranker ({self.model_path.name}) was closed; "
                                      "create a new Reranker to score again")

    def _score(self, plan: ScoringPlan, should_stop: Callable[[], bool] | None) -> Scores:
        if not plan.blocks:
            out_dim = self.projector.second.shape[0]
            return Scores(np.zeros(0), np.zeros((0, out_dim)), np.zeros(out_dim), 0, 0)
        query_embeddings, block_doc_embeddings = [], []
        decoded = reused = 0
        for done, block in enumerate(plan.blocks):
            if should_stop is not None and should_stop():
                raise RerankerCancelled(f"stopped after {done} of the blocks: "
                                        "should_stop() answered true")
            # Positional: tests/test_runtime.py wraps hidden_states as f(*args).
            states = self._engine.hidden_states(list(block.token_ids), block.marker_positions,
                                                should_stop)
            decoded += self._engine.decoded_tokens
            reused += self._engine.reused_tokens
            projected = self.projector(states)
            if not np.isfinite(projected).all():  # the cosine would make them silent zeros
                raise RerankerError(f"the model computed NaN or infinite hidden states (block "
                                    f"{done + 1} of {len(plan.blocks)}): {self.model_path.name}"
                                    "'s weights are damaged; convert or download it again")
            block_doc_embeddings.append(projected[:-1])
            query_embeddings.append(projected[-1])
        query_embedding = (query_embeddings[0] if len(query_embeddings) == 1
                           else merge_query_embeddings(query_embeddings, block_doc_embeddings))
        n_docs = len(plan.document_tokens)
        doc_embeddings = np.empty((n_docs, block_doc_embeddings[0].shape[1]), dtype=np.float32)
        for block, embeddings in zip(plan.blocks, block_doc_embeddings):
            doc_embeddings[list(block.documents)] = embeddings
        scores = cosine(doc_embeddings, query_embedding)
        return Scores(scores, doc_embeddings, np.asarray(query_embedding), plan.total_tokens,
                      len(plan.blocks), decoded, reused)


def rank_scores(scored: Scores, documents: Sequence[str], *, top_n: int | None = None,
                return_embeddings: bool = False) -> list[RerankResult]:
    """Results sorted best first (ties keep input order), cut to `top_n`."""
    _check_top_n(top_n)
    order = np.argsort(-scored.scores, kind="stable")
    if top_n is not None:
        order = order[:top_n]
    return [RerankResult(int(i), float(scored.scores[i]), documents[i],
                         scored.doc_embeddings[i].copy() if return_embeddings else None)
            for i in order]


def _is_integer(value) -> bool:
    """An int or numpy integer (numbers.Integral), but not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_top_n(top_n) -> None:
    if top_n is not None and (not _is_integer(top_n) or top_n < 0):
        raise ValueError(f"top_n must be a non-negative integer or None, got {top_n!r}")


def _document_list(documents) -> list[str]:
    """`documents` as a new list of str, refusing what is not an ordered collection of texts.

    Iterating a str (or bytes) would rank its characters, a mapping its keys, and a set
    gives the results' indices an order the caller never saw; each is a mistake, so each
    raises. Any other iterable of str is accepted, a generator included (read once).
    """
    if isinstance(documents, (str, bytes, bytearray, memoryview)):
        hint = "; to rank one text, pass [text]"
    elif isinstance(documents, Mapping):
        hint = "; to rank its values, pass list(documents.values())"
    elif isinstance(documents, Set):
        hint = "; a set has no order for the result indices to refer to, pass a list"
    else:
        try:
            items = iter(documents)
        except TypeError:  # None, a number...
            hint = ""
        else:
            docs = list(items)
            for i, doc in enumerate(docs):
                _check_text(f"documents[{i}]", doc)
            return docs
    raise TypeError(f"documents is {type(documents).__name__}; expected a sequence of str "
                    f"(a list or tuple of texts){hint}")


def _checked_inputs(query, documents, instruction, max_doc_tokens) -> list[str]:
    _check_text("query", query)
    if instruction is not None:
        _check_text("instruction", instruction)
    if max_doc_tokens is not None and (not _is_integer(max_doc_tokens) or max_doc_tokens < 1):
        raise ValueError(f"max_doc_tokens must be a positive integer or None, "
                         f"got {max_doc_tokens!r}")
    return _document_list(documents)


def unpaired_surrogate(text: str) -> int | None:
    """Where `text` holds a lone surrogate (a str can, valid Unicode cannot), or None.

    Such text has no UTF-8 form, so llama.cpp's tokenizer cannot take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def _check_text(name: str, value) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} is {type(value).__name__}; expected str")
    position = unpaired_surrogate(value)
    if position is not None:
        raise ValueError(f"{name} has an unpaired surrogate "
                         f"({repr(value[position])[1:-1]}) at character {position}; pass "
                         "valid Unicode text (bytes decoded with errors='surrogateescape' "
                         "hold these: decode them with errors='replace')")
