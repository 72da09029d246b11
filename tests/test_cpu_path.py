"""The CPU path: which llama.cpp weight layout is loaded, why, and the child-process checks.

This suite may run on a CPU without AMX, where the AMX crash cannot happen. The choice
is a pure function of the build's answer, so "AMX present" is forced by handing it
that answer; a crashing kernel is stood in for by a child process that kills itself
with SIGSEGV (the only fake here: a real crash cannot be produced on such a CPU).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from reranker import Reranker
from reranker.cpu_canary import (FAMILIES, CanaryRun, compare_with_reference, family_of,
                                 run_canary, write_canary_models)
from reranker.cpu_path import (CpuPathError, Verdict, choose_cpu_path, extra_path_name,
                               load_verdict, machine_key, resolve_cpu_path, save_verdict,
                               verdicts_file)
from reranker.cpu_support import elf_comment, read_cpu_info, read_llama_build
from reranker.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
AMX_BUILD = ("AMX", "CPU_REPACK")
NO_AMX_BUILD = ("CPU_REPACK",)
SEGFAULT = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh verdict cache for this test (the session's is shared)."""
    monkeypatch.setenv("RERANKER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RERANKER_CPU_PATH", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def canary_models(tmp_path_factory) -> dict[str, Path]:
    return write_canary_models(tmp_path_factory.mktemp("canary"))


@pytest.fixture(scope="module")
def plain_child():
    """The real child on the plain path, once per canary file for this module's doctors
    (each child imports llama.cpp anew: about two seconds)."""
    runs: dict[str, CanaryRun] = {}

    def run(model: Path, _path: str) -> CanaryRun:
        if model.name not in runs:
            runs[model.name] = run_canary(model, "plain")
        return runs[model.name]
    return run


def forced_build(buffers: tuple[str, ...]):
    """This process's real build, answering that it registered `buffers` on this CPU."""
    return replace(read_llama_build(), extra_buffer_types=buffers)


def verdict(path: str, ok: bool) -> Verdict:
    return Verdict(path, ok, "ok" if ok else "q8_0: crashed (signal 11, SIGSEGV)", "today")


# -- the choice ------------------------------------------------------------------------
def test_auto_on_an_amx_build_stays_plain_until_verified():
    unverified = choose_cpu_path("auto", AMX_BUILD, None)
    assert unverified.name == "plain" and "doctor" in unverified.reason
    assert not unverified.use_extra_buffer_types
    assert choose_cpu_path("auto", AMX_BUILD, verdict("amx", True)).name == "amx"
    crashed = choose_cpu_path("auto", AMX_BUILD, verdict("amx", False))
    assert crashed.name == "plain" and "signal 11" in crashed.reason


def test_auto_without_amx_takes_the_repacked_layout_unless_it_failed():
    assert choose_cpu_path("auto", NO_AMX_BUILD, None).name == "repack"
    assert choose_cpu_path("auto", NO_AMX_BUILD, verdict("repack", True)).name == "repack"
    assert choose_cpu_path("auto", NO_AMX_BUILD, verdict("repack", False)).name == "plain"
    assert choose_cpu_path("auto", (), None).name == "plain"
    # A verdict about another path does not decide this one.
    assert choose_cpu_path("auto", AMX_BUILD, verdict("repack", True)).name == "plain"


def test_explicit_paths_and_the_ones_this_build_cannot_give():
    assert choose_cpu_path("amx", AMX_BUILD, verdict("amx", False)).name == "amx"
    assert choose_cpu_path("plain", AMX_BUILD, None).name == "plain"
    assert choose_cpu_path("repack", NO_AMX_BUILD, None).use_extra_buffer_types
    with pytest.raises(CpuPathError, match="'amx'.*no AMX buffer type.*CPU_REPACK"):
        choose_cpu_path("amx", NO_AMX_BUILD, None)
    with pytest.raises(CpuPathError, match="'repack'.*cannot leave out.*AMX"):
        choose_cpu_path("repack", AMX_BUILD, None)
    with pytest.raises(CpuPathError, match="'fast'.*auto, amx, repack, plain"):
        choose_cpu_path("fast", NO_AMX_BUILD, None)
    assert extra_path_name(AMX_BUILD) == "amx" and extra_path_name(NO_AMX_BUILD) == "repack"
    assert extra_path_name(()) is None


def test_environment_variable_overrides_and_is_checked(cache, monkeypatch):
    monkeypatch.setenv("RERANKER_CPU_PATH", " Plain ")
    chosen = resolve_cpu_path()
    assert chosen.name == "plain" and "RERANKER_CPU_PATH" in chosen.reason
    # An explicit option beats the variable (the cache is empty: auto as never checked).
    build = read_llama_build().extra_buffer_types
    assert resolve_cpu_path("auto").name == choose_cpu_path("auto", build, None).name
    monkeypatch.setenv("RERANKER_CPU_PATH", "turbo")
    with pytest.raises(CpuPathError, match="'turbo'.*RERANKER_CPU_PATH"):
        resolve_cpu_path()


def test_a_verdict_decides_auto_for_its_build_and_cpu_only(cache, monkeypatch):
    build = forced_build(AMX_BUILD)
    monkeypatch.setattr("reranker.cpu_path.read_llama_build", lambda: build)
    assert resolve_cpu_path().name == "plain"
    save_verdict(machine_key(read_cpu_info(), build), "amx", True, "all decoded")
    assert resolve_cpu_path().name == "amx"
    other_cpu = replace(read_cpu_info(), model="Another CPU")
    assert load_verdict(machine_key(other_cpu, build)) is None
    save_verdict(machine_key(read_cpu_info(), build), "amx", False, "q8_0: crashed")
    assert resolve_cpu_path().name == "plain"
    # No temporary file left (the lock file stays: it is how writers take turns).
    assert sorted(p.name for p in cache.iterdir()) == [".cpu-paths.json.lock", "cpu-paths.json"]


def test_an_unreadable_verdict_file_counts_as_never_checked(cache, monkeypatch):
    build = forced_build(AMX_BUILD)
    monkeypatch.setattr("reranker.cpu_path.read_llama_build", lambda: build)
    cache.mkdir(parents=True)
    key = machine_key(read_cpu_info(), build)
    hand_edited = {"path": "amx", "ok": "false", "detail": "q8_0: crashed", "checked_at": "x"}
    for garbage in ("{not json", "[1, 2]", json.dumps({key: 7}), json.dumps({key: hand_edited})):
        verdicts_file().write_text(garbage)
        assert load_verdict(machine_key(read_cpu_info(), build)) is None
        assert resolve_cpu_path().name == "plain"
    save_verdict("k", "amx", True, "fine")  # and it is replaced, not appended to
    assert load_verdict("k").ok


def test_no_home_folder_means_no_cache_not_a_crash(converted, monkeypatch, tmp_path):
    """A container's user id without a passwd entry and no $HOME: pathlib's RuntimeError
    crashed every command. Path.home is made to raise it here (the tests run as a user
    who has a home), as it does there."""
    for name in ("RERANKER_CACHE_DIR", "XDG_CACHE_HOME", "HOME", "RERANKER_CPU_PATH"):
        monkeypatch.delenv(name, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert load_verdict("any") is None and resolve_cpu_path().name in ("plain", "repack")
    with pytest.raises(OSError, match="no cache folder.*RERANKER_CACHE_DIR"):
        save_verdict("any", "amx", True, "fine")
    with Reranker(converted("q8_0"), n_threads=1) as ranker:
        assert ranker.engine_choice.name == "llama.cpp"
        assert ranker.score("q", ["d"]).scores.shape == (1,)
    done = CliRunner().invoke(cli, ["inspect", str(converted("q8_0"))])
    assert done.exit_code == 0 and "Traceback" not in done.output, done.output


CONCURRENT_WRITER = """
import sys, time
from reranker.cpu_path import save_entry
who, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
for i in range(150):
    save_entry(f"{who}-{i}", {"i": i})
"""


def test_two_writers_at_once_lose_no_verdict(cache):
    """Two doctors at once (a provisioning script timing two models): each read, changed
    and wrote the whole file, and one's entries vanished (354 of 600 survived)."""
    start = time.time() + 2
    writers = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, who, str(start)],
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
               for who in ("a", "b")]
    assert [writer.wait(120) for writer in writers] == [0, 0]
    assert len(json.loads(verdicts_file().read_text())) == 300


def test_a_lock_that_cannot_be_had_does_not_stop_the_record(cache):
    cache.mkdir(parents=True)
    (cache / ".cpu-paths.json.lock").mkdir()  # cannot be opened as a file
    save_verdict("k", "amx", True, "fine")
    assert load_verdict("k").ok


def test_the_verdict_file_is_readable_as_any_new_file(cache):
    """mkstemp's 0600 hid an administrator's verdicts from the service account."""
    previous = os.umask(0o022)
    try:
        save_verdict("k", "amx", True, "fine")
    finally:
        os.umask(previous)
    assert verdicts_file().stat().st_mode & 0o777 == 0o644


# -- what the machine and the build say ----------------------------------------------------
def test_cpu_info_reads_model_and_flags(tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
                    "flags\t\t: fpu avx2 avx512f amx_tile amx_int8 amx_bf16\n\n"
                    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n")
    cpu = read_cpu_info(fake)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8488C" and cpu.has_amx
    assert cpu.notable_flags["avx512f"] and not cpu.notable_flags["avx512_vnni"]
    missing = read_cpu_info(tmp_path / "absent")
    assert missing.flags == frozenset() and not missing.has_amx and missing.model


def test_the_build_report_matches_this_machine():
    build, cpu = read_llama_build(), read_cpu_info()
    assert build.cpu_features, "ggml's CPU backend reported no features"
    assert build.has_amx_buffer == ("AMX" in build.extra_buffer_types)
    if not cpu.has_amx:
        assert not build.has_amx_buffer  # ggml registers AMX only where the CPU grants it
    if "avx2" in cpu.flags and build.cpu_features.get("AVX2") is not None:
        assert build.cpu_features["AVX2"] == "1"
    assert build.compiler is None or any(name in build.compiler for name in ("GCC", "clang"))
    assert len(build.fingerprint) == 16


def test_elf_comment_is_none_for_files_that_are_not_elf(tmp_path):
    for content in (b"", b"\x7fELF", b"not an elf file at all" * 10, b"\x7fELF\x02\x01" + b"\xff" * 80):
        path = tmp_path / "lib.so"
        path.write_bytes(content)
        assert elf_comment(path) is None
    assert elf_comment(tmp_path / "absent.so") is None


# -- the child-process checks -------------------------------------------------------------
def test_family_of_each_file_type():
    assert {family_of(t) for t in ("f32", "f16", "bf16")} == {"float"}
    assert family_of("q4_k_m") == family_of("q6_k") == family_of("q2_k") == "k-quant"
    assert family_of("iq4_nl") == "iq4_nl" and family_of("IQ4_XS") == "iq4_xs"
    assert family_of("q5_1") == "legacy" and family_of("iq3_s") is None
    assert all(family_of(t) == f for f, t in FAMILIES.items())


@pytest.mark.slow  # a child process per weight family and path
def test_every_family_decodes_in_a_child_on_plain_and_on_this_builds_path(canary_models):
    extra = extra_path_name(read_llama_build().extra_buffer_types)
    plain = {f: run_canary(m, "plain") for f, m in canary_models.items()}
    for family, run in plain.items():
        assert run.ok, f"{family}: {run.detail}"
        assert run.states.shape == (3, 256) and np.isfinite(run.states).all()
    if extra is None:
        pytest.skip("this build registers no extra buffer types")
    runs = compare_with_reference({f: run_canary(m, extra) for f, m in canary_models.items()},
                                  plain)
    if extra == "amx" and not all(run.ok for run in runs.values()):
        pytest.skip(f"the AMX kernels fail here ({[r.detail for r in runs.values()]}); "
                    "auto keeps plain for this build")
    for family, run in runs.items():
        assert run.ok, f"{extra} {family}: {run.detail}"


def test_a_crash_a_hang_and_an_error_in_the_child_become_results(tmp_path):
    crashed = run_canary(tmp_path / "x.gguf", "plain", command=SEGFAULT)
    assert not crashed.ok and crashed.detail == "crashed (signal 11, SIGSEGV)"
    hung = run_canary(tmp_path / "x.gguf", "plain", timeout=1,
                      command=[sys.executable, "-c", "import time; time.sleep(30)"])
    assert not hung.ok and hung.detail.startswith("hung")
    missing = run_canary(tmp_path / "absent.gguf", "plain")  # the real child, a bad file
    assert not missing.ok and missing.detail.startswith("failed:") and "absent.gguf" in missing.detail
    wrong = run_canary(tmp_path / "x.gguf", "plain",
                       command=[sys.executable, "-c", "print('{\"states\": [[1.0, NaN]]}')"])
    assert not wrong.ok and "NaN" in wrong.detail


def test_states_pointing_elsewhere_than_plain_are_wrong_results():
    states = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    plain = {"q8_0": CanaryRun(True, "ok", 0.1, states)}
    same = compare_with_reference({"q8_0": CanaryRun(True, "ok", 0.1, states * 1.001)}, plain)
    assert same["q8_0"].ok
    flipped = compare_with_reference({"q8_0": CanaryRun(True, "ok", 0.1, -states)}, plain)
    assert not flipped["q8_0"].ok and "cosine -1.000" in flipped["q8_0"].detail


# -- the runtime loads with the chosen path ---------------------------------------------------
@pytest.mark.slow  # a q4_k_m conversion through llama.cpp's quantizer
def test_the_engine_loads_weights_as_the_path_says(converted, caplog):
    extra = extra_path_name(read_llama_build().extra_buffer_types)
    if extra is None:
        pytest.skip("this build registers no extra buffer types")
    model = converted("q4_k_m")
    if not run_canary(write_canary_models(model.parent / "canary", ["k-quant"])["k-quant"],
                      extra).ok:
        pytest.skip(f"the {extra} path crashes on k-quants here; auto keeps plain")
    scores, buffers = {}, {}
    for path in ("plain", extra):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="reranker"):
            with Reranker(model, n_threads=2, cpu_path=path) as ranker:
                assert ranker.cpu_path.name == path
                scores[path] = ranker.score("a query", ["one document", "another"]).scores
        log = caplog.text
        assert f"CPU path {path}" in log
        buffers[path] = "CPU_REPACK model buffer" in log or "AMX model buffer" in log
    assert buffers == {"plain": False, extra: True}
    np.testing.assert_allclose(scores[extra], scores["plain"], atol=2e-2)


def test_cli_refuses_a_path_this_build_cannot_give(converted):
    unavailable = "repack" if read_llama_build().has_amx_buffer else "amx"
    done = CliRunner().invoke(cli, ["rerank", "-m", str(converted("f16")), "-q", "q", "-d", "a",
                                    "--cpu-path", unavailable])
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert f"CPU path '{unavailable}'" in done.output
    done = CliRunner().invoke(cli, ["rerank", "-m", str(converted("f16")), "-q", "q", "-d", "a",
                                    "--cpu-path", "fastest"])
    assert done.exit_code == 2 and "fastest" in done.output


def test_inspect_names_the_path(converted, cache, monkeypatch):
    monkeypatch.setenv("RERANKER_CPU_PATH", "plain")
    done = CliRunner().invoke(cli, ["inspect", str(converted("f16")), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["cpu_path"]["name"] == "plain"
    done = CliRunner().invoke(cli, ["inspect", str(converted("f16"))])
    assert "cpu path:" in done.output and "plain here" in done.output


# -- doctor --------------------------------------------------------------------------------
@pytest.mark.slow  # doctor decodes every weight family in child processes
def test_doctor_on_this_machine(cache):
    done = CliRunner().invoke(cli, ["doctor", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["cpu"]["model"] == read_cpu_info().model
    assert set(report["checks"]["plain"]) == set(FAMILIES)
    assert report["path"]["name"] in report["working_paths"]
    assert report["path"]["name"] == resolve_cpu_path().name
    extra = extra_path_name(read_llama_build().extra_buffer_types)
    if extra is not None:
        recorded = load_verdict(machine_key(read_cpu_info(), read_llama_build()))
        assert recorded is not None and recorded.path == extra


@pytest.mark.slow  # doctor's child processes
def test_doctor_with_a_crashing_amx_path_reports_it_and_falls_back(cache, monkeypatch,
                                                                   plain_child):
    """AMX present (forced) and its q8_0 and k-quant kernels crashing (a child that
    segfaults); the other families run the real child on plain."""
    build = forced_build(AMX_BUILD)
    monkeypatch.setattr("reranker.cpu_path.read_llama_build", lambda: build)
    monkeypatch.setattr("reranker.cli.doctor_command.read_llama_build", lambda: build)

    def runner(model: Path, path: str) -> CanaryRun:
        if path == "amx" and ("q8_0" in model.name or "q4_k_m" in model.name):
            return run_canary(model, path, command=SEGFAULT)
        return plain_child(model, path)
    monkeypatch.setattr("reranker.cli.doctor_command.run_canary", runner)
    done = CliRunner().invoke(cli, ["doctor"])
    assert done.exit_code == 0, done.output
    assert "amx q8_0: crashed (signal 11, SIGSEGV) -> using plain" in done.output
    assert "amx k-quant: crashed (signal 11, SIGSEGV) -> using plain" in done.output
    assert "path:       plain (AMX kernels failed doctor's check" in done.output
    recorded = load_verdict(machine_key(read_cpu_info(), build))
    assert recorded.path == "amx" and not recorded.ok and "q8_0: crashed" in recorded.detail
    assert resolve_cpu_path().name == "plain"


def test_doctor_records_a_working_amx_path_and_auto_follows(cache, monkeypatch, plain_child):
    build = forced_build(AMX_BUILD)
    monkeypatch.setattr("reranker.cpu_path.read_llama_build", lambda: build)
    monkeypatch.setattr("reranker.cli.doctor_command.read_llama_build", lambda: build)
    monkeypatch.setattr("reranker.cli.doctor_command.run_canary", plain_child)  # AMX that works
    done = CliRunner().invoke(cli, ["doctor", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["path"]["name"] == "amx"
    assert resolve_cpu_path().name == "amx"


def test_doctor_exits_non_zero_only_when_no_path_works(cache, monkeypatch):
    monkeypatch.setattr("reranker.cli.doctor_command.run_canary",
                        lambda model, path: run_canary(model, path, command=SEGFAULT))
    done = CliRunner().invoke(cli, ["doctor"])
    assert done.exit_code == 1
    assert "no path decodes every weight family" in done.output


@pytest.mark.slow  # doctor's child processes, then a timed request
def test_doctor_times_a_real_request(converted, cache):
    done = CliRunner().invoke(cli, ["doctor", "--model", str(converted("q8_0")),
                                    "--threads", "2", "--json"])
    assert done.exit_code == 0, done.output
    request = json.loads(done.stdout)["request"]
    assert request["documents"] == 16 and request["tokens"] > 2000
    assert request["request_seconds"] > 0 and request["path"] == resolve_cpu_path().name
    done = CliRunner().invoke(cli, ["doctor", "--model", "/nonexistent/model.gguf"])
    assert done.exit_code == 1 and "neither a file nor a directory" in done.output


def test_an_unreadable_build_loads_plain_and_refuses_the_other_paths(cache, monkeypatch):
    def unreadable():
        raise OSError("ggml-cpu was not found in /opt/llama")
    monkeypatch.setattr("reranker.cpu_path.read_llama_build", unreadable)
    chosen = resolve_cpu_path()
    assert chosen.name == "plain" and "/opt/llama" in chosen.reason
    with pytest.raises(CpuPathError, match="'repack'.*could not be read"):
        resolve_cpu_path("repack")


def test_the_libraries_are_looked_up_where_llama_cpp_python_loads_them(monkeypatch, tmp_path):
    from reranker.ggml_tensors import ggml_library, llama_library_dir

    assert ggml_library("ggml-base").parent == llama_library_dir()
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(tmp_path))
    assert llama_library_dir() == tmp_path
    with pytest.raises(OSError, match="ggml-cpu was not found in " + str(tmp_path)):
        ggml_library("ggml-cpu")


def test_doctor_still_reports_when_it_cannot_record(tmp_path, monkeypatch, plain_child):
    blocked = tmp_path / "a-file-where-the-cache-would-go"
    blocked.write_text("")
    monkeypatch.setenv("RERANKER_CACHE_DIR", str(blocked))
    monkeypatch.setattr("reranker.cli.doctor_command.run_canary", plain_child)
    done = CliRunner().invoke(cli, ["doctor"])
    assert done.exit_code == 0, done.output
    assert "decode checks" in done.output
    if read_llama_build().extra_buffer_types:
        assert "warning: could not record the outcome" in done.output


def test_doctor_with_an_override_this_build_cannot_give_still_reports(cache, monkeypatch,
                                                                      plain_child):
    unavailable = "repack" if read_llama_build().has_amx_buffer else "amx"
    monkeypatch.setenv("RERANKER_CPU_PATH", unavailable)
    monkeypatch.setattr("reranker.cli.doctor_command.run_canary", plain_child)
    done = CliRunner().invoke(cli, ["doctor"])
    assert done.exit_code == 0, done.output
    assert "decode checks" in done.output
    assert f"path:       none (CPU path '{unavailable}' (from RERANKER_CPU_PATH)" in done.output
    assert "warning: the override cannot be used on this build; unset it" in done.output
