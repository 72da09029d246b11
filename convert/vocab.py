"""tokenizer.json (Qwen2 byte-level BPE) to the vocabulary llama.cpp reads from GGUF."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from gguf import TokenType

from convert.errors import CheckpointError
from reranker.model_format import DOC_MARKER, QUERY_MARKER

# The Qwen2 split pattern; llama.cpp implements it as the "qwen2" pre-tokenizer.
# Any other pattern would tokenize differently there, so it is refused.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CONTROL_LOOKING = re.compile(r"^<\|.*\|>$")


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # "eos", "pad", "bos" -> id


def _split_pattern(pre_tokenizer) -> str | None:
    # Anything but the expected nesting of objects has no pattern (and is refused as such).
    if not isinstance(pre_tokenizer, dict):
        return None
    steps = pre_tokenizer.get("pretokenizers", [pre_tokenizer])
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict) and step.get("type") == "Split":
            pattern = step.get("pattern")
            return pattern.get("Regex") if isinstance(pattern, dict) else None
    return None


def _token_id(value, path: Path, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{path}: {what} has id {json.dumps(value)}; expected a "
                              "non-negative integer")
    return value


def _excerpt(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."


def _merges(value, path: Path) -> list[str]:
    # Newer tokenizers store pairs, older ones "left right" strings. Anything else was
    # written as it came (a dict as its keys, numbers that llama.cpp cannot load).
    if not isinstance(value, list):
        raise CheckpointError(f"{path}: model.merges is {_excerpt(value)}; expected a list of "
                              'merges, each "left right" or ["left", "right"]')
    merges = []
    for i, merge in enumerate(value):
        if isinstance(merge, list) and len(merge) == 2 and all(isinstance(m, str) for m in merge):
            merges.append(" ".join(merge))
        elif isinstance(merge, str):
            merges.append(merge)
        else:
            raise CheckpointError(f"{path}: model.merges[{i}] is {_excerpt(merge)}; expected "
                                  '"left right" or ["left", "right"]')
    return merges


def read_vocabulary(path: Path, vocab_size: int) -> Vocabulary:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise CheckpointError(f"{path}: model type {model.get('type')!r}; expected a BPE tokenizer")
    pattern = _split_pattern(data.get("pre_tokenizer"))
    if pattern != QWEN2_SPLIT_PATTERN:
        raise CheckpointError(
            f"{path}: the pre-tokenizer split pattern is not Qwen2's; llama.cpp would "
            "tokenize this model differently")

    by_id: dict[int, tuple[str, int]] = {}
    for text, token_id in model["vocab"].items():
        by_id[_token_id(token_id, path, f"token {text!r}")] = (text, TokenType.NORMAL)
    added_ids: dict[str, int] = {}
    added_tokens = data.get("added_tokens", [])
    if not isinstance(added_tokens, list):
        raise CheckpointError(f"{path}: added_tokens is not a list")
    for i, added in enumerate(added_tokens):
        if not isinstance(added, dict) or not isinstance(added.get("content"), str):
            raise CheckpointError(f'{path}: added_tokens[{i}] is not an object with a string '
                                  '"content" and an integer "id"')
        text = added["content"]
        token_id = _token_id(added.get("id"), path, f"added token {text!r}")
        control = added.get("special", False) or _CONTROL_LOOKING.match(text)
        by_id[token_id] = (text, TokenType.CONTROL if control else TokenType.USER_DEFINED)
        added_ids[text] = token_id
    for marker in (DOC_MARKER, QUERY_MARKER):
        if marker not in added_ids:
            raise CheckpointError(
                f"{path}: the added tokens lack {marker}; this is not a jina-reranker-v3 tokenizer")
    if max(by_id) >= vocab_size:
        raise CheckpointError(
            f"{path}: token id {max(by_id)} is beyond the model's vocab_size {vocab_size}")

    tokens, types = [], []
    for token_id in range(vocab_size):
        # Embedding rows past the real tokens get placeholders llama.cpp never emits.
        text, kind = by_id.get(token_id, (f"[PAD{token_id}]", TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))

    merges = _merges(model.get("merges", []), path)

    special_ids = {}
    for role, text in (("eos", "<|im_end|>"), ("pad", "<|endoftext|>"), ("bos", "<|endoftext|>")):
        if text in added_ids:
            special_ids[role] = added_ids[text]
    return Vocabulary(tokens, types, merges, special_ids)
