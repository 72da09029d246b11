"""Write a random-weight jina-reranker-v3 checkpoint in the published layout.

The published weights (CC BY-NC 4.0) cannot be fetched on test machines, so the
tests and benchmarks run on checkpoints made here instead: the same config keys,
tensor names, bf16 safetensors and a tokenizer.json with the real Qwen BPE
vocabulary plus the Qwen3 added tokens and the two reranker markers. Only the
weights are random, so rankings from these checkpoints mean nothing; what they
cost to run and whether two implementations agree on them is what they test.

The Qwen BPE ranks ship offline in the `dashscope` wheel
(`dashscope/resources/qwen.tiktoken`); pass `--ranks` to use another copy.

    python scripts/make_checkpoint.py OUT_DIR --size tiny     # or python -m reranker.testing.checkpoint
    python scripts/make_checkpoint.py OUT_DIR --size full     # 0.6B, real cost
"""
from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np

# The Qwen3 added tokens in id order from 151643, then the reranker's own.
# `special` follows Qwen3's tokenizer_config: from <tool_call> to </think> the
# tokens are not special; the three reranker tokens are.
ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|score_token|>", True),
    ("<|embed_token|>", True),
    ("<|rerank_token|>", True),
]
FIRST_ADDED_ID = 151643

QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SIZES = {
    # Small enough for unit tests, but with the shapes that catch mistakes:
    # head_dim (64) differs from hidden/heads (32), grouped-query attention
    # (8 heads over 2 kv heads), rows a multiple of 256 so k-quants apply.
    "tiny": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=64, intermediate_size=512,
                 projector_size=128),
    # jina-reranker-v3 / Qwen3-0.6B: the real cost.
    "full": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                 projector_size=512),
}
VOCAB_SIZE = 151936


def find_qwen_ranks() -> Path:
    spec = importlib.util.find_spec("dashscope")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the Qwen BPE ranks were not found: `pip install dashscope` (its wheel "
            "ships dashscope/resources/qwen.tiktoken) or pass --ranks FILE"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the installed dashscope; pass --ranks FILE")
    return path


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes map to themselves."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def split_into_two(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The last merge tiktoken's BPE makes when it builds `token`.

    Byte-pair encoding restricted to ranks below the token's own ends in exactly
    two parts; merging them is the token's merge rule. One rule per token keeps
    the Hugging Face BPE identical to the tiktoken ranks.
    """
    limit = ranks[token]
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_at = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < limit and (best_rank is None or rank < best_rank):
                best_rank, best_at = rank, i
        if best_rank is None:
            break
        parts[best_at:best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} cannot be built from two lower-ranked tokens")
    return parts[0], parts[1]


def build_tokenizer_json(ranks: dict[bytes, int], merges_as_strings: bool) -> dict:
    to_unicode = byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = split_into_two(token, ranks)
            merges.append(f"{text(left)} {text(right)}" if merges_as_strings
                          else [text(left), text(right)])
    added = [
        {"id": FIRST_ADDED_ID + i, "content": content, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": special}
        for i, (content, special) in enumerate(ADDED_TOKENS)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_SPLIT_REGEX},
             "behavior": "Isolated", "invert": False},
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def tokenizer_side_files() -> dict[str, dict]:
    decoder = {
        str(FIRST_ADDED_ID + i): {"content": content, "lstrip": False, "normalized": False,
                                  "rstrip": False, "single_word": False, "special": special}
        for i, (content, special) in enumerate(ADDED_TOKENS)
    }
    return {
        "tokenizer_config.json": {
            "add_bos_token": False, "add_prefix_space": False,
            "added_tokens_decoder": decoder,
            "bos_token": None, "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>", "errors": "replace",
            "model_max_length": 131072, "pad_token": "<|endoftext|>",
            "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
        "added_tokens.json": {content: FIRST_ADDED_ID + i
                              for i, (content, _) in enumerate(ADDED_TOKENS)},
        "special_tokens_map.json": {
            "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False,
                          "rstrip": False, "single_word": False},
            "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                          "rstrip": False, "single_word": False},
        },
    }


def config_json(size: dict) -> dict:
    return {
        "architectures": ["JinaForRanking"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": size["head_dim"],
        "hidden_act": "silu",
        "hidden_size": size["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": size["intermediate_size"],
        "max_position_embeddings": 131072,
        "max_window_layers": size["num_hidden_layers"],
        "model_type": "qwen3",
        "num_attention_heads": size["num_attention_heads"],
        "num_hidden_layers": size["num_hidden_layers"],
        "num_key_value_heads": size["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB_SIZE,
    }


def tensor_shapes(size: dict) -> dict[str, tuple[int, ...]]:
    hidden, head_dim = size["hidden_size"], size["head_dim"]
    q_dim = size["num_attention_heads"] * head_dim
    kv_dim = size["num_key_value_heads"] * head_dim
    ffn, proj = size["intermediate_size"], size["projector_size"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB_SIZE, hidden)}
    for layer in range(size["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (q_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, q_dim),
            p + "self_attn.q_norm.weight": (head_dim,),
            p + "self_attn.k_norm.weight": (head_dim,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "mlp.gate_proj.weight": (ffn, hidden),
            p + "mlp.up_proj.weight": (ffn, hidden),
            p + "mlp.down_proj.weight": (hidden, ffn),
        })
    shapes["model.norm.weight"] = (hidden,)
    shapes["projector.0.weight"] = (proj, hidden)
    shapes["projector.2.weight"] = (proj, proj)
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if len(shape) == 1:
        # Norm weights away from 1.0, so a converter that drops them is caught.
        return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    fan_in = shape[1]
    scale = 1.0 if name.endswith("embed_tokens.weight") else 1.0 / np.sqrt(fan_in)
    out = np.empty(shape, dtype=np.float32)
    for start in range(0, shape[0], 8192):  # chunks keep the full-size peak low
        block = rng.standard_normal((min(8192, shape[0] - start), shape[1]), dtype=np.float32)
        out[start:start + block.shape[0]] = block * scale
    return out


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounding to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, tuple[tuple[int, ...], str, int]],
                      payload_writer) -> None:
    """Write the header, then let `payload_writer(file)` stream the data in order."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (shape, dtype, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        payload_writer(f)


DTYPES = {"bf16": ("BF16", 2), "f16": ("F16", 2), "f32": ("F32", 4)}


def encode(values: np.ndarray, dtype: str) -> bytes:
    if dtype == "bf16":
        return to_bf16_bits(values).tobytes()
    return values.astype(np.float16 if dtype == "f16" else np.float32).tobytes()


def write_weights(out: Path, size: dict, seed: int, dtype: str, shards: int) -> None:
    shapes = tensor_shapes(size)
    names = list(shapes)
    code, itemsize = DTYPES[dtype]
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    weight_map = {}
    for index, group in enumerate(groups):
        filename = (f"model-{index + 1:05d}-of-{shards:05d}.safetensors" if shards > 1
                    else "model.safetensors")
        meta = {n: (shapes[n], code, int(np.prod(shapes[n])) * itemsize) for n in group}

        def payload(f, group=group):
            for name in group:
                # One generator per tensor name: the same seed gives the same
                # weights whatever the dtype or sharding.
                rng = np.random.default_rng([seed, names.index(name)])
                f.write(encode(random_tensor(name, shapes[name], rng), dtype))

        write_safetensors(out / filename, meta, payload)
        weight_map.update({n: filename for n in group})
    if shards > 1:
        total = sum(int(np.prod(s)) * itemsize for s in shapes.values())
        index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))


def make_checkpoint(out: Path, *, size: str = "tiny", seed: int = 0, dtype: str = "bf16",
                    shards: int = 1, ranks_path: Path | None = None,
                    merges_as_strings: bool = False,
                    tokenizer_json: dict | None = None) -> Path:
    """Write a checkpoint to `out`; `tokenizer_json` reuses one already built."""
    dims = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_json is None:
        tokenizer_json = build_tokenizer_json(read_ranks(ranks_path or find_qwen_ranks()),
                                              merges_as_strings)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    for name, content in tokenizer_side_files().items():
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False))
    cfg = config_json(dims)
    cfg["torch_dtype"] = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    write_weights(out, dims, seed, dtype, shards)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the checkpoint into")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--shards", type=int, default=1, help="split the weights into N files")
    parser.add_argument("--ranks", type=Path, help="qwen.tiktoken (default: from dashscope)")
    parser.add_argument("--merges-as-strings", action="store_true",
                        help='write merges in the older "a b" form')
    args = parser.parse_args(argv)
    make_checkpoint(args.out, size=args.size, seed=args.seed, dtype=args.dtype,
                    shards=args.shards, ranks_path=args.ranks,
                    merges_as_strings=args.merges_as_strings)
    print(f"wrote a random-weight {args.size} checkpoint to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
