"""Agreement measures by hand and against scipy; `compare` and `--ladder` on generated models
(f32 with itself agrees perfectly; q8_0 against f32 is measured, not assumed)."""
from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
from click.testing import CliRunner

from reranker.errors import ModelFileError
from reranker.evaluation.agreement import kendall_tau_b, measure_agreement, top_k_overlap
from reranker.evaluation.compare import (RerankRequest, compare_models, ladder_files,
                                         quantization_ladder)
from reranker.cli.main import cli

WORDS = ("river city capital market history science music winter harbor mountain language "
         "engine garden library theory ocean forest village bridge festival").split()


def _requests(count: int = 3, documents: int = 12, seed: int = 0) -> list[RerankRequest]:
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    return [RerankRequest(text(4), [text(12) for _ in range(documents)]) for _ in range(count)]


# -- agreement measures ----------------------------------------------------------------------

def test_kendall_tau_b_by_hand():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one swapped pair of 6: (5 - 1) / 6
    assert kendall_tau_b([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    # ties: x ties pair (0,1); pairs untied in x = 5, in y = 6; concordant 5, discordant 0
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(5 * 6))
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall_tau_b([1], [1]))
    with pytest.raises(ValueError, match="same length"):
        kendall_tau_b([1, 2], [1, 2, 3])


def test_kendall_tau_b_equals_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, size=15).astype(float)  # many ties
        b = a + rng.normal(0, 1.5, size=15).round()
        assert kendall_tau_b(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


def test_top_k_overlap_by_hand():
    a = [0.9, 0.8, 0.7, 0.1]  # top 2: items 0, 1
    b = [0.9, 0.1, 0.8, 0.7]  # top 2: items 0, 2
    assert top_k_overlap(a, b, 1) == 1.0
    assert top_k_overlap(a, b, 2) == 0.5
    assert top_k_overlap(a, b, 10) == 1.0  # capped at the 4 documents


def test_measure_agreement_by_hand():
    agreement = measure_agreement([[0.9, 0.5, 0.1], [0.2, 0.4]], [[0.8, 0.5, 0.3], [0.4, 0.2]])
    assert agreement.queries == 2
    assert agreement.kendall_tau == pytest.approx((1.0 - 1.0) / 2)
    assert agreement.top_1 == 0.5 and agreement.top_5 == 1.0
    assert agreement.max_abs_diff == pytest.approx(0.2)
    assert agreement.mean_abs_diff == pytest.approx((0.1 + 0 + 0.2 + 0.2 + 0.2) / 5)
    with pytest.raises(ValueError, match="no queries"):
        measure_agreement([], [])


# -- models ----------------------------------------------------------------------------------

def test_f32_agrees_with_itself_perfectly(converted):
    comparison = compare_models(converted("f32"), converted("f32"), _requests(), n_threads=2)
    agreement = comparison.agreement
    assert agreement.queries == 3
    assert agreement.kendall_tau == 1.0
    assert (agreement.top_1, agreement.top_5, agreement.top_10) == (1.0, 1.0, 1.0)
    assert agreement.max_abs_diff == 0.0 and agreement.mean_abs_diff == 0.0
    assert comparison.a.file_type == comparison.b.file_type == "f32"
    assert comparison.a.seconds > 0 and comparison.b.seconds_per_query > 0


def test_q8_0_against_f32_is_measured(converted):
    """The agreement compare_models reports equals one computed here, by scipy and by hand,
    from each model's own scores: measured on these requests, not assumed."""
    from reranker import Reranker

    stats = pytest.importorskip("scipy.stats")
    requests = _requests()
    comparison = compare_models(converted("f32"), converted("q8_0"), requests, n_threads=2)
    scores = {}
    for type_name in ("f32", "q8_0"):
        with Reranker(converted(type_name), n_threads=2) as ranker:
            scores[type_name] = [ranker.score(r.query, r.documents).scores for r in requests]
    pairs = list(zip(scores["f32"], scores["q8_0"]))

    def shared_top(a, b, k):
        return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k

    agreement = comparison.agreement
    assert agreement.queries == 3
    assert agreement.kendall_tau == pytest.approx(
        np.mean([stats.kendalltau(a, b).statistic for a, b in pairs]))
    assert agreement.top_1 == pytest.approx(np.mean([a.argmax() == b.argmax() for a, b in pairs]))
    assert agreement.top_5 == pytest.approx(np.mean([shared_top(a, b, 5) for a, b in pairs]))
    assert agreement.top_10 == pytest.approx(np.mean([shared_top(a, b, 10) for a, b in pairs]))
    differences = np.abs(np.concatenate([a - b for a, b in pairs]))
    assert agreement.max_abs_diff == pytest.approx(differences.max())
    assert agreement.mean_abs_diff == pytest.approx(differences.mean())
    assert agreement.max_abs_diff > 0  # 8-bit weights do move the scores
    assert comparison.b.file_type == "q8_0"
    assert comparison.b.size_bytes < comparison.a.size_bytes
    assert comparison.to_dict()["agreement"]["kendall_tau"] == agreement.kendall_tau


def test_ladder_orders_by_size_and_skips_the_reference(converted):
    files = ladder_files([converted("q8_0"), converted("f32"), converted("f16"),
                          converted("f32")])
    assert files == [converted("f32"), converted("f16"), converted("q8_0")]
    rows = quantization_ladder(files[0], files, _requests(count=2), n_threads=2)
    assert [row.run.file_type for row in rows] == ["f32", "f16", "q8_0"]
    assert rows[0].agreement is None and rows[0].to_dict()["reference"] is True
    for row in rows[1:]:
        assert row.agreement.queries == 2 and row.agreement.max_abs_diff > 0


@pytest.fixture
def truncated_model(converted, tmp_path):
    """A GGUF cut inside its metadata, as an interrupted copy leaves one."""
    path = tmp_path / "truncated.gguf"
    path.write_bytes(converted("f32").read_bytes()[:1000])
    return path


def test_a_bad_model_stops_the_comparison_before_anything_is_scored(converted,
                                                                    truncated_model):
    """The second model's header was first read after the first had scored every request."""
    scored = []

    def progress(path, done, total):
        scored.append(path.name)

    with pytest.raises(ModelFileError, match="truncated.gguf: truncated GGUF metadata"):
        compare_models(converted("f32"), truncated_model, _requests(count=1), n_threads=2,
                       progress=progress)
    with pytest.raises(ModelFileError, match="truncated.gguf: truncated GGUF metadata"):
        quantization_ladder(converted("f32"), [converted("f32"), truncated_model],
                            _requests(count=1), n_threads=2, progress=progress)
    assert scored == []


def test_ladder_files_errors(tmp_path):
    with pytest.raises(ModelFileError, match="holds no .gguf files"):
        ladder_files([tmp_path])
    with pytest.raises(ModelFileError, match="does not exist"):
        ladder_files([tmp_path / "x.gguf"])


# -- the command ---------------------------------------------------------------------------------

@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANKER_MODELS_DIR", str(tmp_path / "models"))
    return CliRunner()


@pytest.fixture
def requests_file(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps({"query": r.query, "documents": r.documents}) + "\n"
                            for r in _requests(count=2)))
    return path


def test_compare_command_json(runner, converted, requests_file):
    done = runner.invoke(cli, ["compare", str(converted("f32")), str(converted("q8_0")),
                               "--requests", str(requests_file), "--threads", "2", "--json"])
    assert done.exit_code == 0, done.output
    body = json.loads(done.stdout)
    assert body["a"]["file_type"] == "f32" and body["b"]["file_type"] == "q8_0"
    assert body["agreement"]["queries"] == 2
    assert set(body["agreement"]) == {"queries", "kendall_tau", "top_1", "top_5", "top_10",
                                      "max_abs_diff", "mean_abs_diff"}
    assert converted("q8_0").name in done.stderr  # one progress bar per model


def test_compare_counts_two_files_of_one_name_apart(runner, converted, requests_file, tmp_path):
    """Labelled by name, their progress merged into one line, "m.gguf: 4/2"."""
    for folder, type_name in (("a", "f32"), ("b", "q8_0")):
        (tmp_path / folder).mkdir()
        os.link(converted(type_name), tmp_path / folder / "m.gguf")
    done = runner.invoke(cli, ["compare", str(tmp_path / "a" / "m.gguf"),
                               str(tmp_path / "b" / "m.gguf"), "--requests", str(requests_file)])
    assert done.exit_code == 0, done.output
    counts = [line for line in done.stderr.splitlines() if "m.gguf: " in line]
    assert counts == [f"{tmp_path / 'a' / 'm.gguf'}: 2/2", f"{tmp_path / 'b' / 'm.gguf'}: 2/2"]


def test_compare_command_table_on_a_beir_dataset(runner, converted, tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "text": text}) + "\n"
        for i, text in enumerate(_requests(count=1, documents=8)[0].documents)))
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "harbor city"}\n')
    (folder / "qrels" / "test.tsv").write_text("q1\td3\t1\n")
    (tmp_path / "run.trec").write_text("".join(f"q1 Q0 d{i} {i + 1} {10 - i} t\n"
                                               for i in range(8)))
    done = runner.invoke(cli, ["compare", str(converted("f32")), str(converted("q8_0")),
                               "--dataset", str(folder), "--run", str(tmp_path / "run.trec"),
                               "--top-k", "5", "--threads", "2"])
    assert done.exit_code == 0, done.output
    assert "agreement over 1 queries" in done.stdout
    for label in ("Kendall tau", "top-1 agreement", "top-10 agreement", "max |score diff|",
                  "seconds/query", "size MB", "q8_0"):
        assert label in done.stdout


def test_ladder_command_over_a_directory(runner, converted, requests_file, tmp_path):
    folder = tmp_path / "jr3"
    folder.mkdir()
    for type_name in ("f32", "f16", "q8_0"):
        os.link(converted(type_name), folder / converted(type_name).name)
    done = runner.invoke(cli, ["compare", "--ladder", str(folder), "--requests",
                               str(requests_file), "--max-queries", "1", "--threads", "2"])
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["type", "size", "MB", "s/query", "tau", "top-1", "top-5",
                                "top-10", "max|diff|"]
    assert [line.split()[0] for line in lines[1:]] == ["f32", "f16", "q8_0"]
    assert lines[1].endswith("reference")  # the largest file, by default


def test_compare_command_usage_errors(runner, converted, requests_file, tmp_path):
    model = str(converted("q8_0"))
    done = runner.invoke(cli, ["compare", model, "--requests", str(requests_file)])
    assert done.exit_code == 2 and "two models" in done.output
    done = runner.invoke(cli, ["compare", model, model])
    assert done.exit_code == 2 and "--requests FILE or --dataset DIR" in done.output
    done = runner.invoke(cli, ["compare", model, model, "--requests", str(requests_file), "--bm25"])
    assert done.exit_code == 2 and "--bm25: for --dataset only" in done.output
    done = runner.invoke(cli, ["compare", model, model, "--requests", str(requests_file),
                               "--reference", model])
    assert done.exit_code == 2 and "--reference goes with --ladder" in done.output
    done = runner.invoke(cli, ["compare", "--ladder", str(tmp_path), "--requests",
                               str(requests_file)])
    assert done.exit_code == 1 and "holds no .gguf files" in done.output


def test_compare_command_checks_every_model_first(runner, converted, requests_file,
                                                  truncated_model, tmp_path):
    for arguments in ([str(converted("f32")), str(truncated_model)],
                      ["--ladder", str(converted("f32")), str(truncated_model)]):
        done = runner.invoke(cli, ["compare", *arguments, "--requests", str(requests_file),
                                   "--threads", "2"])
        assert done.exit_code == 1, done.output
        assert "truncated.gguf: truncated GGUF metadata" in done.output
        assert converted("f32").name not in done.stderr  # no progress bar: nothing scored
    # Before a dataset is loaded too (BM25 indexes a whole corpus): this one does not exist.
    done = runner.invoke(cli, ["compare", str(converted("f32")), str(truncated_model),
                               "--dataset", str(tmp_path / "nowhere"), "--bm25"])
    assert done.exit_code == 1 and "truncated GGUF metadata" in done.output


@pytest.mark.parametrize("options", [["--top-k", "2"], ["--split", "dev"],
                                     ["--top-k", "100", "--split", "test"]])
def test_dataset_options_are_refused_with_requests(runner, converted, requests_file, options):
    """--top-k and --split were dropped without a word: agreement "over the top 2" covered
    every document. Given at their default values they are refused all the same."""
    model = str(converted("f32"))
    done = runner.invoke(cli, ["compare", model, model, "--requests", str(requests_file),
                               *options])
    assert done.exit_code == 2, done.output
    given = ", ".join(option for option in options if option.startswith("--"))
    assert f"{given}: for --dataset only; --requests FILE compares every document" in done.output
