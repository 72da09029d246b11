"""llama.cpp driven to return final hidden states at chosen token positions only.

Only the marker tokens are marked as outputs, so llama.cpp runs the last layer's
feed-forward and the final norm on those rows alone. The eval callback copies the
`result_norm` node (the final hidden state after RMSNorm) and then stops the
graph, so the vocabulary projection (151936 x 1024 per output row) never runs.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from reranker.cpu_path import CpuPath, resolve_cpu_path
from reranker.errors import (InputTooLongError, ModelFileError, RerankerCancelled,
                             RerankerClosedError, RerankerError)
from reranker.ggml_tensors import copy_f32_rows, tensor_name
from reranker.interrupts import run_interruptibly
from reranker.llama_logging import route_llama_logs

logger = logging.getLogger(__name__)

HIDDEN_STATE_NODE = b"result_norm"
# Contexts grow in these steps (llama.cpp pads to 256 anyway). Each step of f16 KV cache
# is 28 MB on the 0.6B model, so the context is sized close to the prompt, not rounded up.
_CONTEXT_STEP = 256
_DECODE_ABORTED = 2  # llama_decode's status when the abort callback answered true
# llama.cpp's CPU flash attention runs a micro-batch of fewer than 64 query rows through a
# vector kernel that accumulates in f16 and larger ones through a tiled f32 kernel, so one
# token's hidden state depended on where a micro-batch boundary fell (tiny f32 model: 2e-4
# from attention without flash on the tiled kernel, 1.4e-3 on the vector one). Prompts are
# therefore decoded in slices of at least this many tokens.
_MIN_SLICE = 64
KV_CACHE_TYPES = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16,
                  "bf16": GGMLQuantizationType.BF16, "q8_0": GGMLQuantizationType.Q8_0}


def default_thread_count() -> int:
    """The CPUs this process may run on (not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LlamaEngine:
    """One llama.cpp model and context; `hidden_states` calls are serialized by a lock."""

    name = "llama.cpp"

    def __init__(self, model_path: str | Path, *, n_threads: int | None = None,
                 max_context: int | None = None, n_batch: int = 2048, n_ubatch: int = 512,
                 flash_attention: bool | None = None, kv_cache_type: str = "f16",
                 use_mmap: bool = False, cpu_path: str | None = None,
                 vocab_only: bool = False):
        """`vocab_only` loads the vocabulary alone (tokenize, detokenize, special tokens):
        what another engine running the weights itself needs of llama.cpp."""
        import llama_cpp

        self._llama = llama_cpp
        self.model_path = Path(model_path)
        self.n_threads = n_threads or default_thread_count()
        self.n_ubatch = n_ubatch
        self.n_batch = max(n_batch, n_ubatch)  # the context's; calls are sliced to n_ubatch
        self._ctx_ubatch = 0  # the current context's micro-batch size
        self.flash_attention = flash_attention
        check_kv_cache_type(kv_cache_type)
        self._kv_type = int(KV_CACHE_TYPES[kv_cache_type])
        self._lock = threading.Lock()
        self._ctx = None
        self._ctx_size = 0
        self._batch = None
        self._captured: list[np.ndarray] = []
        self._cached_tokens: list[int] = []  # what the KV cache holds, in order
        self.reused_tokens = 0  # prefix tokens the last call did not decode again
        self.decoded_tokens = 0  # tokens the last call decoded
        # Kept referenced for as long as any context may call them: llama.cpp holds only
        # the C pointers, and calling a garbage-collected ctypes callback crashes the process.
        self._eval_callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_eval)
        self._abort_callback = llama_cpp.ggml_abort_callback(self._on_abort)
        self._progress_callback = llama_cpp.llama_progress_callback(
            lambda _progress, _user_data: not self._interrupted)
        self._should_stop: Callable[[], bool] | None = None  # the running call's
        self._stop_error: BaseException | None = None  # raised by should_stop inside a decode
        self._interrupted = False  # Ctrl-C arrived during the running load or decode

        route_llama_logs()
        llama_cpp.llama_backend_init()
        # Decided before loading: the weights are laid out for the chosen kernels at load.
        self.cpu_path = (CpuPath("plain", "vocabulary only: no weights are loaded")
                         if vocab_only else resolve_cpu_path(cpu_path))
        logger.info("CPU path %s: %s", self.cpu_path.name, self.cpu_path.reason)
        params = llama_cpp.llama_model_default_params()
        params.use_extra_bufts = self.cpu_path.use_extra_buffer_types
        params.vocab_only = self._vocab_only = vocab_only
        # Read, not mapped: llama.cpp repacks most quantized tensors into its own buffers
        # for the CPU kernels, and with a mapping the file's pages stayed resident beside
        # those copies (q4_k_m, 16 x 120 words: peak 1078 MB mapped, 876 MB read).
        params.load_mode = (llama_cpp.LLAMA_LOAD_MODE_MMAP if use_mmap
                            else llama_cpp.LLAMA_LOAD_MODE_NONE)
        params.progress_callback = self._progress_callback  # stops a load on Ctrl-C
        path = os.fsencode(self.model_path)

        def load():
            model = llama_cpp.llama_model_load_from_file(path, params)
            if model and self._interrupted:  # loaded as the interrupt came: not kept
                llama_cpp.llama_model_free(model)
                return None
            return model
        self._model = run_interruptibly(load, stop=self._interrupt)
        if not self._model:
            raise ModelFileError(f"llama.cpp could not load {self.model_path} "
                                 "(run with -v to see its log)")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.hidden_size = llama_cpp.llama_model_n_embd(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        trained = llama_cpp.llama_model_n_ctx_train(self._model)
        self.max_context = min(max_context or trained, trained)

    # -- tokens ---------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, with special-token parsing off (control text stays text)."""
        data = text.encode("utf-8")
        llama = self._llama

        def call(capacity: int) -> tuple[int, ctypes.Array]:
            buf = (llama.llama_token * capacity)()
            return llama.llama_tokenize(self._vocab, data, len(data), buf, capacity,
                                        False, False), buf
        with self._lock:
            self._check_open()
            # Byte-level BPE gives at most one token per byte, so this first size always fits.
            n, buf = _fill(call, len(data) + 16, "llama_tokenize")
        return list(buf[:n])

    def detokenize(self, tokens: Sequence[int], *, unparse_special: bool = False) -> str:
        """The text of `tokens`, as bytes decoded with U+FFFD for a cut-off character.

        Control tokens are left out unless `unparse_special` (then they are spelled out,
        as a prompt for llama.cpp's own tools that parse them back).
        """
        arr = (self._llama.llama_token * len(tokens))(*tokens)

        def call(capacity: int) -> tuple[int, ctypes.Array]:
            buf = ctypes.create_string_buffer(capacity)
            return self._llama.llama_detokenize(self._vocab, arr, len(tokens), buf, capacity,
                                                False, unparse_special), buf
        with self._lock:
            self._check_open()
            # A guess that fits ordinary text; a token can be far longer (Qwen has single
            # tokens of 64+ "=" or spaces), and then llama.cpp answers with the size it needs.
            n, buf = _fill(call, 16 * len(tokens) + 16, "llama_detokenize")
        return buf.raw[:n].decode("utf-8", errors="replace")

    def special_token_id(self, text: str) -> int:
        """The id of a control token, looked up in the model's own vocabulary."""
        data = text.encode("utf-8")
        buf = (self._llama.llama_token * 8)()
        with self._lock:
            self._check_open()
            n = self._llama.llama_tokenize(self._vocab, data, len(data), buf, 8, False, True)
        if n != 1:
            raise ModelFileError(f"{self.model_path}: the vocabulary has no token {text}")
        return buf[0]

    @property
    def llama_model(self):
        """llama.cpp's loaded model (a `llama_model_p`), for a baseline sharing these weights.

        Valid until `close()`, which frees it: whoever borrows it must not outlive this engine.
        """
        with self._lock:
            self._check_open()
            return self._model

    # -- context ----------------------------------------------------------------
    def reset_cache(self) -> None:
        """Forget the KV cache: the next `hidden_states` call decodes its prompt from scratch."""
        with self._lock:
            self._check_open()
            self._cached_tokens = []

    def configure_context(self, *, n_ubatch: int, n_tokens: int | None = None) -> None:
        """Decode in micro-batches of `n_ubatch` tokens from now on, on the same weights.

        The context is recreated for it (its KV cache is lost); with `n_tokens` it is
        created now, large enough for that many, so the next call does not pay for it.
        """
        if isinstance(n_ubatch, bool) or not isinstance(n_ubatch, int) or n_ubatch < 1:
            raise ValueError(f"n_ubatch must be a positive integer, got {n_ubatch!r}")
        if n_tokens is not None and (isinstance(n_tokens, bool) or not isinstance(n_tokens, int)
                                     or not 1 <= n_tokens <= self.max_context):
            raise ValueError(f"n_tokens must be an integer from 1 to the context's "
                             f"{self.max_context}, got {n_tokens!r}")
        with self._lock:
            self._check_open()
            self._free_context()
            self._cached_tokens = []
            self.n_ubatch = n_ubatch
            self.n_batch = max(self.n_batch, n_ubatch)
            if n_tokens is not None:
                self._ensure_context(n_tokens)

    # -- hidden states ---------------------------------------------------------
    def hidden_states(self, tokens: Sequence[int], positions: Sequence[int],
                      should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """Final hidden states at `positions` (ascending) of one sequence: [len(positions), hidden].

        Attention is causal, so tokens after the last position cannot change any of the
        states asked for and are not decoded (the template's 13 closing tokens after the
        query marker).

        `should_stop`, if given, is asked before each micro-batch and, through llama.cpp's
        abort callback, between the graph's operations (from the decoding thread, so it
        must be quick and thread-safe, e.g. `threading.Event.is_set`); once it answers
        true the call raises RerankerCancelled, and the next call decodes from scratch.
        """
        if self._vocab_only:
            raise RerankerError(f"this LlamaEngine on {self.model_path.name} loaded the "
                                "vocabulary only; it tokenizes but has no weights to run")
        tokens, positions = check_positions(tokens, positions, self.max_context, self.n_vocab)
        if not positions:
            return np.empty((0, self.hidden_size), dtype=np.float32)
        n = len(tokens)
        wanted = np.zeros(n, dtype=np.int8)
        wanted[positions] = 1
        with self._lock:
            self._check_open()
            self._ensure_context(n)
            reused = self._reuse_prefix(tokens, positions[0])
            self._captured = []
            # Until this decode has succeeded: after a failed or aborted one the KV cache
            # holds an unknown part of this prompt, so nothing of it may be reused.
            self._cached_tokens = []
            self._should_stop, self._stop_error = should_stop, None
            self._interrupted = False
            try:
                run_interruptibly(lambda: self._decode(tokens, wanted, reused),
                                  stop=self._interrupt)
            finally:
                self._should_stop = None
            self._cached_tokens = list(tokens)
            self.reused_tokens = reused
            self.decoded_tokens = n - reused
            rows = [r for r in self._captured if r.size]
            self._captured = []
        states = np.concatenate(rows) if rows else np.empty((0, self.hidden_size), np.float32)
        if states.shape != (len(positions), self.hidden_size):
            raise RerankerError(f"captured {states.shape[0]} hidden states for "
                                f"{len(positions)} marker positions")
        return states

    def _decode(self, tokens: Sequence[int], wanted: np.ndarray, reused: int) -> None:
        batch = self._batch
        for start, stop in _slices(reused, len(tokens), self._ctx_ubatch):
            if self._should_stop is not None and self._should_stop():
                raise RerankerCancelled(f"stopped before decoding tokens {start}..{stop - 1} "
                                        f"of {len(tokens)}: should_stop() answered true")
            for i in range(start, stop):
                j = i - start
                batch.token[j] = tokens[i]
                batch.pos[j] = i
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = int(wanted[i])
            batch.n_tokens = stop - start
            status = self._llama.llama_decode(self._ctx, batch)
            if self._stop_error is not None:
                raise self._stop_error
            if status == _DECODE_ABORTED and self._should_stop is not None:
                raise RerankerCancelled(f"stopped while decoding tokens {start}..{stop - 1} of "
                                        f"{len(tokens)}: should_stop() answered true")
            if status != 0:
                raise RerankerError(f"llama_decode failed with status {status}")

    def _reuse_prefix(self, tokens: Sequence[int], first_output: int) -> int:
        """Keep the KV cache of the prefix this prompt shares with the previous one.

        Every prompt starts with the same system message, and the blocks of one
        query share even more; those tokens need not be decoded again. The reuse
        stops before the first output position, whose hidden state must be
        computed, and leaves at least `_MIN_SLICE` tokens to decode.
        """
        llama = self._llama
        memory = llama.llama_get_memory(self._ctx)
        shared = 0
        limit = min(len(self._cached_tokens), first_output, len(tokens) - _MIN_SLICE)
        while shared < limit and self._cached_tokens[shared] == tokens[shared]:
            shared += 1
        if shared and llama.llama_memory_seq_rm(memory, 0, shared, -1):
            return shared
        llama.llama_memory_clear(memory, True)
        return 0

    def _on_eval(self, tensor, ask, _user_data) -> bool:
        if tensor_name(tensor) != HIDDEN_STATE_NODE:
            return False if ask else True
        if ask:
            return True
        self._captured.append(copy_f32_rows(tensor))
        return False  # stop here: the vocabulary projection is not needed

    def _interrupt(self) -> None:
        self._interrupted = True  # read by the abort and progress callbacks

    def _on_abort(self, _user_data) -> bool:
        if self._interrupted:
            return True
        should_stop = self._should_stop
        if should_stop is None:
            return False
        try:
            return bool(should_stop())
        except BaseException as error:  # it cannot propagate through C: stop, raise it after
            self._stop_error = error
            return True

    def _ensure_context(self, n_tokens: int) -> None:
        if self._ctx is not None and n_tokens <= self._ctx_size:
            return
        size = min(-(-n_tokens // _CONTEXT_STEP) * _CONTEXT_STEP, self.max_context)
        self._free_context()
        self._cached_tokens = []
        llama = self._llama
        params = llama.llama_context_default_params()
        params.n_ctx = size
        params.n_batch = min(self.n_batch, size)
        params.n_ubatch = min(self.n_ubatch, params.n_batch)
        params.n_seq_max = 1
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.embeddings = False
        params.no_perf = True
        params.cb_eval = self._eval_callback
        params.cb_eval_user_data = None
        params.type_k = params.type_v = self._kv_type
        if self.flash_attention is not None:
            params.flash_attn_type = (llama.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attention
                                      else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        ctx = llama.llama_init_from_model(self._model, params)
        if not ctx:
            raise RerankerError(f"llama.cpp could not create a {size}-token context "
                                "(out of memory?)")
        self._ctx, self._ctx_size, self._ctx_ubatch = ctx, size, params.n_ubatch
        llama.llama_set_abort_callback(ctx, self._abort_callback, None)
        self._batch = llama.llama_batch_init(params.n_batch, 0, 1)

    # Each pointer is cleared before it is freed: an interrupt raised between the two (a
    # Ctrl-C during close) must cost at most a leak, never a second free from __del__.
    def _free_context(self) -> None:
        if self._batch is not None:
            batch, self._batch = self._batch, None
            self._llama.llama_batch_free(batch)
        if self._ctx is not None:
            ctx, self._ctx, self._ctx_size = self._ctx, None, 0
            self._llama.llama_free(ctx)

    def _check_open(self) -> None:
        """Called with the lock held by every call that touches llama.cpp's objects.

        `close()` takes the same lock to free them, so it waits for a running call, and
        a call after it raises here instead of using the freed model or vocabulary.
        """
        if self._model is None:
            raise RerankerClosedError(f"this LlamaEngine on {self.model_path.name} was closed "
                                      "and its llama.cpp model freed; create a new one")

    def close(self) -> None:
        """Free the context and the model once a running call has finished; idempotent."""
        with self._lock:
            self._free_context()
            if self._model is not None:
                model, self._model = self._model, None
                self._llama.llama_model_free(model)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def check_kv_cache_type(kv_cache_type: str) -> None:
    if kv_cache_type not in KV_CACHE_TYPES:
        raise ValueError(f"kv_cache_type {kv_cache_type!r} is not one of "
                         f"{', '.join(KV_CACHE_TYPES)}")


def check_positions(tokens: Sequence[int], positions: Sequence[int], max_context: int,
                    n_vocab: int) -> tuple[list[int], list[int]]:
    """The request every engine refuses alike: positions ascending, distinct and inside
    the tokens; the tokens up to the last position (all an engine computes) within the
    context and the vocabulary. Returns (those tokens, positions) as lists."""
    positions = list(positions)
    for before, p in zip([-1] + positions, positions):
        if not before < p < len(tokens):
            raise ValueError(f"position {p} is out of order or outside the {len(tokens)} "
                             "tokens; positions must be ascending and distinct")
    if not positions:
        return [], []
    tokens = list(tokens[:positions[-1] + 1])
    if len(tokens) > max_context:
        raise InputTooLongError(
            f"the prompt has {len(tokens)} tokens but the context is capped at {max_context}; "
            "use fewer or shorter documents or a smaller block size")
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:  # llama.cpp would abort the process on an out-of-range id
        raise RerankerError(f"token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})")
    return tokens, positions


def _fill(call, capacity: int, name: str) -> tuple[int, ctypes.Array]:
    """`call(capacity)` -> (n, buffer), retried once at the size llama.cpp asks for.

    llama_tokenize and llama_detokenize return -(the size needed) when the buffer is
    too small, having written only part of the answer; reading that part as the whole
    once made long documents score as "".
    """
    n, buf = call(capacity)
    if n < 0:
        n, buf = call(-n)
    if n < 0:  # the size it asked for did not fit either: never read a partial answer
        raise RerankerError(f"{name} asked for {-n} entries after being given the size "
                            "it asked for; the text cannot be converted")
    return n, buf


def _slices(start: int, stop: int, most: int) -> list[tuple[int, int]]:
    """[start, stop) as slices of `most` tokens, one micro-batch each, none below `_MIN_SLICE`.

    Each call stays within the context's batch size (llama.cpp aborts the process on a
    larger one). A last slice under `_MIN_SLICE` is made up to it from the slice before,
    so only a prompt's single slice (or a micro-batch size set below it) is shorter.
    """
    bounds = list(range(start, stop, most)) + [stop]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < _MIN_SLICE <= most:
        bounds[-2] = bounds[-1] - _MIN_SLICE
    return list(zip(bounds, bounds[1:]))
