"""Evaluation: metrics on hand-made qrels and runs (cross-checked with trec_eval through
pytrec_eval), BEIR and TREC parsing, BM25 candidates, and `eval` end to end."""
from __future__ import annotations

import json
import math
import shutil
import sys

import pytest
from click.testing import CliRunner

from reranker.evaluation.beir import CorpusDocument, load_dataset
from reranker.evaluation.compare import requests_from_evaluation
from reranker.evaluation.errors import DatasetError, MissingDependencyError
from reranker.evaluation.first_stage import bm25_candidates
from reranker.evaluation.metrics import (evaluate_rankings, ndcg_at_k, query_metrics,
                                         recall_at_k, reciprocal_rank_at_k)
from reranker.evaluation.rerank_eval import evaluate_reranking, prepare_evaluation
from reranker.evaluation.trec_run import read_run, run_rankings
from reranker.reranker import rank_scores
from reranker.cli.main import cli

# -- metrics by hand ----------------------------------------------------------------------

GRADED = {"a": 2, "b": 1, "c": 0}  # c is judged not relevant


def test_ndcg_by_hand():
    ranking = ["c", "b", "x", "a"]  # relevant at ranks 2 (gain 1) and 4 (gain 2)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    found = 1 / math.log2(3) + 2 / math.log2(5)
    assert ndcg_at_k(ranking, GRADED, 10) == pytest.approx(found / ideal)
    assert ndcg_at_k(ranking, GRADED, 2) == pytest.approx((1 / math.log2(3)) / ideal)
    assert ndcg_at_k(ranking, GRADED, 1) == 0.0
    assert ndcg_at_k(["a", "b", "c"], GRADED, 10) == pytest.approx(1.0)
    assert ndcg_at_k([], GRADED, 10) == 0.0
    # the ideal ordering is cut at k too: one perfect document of two is perfect at k=1
    assert ndcg_at_k(["a"], GRADED, 1) == pytest.approx(1.0)


def test_negative_judgments_count_as_not_relevant():
    assert ndcg_at_k(["n", "b"], {"n": -1, "b": 1}, 10) == pytest.approx(1 / math.log2(3))


def test_reciprocal_rank_within_the_cutoff():
    assert reciprocal_rank_at_k(["c", "x", "b", "a"], GRADED, 10) == pytest.approx(1 / 3)
    assert reciprocal_rank_at_k(["c", "x", "b", "a"], GRADED, 2) == 0.0
    assert reciprocal_rank_at_k(["a"], GRADED, 10) == 1.0


def test_recall_counts_relevant_documents_in_the_first_k():
    assert recall_at_k(["a", "x", "b"], GRADED, 2) == 0.5
    assert recall_at_k(["a", "x", "b"], GRADED, 3) == 1.0
    assert recall_at_k(["c"], GRADED, 10) == 0.0
    assert recall_at_k(["a"], {"a": 0}, 10) == 0.0  # nothing relevant: 0, as trec_eval


@pytest.mark.parametrize("metric", [ndcg_at_k, reciprocal_rank_at_k, recall_at_k])
@pytest.mark.parametrize("k", [0, -1])
def test_a_cutoff_below_one_is_refused(metric, k):
    """ranking[:-1] is every document but the last: recall@-1 came out 1.0."""
    with pytest.raises(ValueError, match=rf"^k must be a positive integer, got {k}$"):
        metric(["a", "b"], {"a": 1}, k)


def test_averages_skip_queries_without_relevant_documents_and_count_missing_ones_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {"c": 1}}
    rankings = {"q1": ["a"], "q2": ["b"]}  # q3 has no ranking at all
    means = evaluate_rankings(rankings, qrels, recall_k=5)
    assert means == {"ndcg@10": 0.5, "mrr@10": 0.5, "recall@5": 0.5}


# A small run with graded judgments, an unjudged document, a tie and a query
# absent from the qrels; trec_eval orders ties by document id, descending.
CHECK_QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d9": 1},
    "q2": {"d4": 1},
    "q3": {"d2": 2, "d5": 1, "d6": 1},
}
CHECK_RUN = {
    "q1": {"d3": 5.0, "d1": 4.0, "d7": 4.0, "d2": 1.0, "d8": 0.5},
    "q2": {"d5": 3.0, "d6": 2.0, "d1": 1.5, "d7": 1.2, "d8": 1.1, "d9": 1.0, "d3": 0.9,
           "d2": 0.8, "d0": 0.7, "da": 0.6, "db": 0.5, "d4": 0.1},
    "q3": {"d6": 2.0, "d5": 2.0, "d2": 1.0},
    "q9": {"d1": 1.0},
}


def test_run_order_follows_trec_eval():
    rankings = run_rankings(CHECK_RUN)
    assert rankings["q1"] == ["d3", "d7", "d1", "d2", "d8"]  # d7 before d1: tie, id descending
    assert rankings["q3"] == ["d6", "d5", "d2"]


def test_metrics_by_hand_on_the_check_run():
    rankings = run_rankings(CHECK_RUN)
    # q1: d3 (0), d7 (unjudged), d1 (2), d2 (1): ideal 2, 1, 1
    ideal = 2 + 1 / math.log2(3) + 1 / math.log2(4)
    assert query_metrics(rankings["q1"], CHECK_QRELS["q1"], recall_k=4) == pytest.approx({
        "ndcg@10": (2 / math.log2(4) + 1 / math.log2(5)) / ideal,
        "mrr@10": 1 / 3, "recall@4": 2 / 3})
    # q2: the only relevant document is 12th, past every cutoff of 10
    assert query_metrics(rankings["q2"], CHECK_QRELS["q2"], recall_k=4) == {
        "ndcg@10": 0.0, "mrr@10": 0.0, "recall@4": 0.0}


def test_metrics_equal_trec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rankings = run_rankings(CHECK_RUN)
    evaluator = pytrec_eval.RelevanceEvaluator(CHECK_QRELS, {"ndcg_cut.10", "ndcg_cut.3",
                                                             "recall.2", "recall.10"})
    expected = evaluator.evaluate(CHECK_RUN)
    # trec_eval's recip_rank has no cutoff: give it the run cut at 10, as MRR@10 sees it.
    cut_run = {q: {d: CHECK_RUN[q][d] for d in ranking[:10]} for q, ranking in rankings.items()}
    expected_rr = pytrec_eval.RelevanceEvaluator(CHECK_QRELS, {"recip_rank"}).evaluate(cut_run)
    assert set(expected) == set(CHECK_QRELS)  # the query without judgments is ignored by both
    for query_id, judgments in CHECK_QRELS.items():
        ranking = rankings[query_id]
        assert ndcg_at_k(ranking, judgments, 10) == pytest.approx(expected[query_id]["ndcg_cut_10"])
        assert ndcg_at_k(ranking, judgments, 3) == pytest.approx(expected[query_id]["ndcg_cut_3"])
        assert recall_at_k(ranking, judgments, 2) == pytest.approx(expected[query_id]["recall_2"])
        assert recall_at_k(ranking, judgments, 10) == pytest.approx(expected[query_id]["recall_10"])
        assert reciprocal_rank_at_k(ranking, judgments, 10) == pytest.approx(
            expected_rr[query_id]["recip_rank"])
    means = evaluate_rankings(rankings, CHECK_QRELS, recall_k=10)
    assert means["ndcg@10"] == pytest.approx(
        sum(v["ndcg_cut_10"] for v in expected.values()) / len(expected))


# -- TREC run files ------------------------------------------------------------------------

def test_read_run_ignores_the_rank_column(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 0.5 bm25\nq1 Q0 d2 2 0.9 bm25\n\nq2\tQ0\td3\t1\t-1.5e1\tbm25\n")
    run = read_run(path)
    assert run == {"q1": {"d1": 0.5, "d2": 0.9}, "q2": {"d3": -15.0}}
    assert run_rankings(run)["q1"] == ["d2", "d1"]


@pytest.mark.parametrize("content,message", [
    ("q1 Q0 d1 1 0.5\n", "run.trec:1: expected 6 columns"),
    ("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 high t\n", "run.trec:2: score 'high' is not a number"),
    ("q1 Q0 d1 first 0.5 t\n", "run.trec:1: rank 'first' is not an integer"),
    ("q1 Q0 d1 1 nan t\n", "run.trec:1: score is NaN"),
    ("q1 Q0 d1 1 0.5 t\n\nq1 Q0 d1 2 0.4 t\n", "run.trec:3: document 'd1' appears twice"),
    (b"q1 Q0 d1 1 0.5 t\nq1 Q0 d\xe92 2 0.4 t\n", "run.trec:2: byte 0xe9 at character 8"),
    ("", "run.trec holds no rows"),
    ("\n  \n", "run.trec holds no rows"),
])
def test_bad_run_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "run.trec"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(DatasetError, match=message):
        read_run(path)


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    """Windows editors and PowerShell start UTF-8 files with one: the first row's query id
    became "\ufeffq1", and the run lost that row without a word."""
    path = tmp_path / "run.trec"
    path.write_bytes(b"\xef\xbb\xbfq1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4 t\n")
    assert read_run(path) == {"q1": {"d1": 0.5, "d2": 0.4}}


def test_missing_run_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_run(tmp_path / "nope.trec")


# -- BEIR datasets -----------------------------------------------------------------------------

CORPUS = [
    {"_id": "d1", "title": "Paris", "text": "Paris is the capital and largest city of France."},
    {"_id": "d2", "title": "France", "text": "France is a country in Western Europe."},
    {"_id": "d3", "title": "", "text": "Berlin is the capital of Germany."},
    {"_id": "d4", "title": "Bananas", "text": "Bananas are a yellow fruit rich in potassium."},
    {"_id": "d5", "title": "Rivers", "text": "The Seine flows through Paris to the sea."},
    {"_id": 6, "title": "Apples", "text": "Apples grow on trees in orchards."},
]
QUERIES = [
    {"_id": "q1", "text": "What is the capital of France?"},
    {"_id": "q2", "text": "Which fruit is yellow?"},
    {"_id": "q3", "text": "Rivers of Germany"},
    {"_id": "q4", "text": "apple orchards"},
    {"_id": "q5", "text": "A query of another split"},
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\nq2\td4\t1\nq3\td3\t0\nq4\t6\t1\n"
# q1: d2 3.0, d5 2.0, d1 1.0, d3 0.5;  q2: d3 5.0, d4 4.0;  q4: none;  q5: not judged
RUN = ("q1 Q0 d2 1 3.0 t\nq1 Q0 d5 2 2.0 t\nq1 Q0 d1 3 1.0 t\nq1 Q0 d3 4 0.5 t\n"
       "q2 Q0 d3 1 5.0 t\nq2 Q0 d4 2 4.0 t\nq5 Q0 d1 1 1.0 t\n")


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def beir_dir(tmp_path):
    folder = tmp_path / "tiny-beir"
    (folder / "qrels").mkdir(parents=True)
    _write_jsonl(folder / "corpus.jsonl", CORPUS)
    _write_jsonl(folder / "queries.jsonl", QUERIES)
    (folder / "qrels" / "test.tsv").write_text(QRELS)
    (tmp_path / "run.trec").write_text(RUN)
    return folder


def test_byte_order_marks_and_repeated_judgments_are_read(beir_dir):
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        path = beir_dir / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with open(beir_dir / "qrels" / "test.tsv", "a") as qrels:
        qrels.write("q1\td1\t2\n")  # the same judgment again
    dataset = load_dataset(beir_dir)
    assert set(dataset.corpus) == {"d1", "d2", "d3", "d4", "d5", "6"}
    assert set(dataset.queries) == {"q1", "q2", "q3", "q4", "q5"}
    assert dataset.qrels["q1"] == {"d1": 2, "d2": 1}


def test_load_a_beir_dataset(beir_dir):
    dataset = load_dataset(beir_dir)
    assert dataset.name == "tiny-beir" and dataset.split == "test"
    assert set(dataset.corpus) == {"d1", "d2", "d3", "d4", "d5", "6"}  # numeric ids as strings
    assert dataset.corpus["d1"].passage == "Paris Paris is the capital and largest city of France."
    assert dataset.corpus["d3"].passage == "Berlin is the capital of Germany."  # no title
    assert dataset.qrels == {"q1": {"d1": 2, "d2": 1}, "q2": {"d4": 1}, "q3": {"d3": 0},
                             "q4": {"6": 1}}
    assert dataset.judged_query_ids() == ["q1", "q2", "q4"]
    assert set(load_dataset(beir_dir, only_documents={"d1"}).corpus) == {"d1"}


def test_missing_parts_of_the_layout(beir_dir):
    with pytest.raises(DatasetError, match=r"no qrels for split 'dev'.*splits found: test"):
        load_dataset(beir_dir, "dev")
    (beir_dir / "corpus.jsonl").unlink()
    with pytest.raises(DatasetError, match="no corpus.jsonl in .*BEIR layout"):
        load_dataset(beir_dir)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(beir_dir / "nope")


@pytest.mark.parametrize("file,content,message", [
    ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": \n',
     r"corpus.jsonl:2: not valid JSON"),
    ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n["d2"]\n',
     r"corpus.jsonl:2: expected a JSON object"),
    ("corpus.jsonl", '{"text": "no id"}\n', r'corpus.jsonl:1: expected a string "_id"'),
    ("corpus.jsonl", '{"_id": "d1", "text": 5}\n', r'corpus.jsonl:1: "text" must be a string'),
    ("corpus.jsonl", '{"_id": "d1"}\n\n{"_id": "d1"}\n',
     r"corpus.jsonl:3: duplicate _id 'd1' \(first on line 1\)"),
    ("queries.jsonl", '{"_id": "q1"}\n', r"queries.jsonl: query 'q1' has no \"text\""),
    ("qrels/test.tsv", "q1\td1\t1\nq1\td2\n", r"test.tsv:2: expected 3 tab-separated columns"),
    ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\tyes\n",
     r"test.tsv:2: relevance 'yes' is not an integer"),
    ("qrels/test.tsv", "q1\td1\t1\nq7\td1\t1\n",
     r"test.tsv:2: query 'q7' is not in .*queries.jsonl"),
    # A first line with a number is a judgment, not a header to skip.
    ("qrels/test.tsv", "q1\td1\t1.0\nq2\td4\t1\n",
     r"test.tsv:1: relevance '1.0' is not an integer"),
    ("qrels/test.tsv", "q1\td1\t2\nq2\td4\t1\nq1\td1\t0\n",
     r"test.tsv:3: query 'q1' and document 'd1' were judged 2 on an earlier line and 0 here"),
    ("corpus.jsonl", b'{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "caf\xe9"}\n',
     r"corpus.jsonl:2: byte 0xe9 at character 27 is not UTF-8"),  # Latin-1
    ("queries.jsonl", b'\xff\xfe{\x00', r"queries.jsonl:1: byte 0xff at character 1"),  # UTF-16
    ("qrels/test.tsv", b"q1\td1\t1\nq\x961\td1\t1\n", r"test.tsv:2: byte 0x96 at character 2"),
    ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "emoji \\ud83d cut"}\n',
     r'corpus.jsonl:2: "text" has an unpaired surrogate \(\\ud83d\) at character 7'),
    ("queries.jsonl", '{"_id": "q1", "text": "\\udfff"}\n',
     r'queries.jsonl:1: "text" has an unpaired surrogate'),
    ("corpus.jsonl", '{"_id": "d1", "text": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
     r"corpus.jsonl:1: not valid JSON \(arrays or objects nested too deeply"),
])
def test_malformed_files_name_file_and_line(beir_dir, file, content, message):
    if isinstance(content, str):
        content = content.encode("utf-8")
    (beir_dir / file).write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(beir_dir)


# -- BM25 first stage ------------------------------------------------------------------------

def test_bm25_candidates(beir_dir):
    pytest.importorskip("bm25s")
    dataset = load_dataset(beir_dir)
    candidates = bm25_candidates(dataset.corpus, {"q1": "capital of France", "q2": "zebra"},
                                 depth=3)
    assert candidates["q1"][0] in {"d1", "d2"} and len(candidates["q1"]) <= 3
    assert set(candidates["q1"]) <= {"d1", "d2", "d3"}  # documents sharing a term only
    assert candidates["q2"] == []


@pytest.mark.filterwarnings("error")  # bm25s's division by zero warned before it failed
def test_bm25_on_a_corpus_without_terms_says_so():
    pytest.importorskip("bm25s")
    corpus = {"d1": CorpusDocument("", ""), "d2": CorpusDocument("The", "of the and")}
    with pytest.raises(DatasetError, match=r"^the corpus has no terms BM25 can index \(its 2 "
                                           r"documents are empty or only stop words\)"):
        bm25_candidates(corpus, {"q1": "France"}, depth=3)


def test_bm25_without_the_package_says_what_to_install(beir_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bm25s", None)  # makes `import bm25s` fail
    dataset = load_dataset(beir_dir)
    with pytest.raises(MissingDependencyError,
                       match=r"pip install -e '\.\[eval\]' in this project's folder"):
        bm25_candidates(dataset.corpus, {"q1": "France"}, depth=3)


# -- eval end to end -------------------------------------------------------------------------

def test_a_run_for_other_queries_is_refused(beir_dir, tmp_path):
    """A run made for another dataset or split: every metric would be 0, silently."""
    (tmp_path / "other.trec").write_text("q9 Q0 d1 1 3.0 x\nq8 Q0 d2 1 2.0 x\n")
    with pytest.raises(DatasetError, match=r"ranks none of the 3 judged queries of split "
                                           r"'test' \(it ranks q8, q9\); is it a run for"):
        prepare_evaluation(beir_dir, run_file=tmp_path / "other.trec")


def test_evaluate_reranking_on_a_run(beir_dir, ranker_for):
    ranker = ranker_for("q8_0")
    prepared = prepare_evaluation(beir_dir, run_file=beir_dir.parent / "run.trec", top_k=3)
    assert prepared.query_ids == ["q1", "q2", "q4"]
    assert set(prepared.dataset.corpus) == {"d1", "d2", "d3", "d4", "d5"}  # the run's top 3
    seen = []
    report = evaluate_reranking(ranker, prepared, top_k=3,
                                progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert (report.queries, report.queries_without_candidates,
            report.queries_without_relevant_documents) == (3, 1, 1)
    assert report.documents_reranked == 5 and report.seconds > 0
    # Before, by hand: q1 ranks d2 (1), d5, d1 (2), d3; q2 ranks d3, d4 (1); q4 has nothing.
    q1_ndcg = (1 + 2 / math.log2(4)) / (2 + 1 / math.log2(3))
    assert report.before == pytest.approx({"ndcg@10": (q1_ndcg + 1 / math.log2(3)) / 3,
                                           "mrr@10": (1 + 1 / 2) / 3, "recall@3": 2 / 3})
    # After: the reranker's order of the top 3, then the rest in run order.
    q1_head = ["d2", "d5", "d1"]
    texts = prepared.dataset.passages("q1", q1_head)
    order = [q1_head[r.index] for r in rank_scores(ranker.score(QUERIES[0]["text"], texts), texts)]
    expected_q1 = query_metrics(order + ["d3"], prepared.dataset.qrels["q1"], recall_k=3)
    assert report.per_query[0].query_id == "q1"
    assert report.per_query[0].after == pytest.approx(expected_q1)
    assert report.after["recall@3"] == report.before["recall@3"]  # reranking only reorders
    assert report.per_query[2].before == report.per_query[2].after == {
        "ndcg@10": 0.0, "mrr@10": 0.0, "recall@3": 0.0}


class _MustNotScore:
    """A ranker for checks that have to refuse before any query is scored."""
    model_path = "never-loaded.gguf"

    def score(self, query, documents):
        raise AssertionError("a query was scored before the arguments were refused")


def test_reranking_deeper_than_prepared_is_refused(beir_dir):
    """Only the run's top k documents were loaded: a deeper top_k blamed the corpus
    ("candidate 'd5' ... is not in corpus.jsonl") for a document that is in it."""
    prepared = prepare_evaluation(beir_dir, run_file=beir_dir.parent / "run.trec", top_k=1)
    deeper = (r"^top_k=3 is deeper than the 1 candidates per query prepare_evaluation kept; "
              r"prepare with top_k=3")
    with pytest.raises(ValueError, match=deeper):
        evaluate_reranking(_MustNotScore(), prepared, top_k=3)
    with pytest.raises(ValueError, match=deeper):
        requests_from_evaluation(prepared, 3)
    with pytest.raises(ValueError, match=r"^ndcg_k must be a positive integer, got 0$"):
        evaluate_reranking(_MustNotScore(), prepared, ndcg_k=0)
    # Without a top_k, the depth prepared.
    assert prepared.top_k == 1
    assert [len(r.documents) for r in requests_from_evaluation(prepared)] == [1, 1]


def test_a_run_candidate_missing_from_the_corpus_is_refused_before_any_model(beir_dir,
                                                                               tmp_path):
    (tmp_path / "stray.trec").write_text("q1 Q0 d1 1 3.0 t\nq1 Q0 d9 2 2.0 t\n"
                                         "q2 Q0 d4 1 1.0 t\n")
    with pytest.raises(DatasetError, match=r"candidate 'd9' of query 'q1' is not in "
                                           r".*corpus.jsonl"):
        prepare_evaluation(beir_dir, run_file=tmp_path / "stray.trec", top_k=2)
    # Past the top k it is only an unjudged id in the ranking, as before.
    assert prepare_evaluation(beir_dir, run_file=tmp_path / "stray.trec", top_k=1).top_k == 1


def test_prepare_needs_exactly_one_first_stage(beir_dir):
    with pytest.raises(ValueError, match="exactly one"):
        prepare_evaluation(beir_dir)
    with pytest.raises(ValueError, match="exactly one"):
        prepare_evaluation(beir_dir, run_file=beir_dir.parent / "run.trec", bm25=True)
    (beir_dir / "qrels" / "test.tsv").write_text("q1\td1\t0\n")
    with pytest.raises(DatasetError, match=r"test.tsv: no query has a relevant document"):
        prepare_evaluation(beir_dir, run_file=beir_dir.parent / "run.trec")


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANKER_MODELS_DIR", str(tmp_path / "models"))
    return CliRunner()


def test_eval_command_with_a_json_report(runner, beir_dir, converted, tmp_path):
    report_path = tmp_path / "report.json"
    done = runner.invoke(cli, ["eval", str(beir_dir), "--run", str(tmp_path / "run.trec"),
                               "--top-k", "3", "-m", str(converted("q8_0")), "--threads", "2",
                               "--json-report", str(report_path)])
    assert done.exit_code == 0, done.output
    assert "nDCG@10" in done.stdout and "MRR@10" in done.stdout and "Recall@3" in done.stdout
    assert "3 queries, top 3 reranked" in done.stdout
    assert "queries" in done.stderr  # the progress bar's label
    report = json.loads(report_path.read_text())
    assert set(report) == {"dataset", "split", "model", "first_stage", "top_k", "queries",
                           "queries_without_relevant_documents", "queries_without_candidates",
                           "documents_reranked", "seconds", "seconds_per_query", "before",
                           "after", "per_query"}
    assert report["model"] == converted("q8_0").name and report["first_stage"] == "run run.trec"
    assert set(report["before"]) == set(report["after"]) == {"ndcg@10", "mrr@10", "recall@3"}
    assert [q["query_id"] for q in report["per_query"]] == ["q1", "q2", "q4"]
    assert set(report["per_query"][0]) == {"query_id", "reranked", "before", "after"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_eval_command_with_bm25(runner, beir_dir, converted):
    pytest.importorskip("bm25s")
    done = runner.invoke(cli, ["eval", str(beir_dir), "--bm25", "--top-k", "4", "--max-queries",
                               "2", "-m", str(converted("q8_0")), "--threads", "2"])
    assert done.exit_code == 0, done.output
    assert "first stage bm25" in done.stdout and "2 queries, top 4 reranked" in done.stdout


def test_eval_command_errors_are_one_line(runner, beir_dir, converted, tmp_path):
    model = str(converted("q8_0"))
    done = runner.invoke(cli, ["eval", str(beir_dir), "-m", model])
    assert done.exit_code == 2 and "either --run FILE or --bm25" in done.output
    (tmp_path / "bad.trec").write_text("q1 Q0 d1\n")
    done = runner.invoke(cli, ["eval", str(beir_dir), "--run", str(tmp_path / "bad.trec"),
                               "-m", model])
    assert done.exit_code == 1 and "bad.trec:1: expected 6 columns" in done.output
    assert "Traceback" not in done.output
    done = runner.invoke(cli, ["eval", str(beir_dir), "--run", str(tmp_path / "run.trec"),
                               "-m", model, "--json-report", str(tmp_path / "no" / "r.json")])
    assert done.exit_code == 2 and "does not exist" in done.output


def test_the_report_never_overwrites_an_input(runner, beir_dir, converted, tmp_path):
    model = tmp_path / "model.gguf"
    shutil.copy(converted("q8_0"), model)
    inputs = [tmp_path / "run.trec", model, beir_dir / "corpus.jsonl",
              beir_dir / "qrels" / "test.tsv"]
    before = [path.read_bytes() for path in inputs]
    sidecar = tmp_path / "projector.safetensors"  # Jina's published layout reads it
    sidecar.write_bytes(b"a projector")
    inputs.append(sidecar)
    before.append(sidecar.read_bytes())
    for report in inputs:
        done = runner.invoke(cli, ["eval", str(beir_dir), "--run", str(tmp_path / "run.trec"),
                                   "-m", str(model), "--json-report", str(report)])
        assert done.exit_code == 2 and "writing it would destroy that input" in done.output
    assert [path.read_bytes() for path in inputs] == before


def test_an_unwritable_report_directory_stops_eval_before_it_runs(runner, beir_dir, tmp_path,
                                                                  unwritable_dir):
    done = runner.invoke(cli, ["eval", str(beir_dir), "--run", str(tmp_path / "run.trec"),
                               "-m", "not-even-loaded.gguf", "--json-report",
                               str(unwritable_dir / "r.json")])
    assert done.exit_code == 2 and "is not writable" in done.output
