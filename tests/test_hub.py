"""Hub ids through huggingface-hub's offline cache: `convert` and `pull`, as real processes.

The cache is laid out the way huggingface-hub writes it (models--org--name with
refs/ and snapshots/), filled with a generated checkpoint; HF_HUB_OFFLINE=1 makes
any attempt to reach the network an error, so these tests prove the offline path.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from convert.errors import CheckpointError, ConversionError
from reranker.gguf_metadata import read_metadata
from reranker.model_format import Keys

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for name, source in files.items():
        os.link(source, snapshot / name)
    return snapshot


def run_cli(args, tmp_path, cache):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache),
               RERANKER_MODELS_DIR=str(tmp_path / "models"))
    return subprocess.run([sys.executable, "-m", "reranker.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.fixture
def cache_with_checkpoint(tmp_path, tiny_checkpoint):
    cache = tmp_path / "hub"
    fill_cache(cache, "jinaai/jina-reranker-v3",
               {p.name: p for p in tiny_checkpoint.iterdir() if p.is_file()})
    return cache


def test_convert_from_a_hub_id_offline(tmp_path, cache_with_checkpoint):
    out = tmp_path / "out.gguf"
    done = run_cli(["convert", "jinaai/jina-reranker-v3", "-o", str(out), "-t", "q8_0"],
                   tmp_path, cache_with_checkpoint)
    assert done.returncode == 0, done.stderr
    meta = read_metadata(out)
    assert meta.get(Keys.SOURCE) == "jinaai/jina-reranker-v3"
    assert meta.get(Keys.SOURCE_REVISION) == COMMIT


def test_a_repo_missing_from_the_cache_fails_fast_offline(tmp_path, cache_with_checkpoint):
    done = run_cli(["convert", "someone/absent-model", "-o", str(tmp_path / "x.gguf")],
                   tmp_path, cache_with_checkpoint)
    assert done.returncode == 1
    assert "not in the local Hugging Face cache" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_pull_converts_and_records_checksums(tmp_path, cache_with_checkpoint):
    # q8_0 is written directly: pull is tested without llama.cpp's quantizer (slow, and
    # tested in test_convert).
    done = run_cli(["pull", "--type", "q8_0"], tmp_path, cache_with_checkpoint)
    assert done.returncode == 0, done.stderr
    model = tmp_path / "models" / "jina-reranker-v3-q8_0.gguf"
    sums = (tmp_path / "models" / "SHA256SUMS").read_text().splitlines()
    assert sums == [f"{hashlib.sha256(model.read_bytes()).hexdigest()}  {model.name}"]
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=model.parent,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_pull_of_a_published_gguf_repo(tmp_path, converted):
    import numpy as np
    from safetensors.numpy import save_file

    projector = tmp_path / "projector.safetensors"
    save_file({"projector.0.weight": np.ones((8, 256), np.float32),
               "projector.2.weight": np.ones((8, 8), np.float32)}, str(projector))
    cache = tmp_path / "hub"
    fill_cache(cache, "jinaai/jina-reranker-v3-GGUF",
               {"jina-reranker-v3-Q8_0.gguf": converted("q8_0"),
                "projector.safetensors": projector})
    done = run_cli(["pull", "jinaai/jina-reranker-v3-GGUF", "--file", "jina-reranker-v3-Q8_0.gguf"],
                   tmp_path, cache)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "models" / "jina-reranker-v3-GGUF"
    assert (folder / "jina-reranker-v3-Q8_0.gguf").read_bytes() == converted("q8_0").read_bytes()
    assert not (folder / "projector.safetensors").is_symlink()
    names = [line.split("  ")[1] for line in
             (tmp_path / "models" / "SHA256SUMS").read_text().splitlines()]
    assert names == ["jina-reranker-v3-GGUF/jina-reranker-v3-Q8_0.gguf",
                     "jina-reranker-v3-GGUF/projector.safetensors"]
    again = run_cli(["pull", "jinaai/jina-reranker-v3-GGUF", "--file",
                     "jina-reranker-v3-Q8_0.gguf"], tmp_path, cache)
    assert again.returncode == 1 and "--force" in again.stderr
    described = run_cli(["inspect", "--json"], tmp_path, cache)  # the pulled file, by default
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["file"] == str(folder / "jina-reranker-v3-Q8_0.gguf")


def test_pull_file_from_a_local_directory(tmp_path, converted):
    """A published GGUF folder already on disk (copied from a connected machine)."""
    from safetensors.numpy import save_file
    import numpy as np

    published = tmp_path / "downloads" / "jr3-gguf"
    published.mkdir(parents=True)
    os.link(converted("q8_0"), published / "model-q8_0.gguf")
    save_file({"projector.0.weight": np.ones((8, 256), np.float32),
               "projector.2.weight": np.ones((8, 8), np.float32)},
              str(published / "projector.safetensors"))
    done = run_cli(["pull", "downloads/jr3-gguf/", "--file", "model-q8_0.gguf"], tmp_path,
                   tmp_path / "hub")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "models" / "jr3-gguf"
    assert sorted(p.name for p in folder.iterdir()) == ["model-q8_0.gguf",
                                                        "projector.safetensors"]
    missing = run_cli(["pull", "downloads/jr3-gguf", "--file", "other.gguf"], tmp_path,
                      tmp_path / "hub")
    assert missing.returncode == 1 and "other.gguf does not exist" in missing.stderr


@pytest.mark.parametrize("args", [["../nowhere"], ["../nowhere", "--file", "x.gguf"],
                                  ["owner/repo", "--file", "x.gguf"]])
def test_a_failed_pull_leaves_no_folder_and_says_why(tmp_path, args):
    done = run_cli(["pull", *args], tmp_path, tmp_path / "hub")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    if args[0] == "../nowhere":  # a simple "names and a slash" pattern took it for a repo id
        assert "neither an existing directory nor a Hub repo id" in done.stderr
    else:
        assert "not in the local Hugging Face cache" in done.stderr
    assert not (tmp_path / "models").exists()  # nor an empty models folder


@pytest.mark.parametrize("args", [["pull", ""], ["pull", "", "--file", "x.gguf"],
                                  ["convert", "", "-o", "x.gguf"]])
def test_an_empty_source_is_refused_not_taken_for_the_working_directory(tmp_path, args):
    """pathlib reads "" as "."; `pull ""` converted or copied from the working directory."""
    done = run_cli(args, tmp_path, tmp_path / "hub")
    assert done.returncode == 1 and done.stderr.startswith("Error: the source is empty;")
    assert not (tmp_path / "models").exists() and not (tmp_path / "x.gguf").exists()


def test_pull_file_gives_up_at_once_when_the_hub_cannot_be_reached(tmp_path, converted):
    """Without HF_HUB_OFFLINE, hf_hub_download retried a refused connection five times
    (about 24 s, a "Retrying" line each) before it looked in the cache. The Hub here is a
    loopback port nothing listens on; what is cached is still taken."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cache = tmp_path / "hub"
    _write_projector(tmp_path / "projector.safetensors")
    fill_cache(cache, "someone/cached-GGUF", {"model-q8_0.gguf": converted("q8_0"),
                                              "projector.safetensors": tmp_path /
                                              "projector.safetensors"})
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_CACHE=str(cache),
               RERANKER_MODELS_DIR=str(tmp_path / "models"))
    env.pop("HF_HUB_OFFLINE", None)
    for repo, expected in (("someone/absent-GGUF", 1), ("someone/cached-GGUF", 0)):
        done = subprocess.run([sys.executable, "-m", "reranker.cli.main", "pull", repo,
                               "--file", "model-q8_0.gguf"], env=env, capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == expected, done.stderr
        assert "Retrying" not in done.stderr
    assert (tmp_path / "models" / "cached-GGUF" / "model-q8_0.gguf").is_file()
    absent = subprocess.run([sys.executable, "-m", "reranker.cli.main", "pull",
                             "someone/absent-GGUF", "--file", "x.gguf"], env=env,
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert absent.stderr.startswith("Error: someone/absent-GGUF/x.gguf is not in the local "
                                    "Hugging Face cache and the Hub cannot be reached (Connect")
    assert absent.stderr.count("\n") == 1


def test_a_slow_hub_is_not_taken_for_an_unreachable_one(monkeypatch):
    """A Hub that answers slowly is left to hf_hub_download, which waits longer and retries;
    taken for unreachable, a working but slow Hub failed every pull --file."""
    import socket

    from huggingface_hub import constants

    from convert.hub import hub_unreachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert hub_unreachable() is None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert "Connect" in hub_unreachable()  # refused: the cache alone is looked at


def _published_folder(folder: Path, model: Path) -> Path:
    """A published GGUF repo's two files in a local folder."""
    folder.mkdir(parents=True)
    os.link(model, folder / "model-q8_0.gguf")
    _write_projector(folder / "projector.safetensors")
    return folder


def _write_projector(path: Path, value: float = 1.0) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"projector.0.weight": np.full((8, 256), value, np.float32),
               "projector.2.weight": np.full((8, 8), value, np.float32)}, str(path))


@pytest.mark.parametrize("name", ["../model-q8_0.gguf", "/etc/model.gguf", "sub/../../x.gguf"])
def test_pull_file_names_a_file_inside_the_repo(tmp_path, converted, name):
    """`--file ../../x.gguf` wrote the model outside models/ and recorded that path."""
    _published_folder(tmp_path / "downloads" / "jr3", converted("q8_0"))
    done = run_cli(["pull", "downloads/jr3", "--file", name], tmp_path, tmp_path / "hub")
    assert done.returncode == 1 and "must name a file inside the repo" in done.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "model-q8_0.gguf").exists()


def test_pull_refuses_a_file_the_runtime_cannot_open(tmp_path, converted):
    """Copied unchecked, random bytes became the checksummed default model."""
    folder = _published_folder(tmp_path / "downloads" / "jr3", converted("q8_0"))
    (folder / "broken.gguf").write_bytes(os.urandom(4096))
    done = run_cli(["pull", "downloads/jr3", "--file", "broken.gguf"], tmp_path, tmp_path / "hub")
    assert done.returncode == 1 and "is not a GGUF file (bad magic bytes)" in done.stderr
    assert not (tmp_path / "models").exists()


@pytest.fixture
def projector_copy_fails(monkeypatch):
    """Copying a projector.safetensors fails as on a full disk (a stand-in raising ENOSPC:
    a disk that fills up at the second file cannot be made on demand)."""
    import errno

    from convert import pull as pull_module

    real_copy = pull_module.shutil.copyfile

    def copy(source, destination):
        if Path(source).name == "projector.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(source, destination)

    monkeypatch.setattr(pull_module.shutil, "copyfile", copy)


def test_a_failed_copy_takes_back_what_the_pull_wrote(tmp_path, converted, projector_copy_fails):
    """The projector failing to copy left the model alone, without projector or checksum."""
    from convert import pull as pull_module

    folder = _published_folder(tmp_path / "downloads" / "jr3", converted("q8_0"))
    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(OSError, match="No space left"):
        pull_module.pull_published_gguf(str(folder), "model-q8_0.gguf", models)
    assert list(models.iterdir()) == []


def test_a_forced_pull_that_fails_keeps_the_pair_it_had(tmp_path, converted, request):
    """With --force the model was replaced first: a failure copying the projector left the
    new model beside the old projector and the old checksum."""
    from convert import pull as pull_module

    folder = _published_folder(tmp_path / "downloads" / "jr3", converted("q8_0"))
    models = tmp_path / "models"
    models.mkdir()
    pull_module.pull_published_gguf(str(folder), "model-q8_0.gguf", models)
    kept = {path.name: path.read_bytes() for path in (models / "jr3").iterdir()}
    sums = (models / "SHA256SUMS").read_text()
    (folder / "model-q8_0.gguf").unlink()
    os.link(converted("f16"), folder / "model-q8_0.gguf")  # a new upload of both files
    _write_projector(folder / "projector.safetensors", value=2.0)
    request.getfixturevalue("projector_copy_fails")
    with pytest.raises(OSError, match="No space left"):
        pull_module.pull_published_gguf(str(folder), "model-q8_0.gguf", models, force=True)
    assert {path.name: path.read_bytes() for path in (models / "jr3").iterdir()} == kept
    assert (models / "SHA256SUMS").read_text() == sums


def test_a_second_quantization_shares_the_projector_already_pulled(tmp_path, converted):
    """Pulling q4_k_m after q8_0 from one repo needed --force: its projector.safetensors
    (the same file) was already there. A projector that differs still needs it."""
    from convert import pull as pull_module

    folder = _published_folder(tmp_path / "downloads" / "jr3", converted("q8_0"))
    os.link(converted("f16"), folder / "model-f16.gguf")
    models = tmp_path / "models"
    models.mkdir()
    pull_module.pull_published_gguf(str(folder), "model-q8_0.gguf", models)
    projector = models / "jr3" / "projector.safetensors"
    first = projector.stat()
    pull_module.pull_published_gguf(str(folder), "model-f16.gguf", models)
    assert (first.st_ino, first.st_mtime_ns) == (projector.stat().st_ino,
                                                  projector.stat().st_mtime_ns)
    assert sorted(line.split("  ")[1] for line in
                  (models / "SHA256SUMS").read_text().splitlines()) == [
        "jr3/model-f16.gguf", "jr3/model-q8_0.gguf", "jr3/projector.safetensors"]

    _write_projector(folder / "projector.safetensors", value=2.0)  # another repo's
    (models / "jr3" / "model-f16.gguf").unlink()
    kept = projector.read_bytes()
    for force in (False, True):  # --force would pair model-q8_0.gguf with it unseen
        with pytest.raises(CheckpointError, match="projector.safetensors is the projector of "
                                                  "model-q8_0.gguf too"):
            pull_module.pull_published_gguf(str(folder), "model-f16.gguf", models, force=force)
    assert not (models / "jr3" / "model-f16.gguf").exists() and projector.read_bytes() == kept
    (models / "jr3" / "model-q8_0.gguf").unlink()  # the projector's only model is gone
    with pytest.raises(ConversionError, match="projector.safetensors already exists; pass --force"):
        pull_module.pull_published_gguf(str(folder), "model-f16.gguf", models)
    pull_module.pull_published_gguf(str(folder), "model-f16.gguf", models, force=True)
    assert projector.read_bytes() == (folder / "projector.safetensors").read_bytes()


def test_pulls_into_one_folder_at_once_take_turns(tmp_path, converted):
    """Two pulls of a repo's quantizations at once: one refused the other's (identical)
    projector as "written by another run", or rolled back and removed it, leaving a model
    without projector or checksums. Threads stand for processes: the lock is taken on an
    open file description, as another process's would be."""
    import threading

    from convert import pull as pull_module

    folder = _published_folder(tmp_path / "downloads" / "jr3", converted("q8_0"))
    os.link(converted("f16"), folder / "model-f16.gguf")
    for round_ in range(4):
        models = tmp_path / f"models-{round_}"
        models.mkdir()
        errors = []

        def pull(name):
            try:
                pull_module.pull_published_gguf(str(folder), name, models)
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=pull, args=(name,))
                   for name in ("model-q8_0.gguf", "model-f16.gguf")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        assert sorted(line.split("  ")[1] for line in
                      (models / "SHA256SUMS").read_text().splitlines()) == [
            "jr3/model-f16.gguf", "jr3/model-q8_0.gguf", "jr3/projector.safetensors"]


def test_a_pull_waiting_for_its_turn_says_so(tmp_path, converted, caplog):
    import fcntl
    import threading
    import time

    from convert import pull as pull_module

    folder = _published_folder(tmp_path / "downloads" / "jr3", converted("q8_0"))
    models = tmp_path / "models"
    models.mkdir()
    holder = os.open(models, os.O_RDONLY | os.O_DIRECTORY)  # another pull's turn
    fcntl.flock(holder, fcntl.LOCK_EX)
    worker = threading.Thread(target=pull_module.pull_published_gguf,
                              args=(str(folder), "model-q8_0.gguf", models))
    with caplog.at_level("WARNING", logger="convert.pull"):
        worker.start()
        deadline = time.monotonic() + 60
        while "waiting for another pull" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert f"waiting for another pull into {models} to finish" in caplog.text
        assert not (models / "jr3").exists()  # nothing written before its turn
        os.close(holder)  # the other pull ends
        worker.join(60)
    assert (models / "jr3" / "model-q8_0.gguf").is_file()


@pytest.mark.parametrize("source,name", [("ckpt/", "ckpt"), ("ckpt", "ckpt"), (".", "work"),
                                         ("owner/repo-name", "repo-name")])
def test_models_are_named_after_their_source(tmp_path, monkeypatch, source, name):
    """`pull DIR/` wrote models/-q8_0.gguf and `pull .` a hidden .-q8_0.gguf."""
    from convert.pull import source_name

    (tmp_path / "work" / "ckpt").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert source_name(source) == name


@pytest.mark.slow  # six child processes, two of them conversions
def test_the_model_pulled_last_is_the_default(tmp_path, cache_with_checkpoint):
    for type_name in ("q8_0", "f16"):  # written directly, as in the test above
        pulled = run_cli(["pull", "--type", type_name], tmp_path, cache_with_checkpoint)
        assert pulled.returncode == 0, pulled.stderr
        assert "is now the default model" in pulled.stderr
        described = run_cli(["inspect", "--json"], tmp_path, cache_with_checkpoint)
        assert described.returncode == 0, described.stderr
        assert json.loads(described.stdout)["file_type"] == type_name
        ranked = run_cli(["rerank", "-q", "capital", "-d", "Paris", "--json"], tmp_path,
                         cache_with_checkpoint)
        assert ranked.returncode == 0, ranked.stderr
        # The model is named by the file's stem, as the server names it.
        assert json.loads(ranked.stdout)["model"] == f"jina-reranker-v3-{type_name}"
