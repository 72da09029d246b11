"""The generated checkpoints have the published layout and the real Qwen tokenizer."""
from __future__ import annotations

import json

import pytest
import tiktoken
from tokenizers import Tokenizer

from reranker.testing import checkpoint as make_checkpoint
from reranker.safetensors_file import read_header
from texts import MULTILINGUAL


def test_layout_matches_the_published_checkpoint(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "added_tokens.json", "special_tokens_map.json"} <= names
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["JinaForRanking"]
    assert config["model_type"] == "qwen3" and config["tie_word_embeddings"] is True
    assert config["head_dim"] != config["hidden_size"] // config["num_attention_heads"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]
    tensors = read_header(tiny_checkpoint / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {"BF16"}
    assert "lm_head.weight" not in tensors
    assert tensors["projector.0.weight"].shape[1] == config["hidden_size"]
    assert tensors["model.embed_tokens.weight"].shape[0] == config["vocab_size"] > 151672


def test_added_tokens_have_the_published_ids(tiny_checkpoint):
    added = json.loads((tiny_checkpoint / "added_tokens.json").read_text())
    assert added["<|embed_token|>"] == 151670
    assert added["<|rerank_token|>"] == 151671
    assert added["<|im_start|>"] == 151644


def test_hf_tokenizer_equals_tiktoken_on_the_qwen_ranks(tiny_checkpoint, qwen_ranks):
    assert len(qwen_ranks) == 151643
    hf = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    reference = tiktoken.Encoding("qwen", pat_str=make_checkpoint.QWEN_SPLIT_REGEX,
                                  mergeable_ranks=qwen_ranks, special_tokens={})
    for text in MULTILINGUAL:
        # tiktoken does not normalize; the HF tokenizer applies NFC first.
        import unicodedata
        assert hf.encode(text).ids == reference.encode(unicodedata.normalize("NFC", text)), text


@pytest.mark.parametrize("as_strings", [False, True])
def test_merge_forms_tokenize_alike(qwen_ranks, tokenizer_json, tmp_path, as_strings):
    built = make_checkpoint.build_tokenizer_json(qwen_ranks, merges_as_strings=as_strings)
    first = built["model"]["merges"][0]
    assert isinstance(first, str) if as_strings else isinstance(first, list)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(built, ensure_ascii=False))
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    a, b = Tokenizer.from_file(str(path)), Tokenizer.from_file(str(baseline))
    for text in MULTILINGUAL:
        assert a.encode(text).ids == b.encode(text).ids
