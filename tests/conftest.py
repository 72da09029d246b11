"""Session fixtures: generated checkpoints (real Qwen vocabulary, random weights) and
their conversions, made once per test session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_checkpoint  # noqa: E402  (scripts/ is not a package)


@pytest.fixture(scope="session")
def qwen_ranks():
    return make_checkpoint.read_ranks(make_checkpoint.find_qwen_ranks())


@pytest.fixture(scope="session")
def tokenizer_json(qwen_ranks):
    return make_checkpoint.build_tokenizer_json(qwen_ranks, merges_as_strings=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer_json) -> Path:
    """A tiny bf16 checkpoint in the published layout."""
    return make_checkpoint.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny",
                                           tokenizer_json=tokenizer_json)


@pytest.fixture(scope="session")
def make_tiny(tmp_path_factory, tokenizer_json):
    """Make a tiny checkpoint variant (dtype, shards, seed...) in a fresh directory."""
    def make(**options) -> Path:
        out = tmp_path_factory.mktemp("variant") / "ckpt"
        return make_checkpoint.make_checkpoint(out, tokenizer_json=tokenizer_json, **options)
    return make


@pytest.fixture(scope="session")
def converted(tmp_path_factory, tiny_checkpoint):
    """converted(type) -> path of the tiny checkpoint converted to that type (cached)."""
    from convert.api import convert_checkpoint

    cache: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("gguf")

    def get(type_name: str) -> Path:
        if type_name not in cache:
            out = folder / f"tiny-{type_name}.gguf"
            convert_checkpoint(tiny_checkpoint, out, type_name)
            cache[type_name] = out
        return cache[type_name]
    return get


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    from reference import ReferenceReranker

    return ReferenceReranker(tiny_checkpoint)


@pytest.fixture(scope="session")
def ranker_for(converted):
    """ranker_for(type) -> a Reranker on the tiny model of that type (one per type)."""
    from reranker import Reranker

    open_rankers: dict[str, Reranker] = {}

    def get(type_name: str) -> Reranker:
        if type_name not in open_rankers:
            open_rankers[type_name] = Reranker(converted(type_name), n_threads=2)
        return open_rankers[type_name]
    yield get
    for ranker in open_rankers.values():
        ranker.close()
