"""Session fixtures: generated checkpoints (real Qwen vocabulary, random weights) and
their conversions, made once per test session.

A llama.cpp kernel that crashes on this CPU (the AMX build on Intel Xeons) would kill
pytest with no report. So before any model of a weight family is loaded in-process, a
tiny model of that family is decoded once in a child process on the CPU path this run
uses; if that crashes, the tests needing the family fail with the CPU, the path and the
signal, and the rest of the suite still runs.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tests' own helpers (texts)

from reranker.testing import checkpoint as make_checkpoint  # noqa: E402


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


def pytest_configure(config):
    # doctor's verdicts of this run go to a directory of its own: the user's cache
    # neither decides the tests' CPU path nor receives what the tests record.
    os.environ["RERANKER_CACHE_DIR"] = tempfile.mkdtemp(prefix="reranker-test-cache-")


def pytest_report_header(config):
    from reranker.cpu_path import resolve_cpu_path
    from reranker.cpu_support import read_cpu_info

    cpu = read_cpu_info()
    path = resolve_cpu_path()
    return [f"cpu: {cpu.model}, AMX {'yes' if cpu.has_amx else 'no'}; "
            f"llama.cpp CPU path: {path.name} ({path.reason})"]


@pytest.fixture(scope="session")
def require_decode(tmp_path_factory):
    """require_decode(type) fails the calling test, with the reason, when llama.cpp
    crashed or failed decoding that type's weight family here in a child process."""
    from reranker.cpu_canary import FAMILIES, family_of, run_canary, write_canary_models
    from reranker.cpu_path import resolve_cpu_path
    from reranker.cpu_support import read_cpu_info

    path = resolve_cpu_path().name
    folder = tmp_path_factory.mktemp("canary")
    outcomes: dict[str, str | None] = {}

    def check(type_name: str) -> None:
        family = family_of(type_name)
        if family is None:
            return
        if family not in outcomes:
            model = write_canary_models(folder, [family])[family]
            run = run_canary(model, path)
            outcomes[family] = None if run.ok else run.detail
        if outcomes[family] is not None:
            pytest.fail(f"llama.cpp cannot decode {family} weights ({FAMILIES[family]}) on this "
                        f"machine: {outcomes[family]} on CPU {read_cpu_info().model!r} with CPU "
                        f"path {path!r}. Run `reranker-cli doctor`; see README, Supported CPUs.",
                        pytrace=False)
    return check


@pytest.fixture(scope="session")
def converted(tmp_path_factory, tiny_checkpoint, require_decode):
    """converted(type) -> path of the tiny checkpoint converted to that type (cached);
    the test fails first if this machine cannot decode that type's weight family."""
    from convert.api import convert_checkpoint

    cache: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("gguf")

    def get(type_name: str) -> Path:
        require_decode(type_name)
        if type_name not in cache:
            out = folder / f"tiny-{type_name}.gguf"
            convert_checkpoint(tiny_checkpoint, out, type_name)
            cache[type_name] = out
        return cache[type_name]
    return get


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    from reranker.testing.reference import ReferenceReranker

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


@contextlib.contextmanager
def _tmpfs(folder: Path, options: str, why: str):
    """`folder` with a tmpfs of `options` mounted on it for the block (root can mount one);
    the test is skipped where it cannot be had."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount {why} here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory this process cannot write into: its mode for a user, a read-only tmpfs
    for root (whom modes do not stop), or a skip where neither can be had."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o555)
        yield locked
        locked.chmod(0o755)
        return
    with _tmpfs(locked, "ro,size=1m", "a read-only tmpfs"):
        yield locked


@pytest.fixture
def small_disk(tmp_path):
    """A directory on a 4 MB filesystem of its own (a tmpfs), where a model does not fit;
    a skip where none can be mounted."""
    folder = tmp_path / "small"
    folder.mkdir()
    with _tmpfs(folder, "size=4m", "a small tmpfs (not root?)"):
        yield folder
