"""Proof that a CPU path decodes: a tiny model per weight family, run in a child process.

A broken llama.cpp kernel does not raise, it kills the process (the AMX crash is a
segfault on the first multi-token decode). So each check runs in a child process and
its death becomes a line of the report: ``q8_0: crashed (signal 11, SIGSEGV)``. The
models are written here (random weights, a byte vocabulary, shapes every CPU kernel
family takes: rows of 256 and 512 values), so no file or download is needed.

Run as ``python -m reranker.cpu_canary MODEL PATH``: decodes one prompt of several
micro-batches' worth of tokens on that path and prints the hidden states as JSON.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# family -> the file type that stands for it. q4_k_m mixes q4_K and q6_K tensors; q4_0
# stands for the legacy types. ggml's AMX kernels take q8_0, q4_K/q5_K/q6_K, iq4_xs and
# q4_0/q4_1; its repacked layout takes q4_0, q4_K, iq4_nl and others.
FAMILIES = {"float": "f16", "q8_0": "q8_0", "k-quant": "q4_k_m", "iq4_nl": "iq4_nl",
            "iq4_xs": "iq4_xs", "legacy": "q4_0"}
_HIDDEN, _FFN, _HEADS, _KV_HEADS, _HEAD_DIM, _LAYERS, _VOCAB = 256, 512, 4, 2, 64, 2, 320
_PROMPT_TOKENS = 160  # more than one token: a one-token decode takes other kernels
_OUTPUT_POSITIONS = (40, 100, 159)
# A path's hidden states must point the same way as the plain path's (same weights;
# only the kernels and their activation rounding differ).
MIN_COSINE = 0.99


@dataclass(frozen=True)
class CanaryRun:
    ok: bool
    detail: str  # "ok", "crashed (signal 11, SIGSEGV)", "failed: ...", "hung ..."
    seconds: float
    states: np.ndarray | None = field(default=None, repr=False)


def _byte_tokens() -> list[str]:
    """GPT-2's byte-to-character mapping: the 256 tokens every byte-level BPE starts with."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _write_model(path: Path, weights: str, seed: int = 0) -> None:
    """A two-layer qwen3 model with random weights; matrices in `weights` ("f16" or "q8_0",
    the types written without llama.cpp's quantizer), norms in f32 as llama.cpp expects."""
    import gguf

    matrix_type = {"f16": gguf.GGMLQuantizationType.F16,
                   "q8_0": gguf.GGMLQuantizationType.Q8_0}[weights]
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[weights]
    rng = np.random.default_rng(seed)  # the same weights in every type
    writer = gguf.GGUFWriter(path, "qwen3")
    writer.add_name("reranker cpu canary")
    writer.add_file_type(int(file_type))
    if weights == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(512)
    writer.add_embedding_length(_HIDDEN)
    writer.add_block_count(_LAYERS)
    writer.add_feed_forward_length(_FFN)
    writer.add_head_count(_HEADS)
    writer.add_head_count_kv(_KV_HEADS)
    writer.add_key_length(_HEAD_DIM)
    writer.add_value_length(_HEAD_DIM)
    writer.add_rope_freq_base(1e6)
    writer.add_layer_norm_rms_eps(1e-6)
    tokens = _byte_tokens() + ["Ġt"]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), _VOCAB)]
    types = [int(gguf.TokenType.NORMAL)] * 257 + [int(gguf.TokenType.UNUSED)] * (_VOCAB - 257)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["Ġ t"])
    writer.add_add_bos_token(False)

    def matrix(name: str, rows: int, cols: int) -> None:
        values = (rng.standard_normal((rows, cols)) * cols ** -0.5).astype(np.float32)
        if matrix_type == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, matrix_type),
                              raw_dtype=matrix_type)

    def norm(name: str, size: int) -> None:
        writer.add_tensor(name, (1 + 0.1 * rng.standard_normal(size)).astype(np.float32))

    matrix("token_embd.weight", _VOCAB, _HIDDEN)
    for i in range(_LAYERS):
        block = f"blk.{i}."
        norm(block + "attn_norm.weight", _HIDDEN)
        matrix(block + "attn_q.weight", _HEADS * _HEAD_DIM, _HIDDEN)
        matrix(block + "attn_k.weight", _KV_HEADS * _HEAD_DIM, _HIDDEN)
        matrix(block + "attn_v.weight", _KV_HEADS * _HEAD_DIM, _HIDDEN)
        matrix(block + "attn_output.weight", _HIDDEN, _HEADS * _HEAD_DIM)
        norm(block + "attn_q_norm.weight", _HEAD_DIM)
        norm(block + "attn_k_norm.weight", _HEAD_DIM)
        norm(block + "ffn_norm.weight", _HIDDEN)
        matrix(block + "ffn_gate.weight", _FFN, _HIDDEN)
        matrix(block + "ffn_up.weight", _FFN, _HIDDEN)
        matrix(block + "ffn_down.weight", _HIDDEN, _FFN)
    norm("output_norm.weight", _HIDDEN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def family_of(type_name: str) -> str | None:
    """The weight family a file type belongs to (None: not one the checks cover)."""
    name = type_name.lower()
    if name in ("f32", "f16", "bf16"):
        return "float"
    if name == "q8_0":
        return "q8_0"
    if "_k" in name:
        return "k-quant"
    if name in ("iq4_nl", "iq4_xs"):
        return name
    if name in ("q4_0", "q4_1", "q5_0", "q5_1"):
        return "legacy"
    return None


def write_canary_models(folder: Path, families: Sequence[str] = tuple(FAMILIES)) -> dict[str, Path]:
    """One tiny model file per weight family in `folder`: family -> path."""
    from convert.file_types import file_type
    from convert.quantize import run_llama_quantizer

    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "canary-f16.gguf"
    if not base.exists():
        _write_model(base, "f16")
    paths = {}
    for family in families:
        type_name = FAMILIES[family]
        path = folder / f"canary-{type_name}.gguf"
        if not path.exists():
            if type_name == "q8_0":
                _write_model(path, "q8_0")
            else:  # the k-quant, iq4 and legacy types come from llama.cpp's own quantizer
                run_llama_quantizer(base, path, file_type(type_name), n_threads=1)
        paths[family] = path
    return paths


# -- running them ----------------------------------------------------------------------
Runner = Callable[[Path, str], CanaryRun]


def child_command(model: Path, path: str) -> list[str]:
    return [sys.executable, "-m", "reranker.cpu_canary", str(model), path]


def run_canary(model: Path, path: str, *, timeout: float = 120,
               command: Sequence[str] | None = None) -> CanaryRun:
    """Decode `model` on CPU path `path` in a child process; a crash is a result."""
    started = time.perf_counter()
    try:
        done = subprocess.run(list(command or child_command(model, path)), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return CanaryRun(False, f"hung (no answer in {timeout:g} s)", timeout)
    seconds = time.perf_counter() - started
    if done.returncode < 0:
        number = -done.returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        return CanaryRun(False, f"crashed (signal {number}, {name})", seconds)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return CanaryRun(False, f"failed: {last}", seconds)
    try:
        states = np.asarray(json.loads(done.stdout)["states"], dtype=np.float32)
    except (ValueError, KeyError, TypeError):
        return CanaryRun(False, "failed: the child printed no hidden states", seconds)
    if not np.isfinite(states).all():
        return CanaryRun(False, "wrong results (NaN or infinity in the hidden states)", seconds)
    return CanaryRun(True, "ok", seconds, states)


def run_families(models: dict[str, Path], path: str,
                 runner: Runner = run_canary) -> dict[str, CanaryRun]:
    return {family: runner(model, path) for family, model in models.items()}


def compare_with_reference(runs: dict[str, CanaryRun],
                           reference: dict[str, CanaryRun]) -> dict[str, CanaryRun]:
    """Mark runs whose hidden states point elsewhere than the reference path's."""
    checked = {}
    for family, run in runs.items():
        base = reference.get(family)
        if run.ok and base is not None and base.ok and run.states.shape == base.states.shape:
            dots = (run.states * base.states).sum(axis=1)
            norms = np.linalg.norm(run.states, axis=1) * np.linalg.norm(base.states, axis=1)
            worst = float(np.min(dots / np.maximum(norms, 1e-30)))
            if worst < MIN_COSINE:
                run = CanaryRun(False, f"wrong results (cosine {worst:.3f} against plain)",
                                run.seconds, run.states)
        checked[family] = run
    return checked


def first_failure(runs: dict[str, CanaryRun]) -> str | None:
    for family, run in runs.items():
        if not run.ok:
            return f"{family}: {run.detail}"
    return None


def _child(model: str, path: str) -> None:
    from reranker.engine import LlamaEngine

    engine = LlamaEngine(model, n_threads=2, cpu_path=path, n_ubatch=64)
    try:
        tokens = [(7 * i + 3) % 256 for i in range(_PROMPT_TOKENS)]
        states = engine.hidden_states(tokens, _OUTPUT_POSITIONS)
    finally:
        engine.close()
    print(json.dumps({"path": engine.cpu_path.name, "states": states.tolist()}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m reranker.cpu_canary MODEL PATH")
    _child(sys.argv[1], sys.argv[2])
