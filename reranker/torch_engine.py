"""A PyTorch engine: the Qwen3 backbone of a reranker GGUF, run to its final norm.

It answers what `LlamaEngine` answers (final hidden states at given positions of one
sequence) from the same GGUF file, for machines where PyTorch's CPU kernels (oneDNN's
AMX bf16 matrix units on recent Xeons) beat llama.cpp's. Tokenization stays with
llama.cpp (the model's vocabulary loaded alone, no weights), so both engines read
exactly the same tokens; only the transformer runs here.

The backbone is written out with PyTorch operations rather than borrowed from
transformers, so `reranker[torch]` needs torch alone: RMSNorm computed in float32,
Qwen3's per-head RMSNorm on queries and keys, rotary embedding in the NeoX (half-split)
layout with the GGUF's rope base, grouped-query attention through
`scaled_dot_product_attention`, a SwiGLU feed-forward. This project's converter (like
llama.cpp's for qwen3) writes Q and K unpermuted, which the parity test checks.
Nothing after the last requested position is computed, and in the last layer only the
requested rows go through attention's output and the feed-forward.

Threads: PyTorch's intra-op thread count is process-wide (`torch.set_num_threads`).
Each call sets it for its own duration and puts the previous value back, under one
lock shared by every TorchEngine, so two engines never run with each other's
setting; PyTorch work elsewhere in the process that runs during a call sees the
call's count. That is the limitation of sharing a process with PyTorch.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gguf import LlamaFileType

from reranker.cpu_path import CpuPath
from reranker.cpu_support import read_cpu_info
from reranker.engine import LlamaEngine, check_positions, default_thread_count
from reranker.errors import ModelFileError, RerankerCancelled, RerankerClosedError
from reranker.gguf_metadata import GGUFMetadata, read_metadata
from reranker.model_format import ARCHITECTURE, Keys
from reranker.torch_weights import GGUFWeights, Q8Matrix, QuantizedRows

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# CPU flags of native bf16 matrix products, which oneDNN (PyTorch's CPU matmuls) uses.
# Without them bf16 products are emulated: 5.9x slower than float32 on an AVX2 EPYC.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# torch.set_num_threads is process-wide: calls that change it take turns.
_THREADS_LOCK = threading.Lock()


def choose_dtype(all_f32_file: bool, cpu_flags: frozenset[str]) -> tuple[str, str]:
    """The weights' dtype for this file on this CPU, and why.

    bf16 halves the weights' memory and runs on AMX or AVX512_BF16 at about twice the
    float32 rate; on other CPUs float32 is the fast choice. An all-f32 file stays float32,
    chosen for exactness as llama.cpp's f32 KV cache is.
    """
    if all_f32_file:
        return "float32", "an all-f32 file runs in float32, for exactness"
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in cpu_flags]
    if native:
        return "bfloat16", f"this CPU multiplies bf16 natively ({native[0]})"
    return "float32", (f"this CPU has no native bf16 products ({' or '.join(NATIVE_BF16_FLAGS)}), "
                       "where float32 is faster")


@dataclass(frozen=True)
class BackboneShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    rope_base: float
    eps: float
    context_length: int

    @classmethod
    def from_metadata(cls, meta: GGUFMetadata, vocab: int) -> BackboneShape:
        def value(name: str, default=None):
            found = meta.get(f"{ARCHITECTURE}.{name}", default)
            if found is None or isinstance(found, bool) or not isinstance(found, (int, float)):
                raise ModelFileError(f"{meta.path}: metadata {ARCHITECTURE}.{name} is "
                                     f"{'missing' if found is None else repr(found)}; "
                                     "expected a number (the file is damaged or not a qwen3 "
                                     "backbone)")
            return found
        heads = int(value("attention.head_count"))
        hidden = int(value("embedding_length"))
        return cls(layers=int(value("block_count")), hidden=hidden, heads=heads,
                   kv_heads=int(value("attention.head_count_kv", heads)),
                   head_dim=int(value("attention.key_length", hidden // heads)),
                   ffn=int(value("feed_forward_length")), vocab=vocab,
                   rope_base=float(value("rope.freq_base", 10000.0)),
                   eps=float(value("attention.layer_norm_rms_epsilon", 1e-6)),
                   context_length=int(value("context_length")))


# A weight matrix as kept between calls: a tensor, or q8_0 as stored (float32 compute).
Matrix = torch.Tensor | Q8Matrix


@dataclass
class _Layer:
    attn_norm: torch.Tensor
    q: Matrix
    k: Matrix
    v: Matrix
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    out: Matrix
    ffn_norm: torch.Tensor
    gate: Matrix
    up: Matrix
    down: Matrix


class TorchEngine:
    """The backbone in PyTorch; `hidden_states` calls are serialized by a lock."""

    name = "torch"

    def __init__(self, model_path: str | Path, *, n_threads: int | None = None,
                 max_context: int | None = None, dtype: str | None = None,
                 vocabulary: LlamaEngine | None = None):
        """`dtype` None: `choose_dtype` for this file on this CPU. `vocabulary`: a llama.cpp
        engine on the same file to tokenize with (the caller keeps and closes it); None
        loads the vocabulary alone."""
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        self.model_path = Path(model_path)
        self.n_threads = n_threads or default_thread_count()
        self.reused_tokens = 0  # no KV cache is kept between calls
        self.decoded_tokens = 0
        self._lock = threading.Lock()
        # llama.cpp keeps the tokenizer: the vocabulary alone, no weights, no context.
        self._owns_vocabulary = vocabulary is None
        self._vocabulary = vocabulary or LlamaEngine(self.model_path, vocab_only=True)
        self.cpu_path = CpuPath("none", "torch engine: llama.cpp only tokenizes")
        meta = read_metadata(self.model_path)
        file_type = meta.get(Keys.FILE_TYPE)
        if dtype is None:
            dtype, self.dtype_reason = choose_dtype(file_type == LlamaFileType.ALL_F32,
                                                    read_cpu_info().flags)
        else:
            self.dtype_reason = "asked for"
        self.dtype_name, self.dtype = dtype, DTYPES[dtype]
        self.storage_dtype = _storage_dtype(self.dtype, file_type)
        self.shape = BackboneShape.from_metadata(meta, self._vocabulary.n_vocab)
        self.hidden_size = self.shape.hidden
        self.n_vocab = self._vocabulary.n_vocab
        self.max_context = min(max_context or self.shape.context_length,
                               self.shape.context_length)
        self._embedding, self._layers, self._final_norm = _load(GGUFWeights(meta), self.shape,
                                                                 self.storage_dtype)
        half = torch.arange(0, self.shape.head_dim, 2, dtype=torch.float64) / self.shape.head_dim
        self._inv_freq = (1.0 / self.shape.rope_base ** half).float()
        logger.info("torch engine: %s compute (%s), matrices kept as %s, %d threads", dtype,
                    self.dtype_reason, _kept_as(self._layers), self.n_threads)

    # -- tokens: llama.cpp's, as for the llama.cpp engine ---------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self._vocabulary.tokenize(text)

    def detokenize(self, tokens: Sequence[int], **options) -> str:
        # Options pass through: the llama.cpp engine's own keywords stay the contract.
        return self._vocabulary.detokenize(tokens, **options)

    def special_token_id(self, text: str) -> int:
        return self._vocabulary.special_token_id(text)

    # -- hidden states -----------------------------------------------------------------
    def hidden_states(self, tokens: Sequence[int], positions: Sequence[int],
                      should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """Final hidden states at `positions` (ascending) of one sequence, as float32.

        Tokens after the last position are not computed. `should_stop` is asked
        between layers; once it answers true the call raises RerankerCancelled.
        """
        tokens, positions = check_positions(tokens, positions, self.max_context, self.n_vocab)
        if not positions:
            return np.empty((0, self.hidden_size), dtype=np.float32)
        with self._lock:
            self._check_open()
            with _threads(self.n_threads), torch.inference_mode():
                states = self._forward(tokens, positions, should_stop)
            self.decoded_tokens = len(tokens)
        return states.float().numpy()

    def _forward(self, tokens: list[int], positions: list[int],
                 should_stop: Callable[[], bool] | None) -> torch.Tensor:
        s = self.shape
        ids = np.asarray(tokens, dtype=np.int64)
        unique, inverse = np.unique(ids, return_inverse=True)
        x = self._embedding.rows(unique, self.dtype)[torch.from_numpy(inverse)]
        cos, sin = self._rope(len(tokens))
        wanted = torch.tensor(positions)
        for number, layer in enumerate(self._layers):
            if should_stop is not None and should_stop():
                raise RerankerCancelled(f"stopped before layer {number} of {s.layers}: "
                                        "should_stop() answered true")
            last = number == s.layers - 1
            x = self._layer(layer, x, cos, sin, wanted if last else None)
        return _rms_norm(x, self._final_norm, s.eps)

    def _layer(self, w: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               rows: torch.Tensor | None) -> torch.Tensor:
        """One decoder layer; with `rows`, only those rows' outputs (the last layer)."""
        s = self.shape
        n = x.shape[0]

        def linear(inputs: torch.Tensor, matrix: Matrix) -> torch.Tensor:
            # Widened from the storage dtype here, one matrix at a time (a no-op when equal).
            widened = (matrix.widened(self.dtype) if isinstance(matrix, Q8Matrix)
                       else matrix.to(self.dtype))
            return F.linear(inputs, widened)

        h = _rms_norm(x, w.attn_norm, s.eps)
        queries_in = h if rows is None else h[rows]
        q = linear(queries_in, w.q).view(-1, s.heads, s.head_dim)
        k = linear(h, w.k).view(n, s.kv_heads, s.head_dim)
        v = linear(h, w.v).view(n, s.kv_heads, s.head_dim)
        q_positions = slice(None) if rows is None else rows
        q = _rotate(_rms_norm(q, w.q_norm, s.eps), cos[q_positions], sin[q_positions])
        k = _rotate(_rms_norm(k, w.k_norm, s.eps), cos, sin)
        # [1, heads, tokens, head_dim]: PyTorch's CPU flash-attention kernel takes only
        # 4-D inputs; 3-D ones fall back to the math kernel, 3.4x slower at 800 tokens.
        # enable_gqa reads each key/value head for its group of query heads, no copies.
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        if rows is None:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # a few query rows at arbitrary positions: causal by an explicit mask
            mask = rows[:, None] >= torch.arange(n)[None, :]
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        attended = attended[0].transpose(0, 1).reshape(-1, s.heads * s.head_dim)
        x = (x if rows is None else x[rows]) + linear(attended, w.out)
        h = _rms_norm(x, w.ffn_norm, s.eps)
        return x + linear(F.silu(linear(h, w.gate)) * linear(h, w.up), w.down)

    def _rope(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        angles = torch.outer(torch.arange(n, dtype=torch.float32), self._inv_freq)
        angles = torch.cat([angles, angles], dim=-1)[:, None, :]  # [tokens, 1, head_dim]
        return angles.cos().to(self.dtype), angles.sin().to(self.dtype)

    def reset_cache(self) -> None:
        """Nothing to forget: no KV cache is kept between calls (the llama.cpp engine's op)."""
        with self._lock:
            self._check_open()

    # -- lifetime -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._layers is None:
            raise RerankerClosedError(f"this TorchEngine on {self.model_path.name} was closed; "
                                      "create a new one")

    def close(self) -> None:
        """Drop the weights once a running call has finished; idempotent."""
        with self._lock:
            self._layers = None
            self._embedding = self._final_norm = None
            if self._owns_vocabulary:
                self._vocabulary.close()


def _storage_dtype(compute: torch.dtype, file_type: int | None) -> torch.dtype:
    """The dtype the matrices are kept in between calls.

    The compute dtype, except float32 compute of a file that is not all-f32: its matrices
    are kept in bf16 (a bf16 file, exactly) or float16 (a k-quant's values round by at
    most 2^-11 of themselves, far under the type's own step; q8_0 matrices are kept as
    stored instead, see `_load`) and widened a matrix at a time, which halves the engine's
    memory for about 35 ms a layer per call (2 threads, AVX2).
    """
    if compute != torch.float32 or file_type == LlamaFileType.ALL_F32:
        return compute
    return torch.bfloat16 if file_type == LlamaFileType.MOSTLY_BF16 else torch.float16


def _load(weights: GGUFWeights, s: BackboneShape,
          dtype: torch.dtype) -> tuple[QuantizedRows, list[_Layer], torch.Tensor]:
    embedding = weights.quantized_rows("token_embd.weight", (s.vocab, s.hidden))
    layers = []
    for i in range(s.layers):
        def get(part: str, shape: tuple[int, ...], norm: bool = False) -> Matrix:
            name = f"blk.{i}.{part}.weight"
            if norm:  # norm weights stay float32: they scale float32 normalized values
                return weights.tensor(name, torch.float32, shape)
            # Where matrices are widened per call anyway (float16 storage), a q8_0 one is
            # kept as stored: half float16's memory, and its values exact.
            kept = weights.q8_matrix(name, shape) if dtype == torch.float16 else None
            return kept if kept is not None else weights.tensor(name, dtype, shape)
        layers.append(_Layer(
            attn_norm=get("attn_norm", (s.hidden,), True),
            q=get("attn_q", (s.heads * s.head_dim, s.hidden)),
            k=get("attn_k", (s.kv_heads * s.head_dim, s.hidden)),
            v=get("attn_v", (s.kv_heads * s.head_dim, s.hidden)),
            q_norm=get("attn_q_norm", (s.head_dim,), True),
            k_norm=get("attn_k_norm", (s.head_dim,), True),
            out=get("attn_output", (s.hidden, s.heads * s.head_dim)),
            ffn_norm=get("ffn_norm", (s.hidden,), True),
            gate=get("ffn_gate", (s.ffn, s.hidden)),
            up=get("ffn_up", (s.ffn, s.hidden)),
            down=get("ffn_down", (s.hidden, s.ffn))))
    final_norm = weights.tensor("output_norm.weight", torch.float32, (s.hidden,))
    return embedding, layers, final_norm


def _kept_as(layers: list[_Layer]) -> str:
    """How the matrices are kept, for the log: "float16", "q8_0 (int8, as stored)"..."""
    kinds = {"q8_0 (int8, as stored)" if isinstance(matrix, Q8Matrix)
             else str(matrix.dtype).removeprefix("torch.")
             for layer in layers for matrix in (layer.q, layer.k, layer.v, layer.out,
                                                layer.gate, layer.up, layer.down)}
    return ", ".join(sorted(kinds))


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32 (as transformers' Qwen3RMSNorm), back in x's dtype."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * x32).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, NeoX layout: the head's first half rotates with its second."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to `n` for the duration, then put back."""
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)
