"""Retrieval datasets in the BEIR layout: corpus.jsonl, queries.jsonl and qrels/<split>.tsv.

    corpus.jsonl    {"_id": "d1", "title": "...", "text": "..."} per line
    queries.jsonl   {"_id": "q1", "text": "..."} per line
    qrels/test.tsv  query-id <TAB> corpus-id <TAB> score, after an optional header line
"""
from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from reranker.evaluation.errors import DatasetError
from reranker.evaluation.text_files import numbered_lines
from reranker.evaluation.metrics import Qrels, queries_with_relevant_documents
from reranker.json_text import parse_json
from reranker.reranker import unpaired_surrogate


@dataclass(frozen=True)
class CorpusDocument:
    title: str
    text: str

    @property
    def passage(self) -> str:
        """What the reranker reads: title and text joined as BEIR's own reranking does."""
        return f"{self.title} {self.text}".strip()


@dataclass(frozen=True)
class BeirDataset:
    directory: Path
    split: str
    corpus: dict[str, CorpusDocument]
    queries: dict[str, str]
    qrels: Qrels

    @property
    def name(self) -> str:
        return self.directory.resolve().name

    def judged_query_ids(self) -> list[str]:
        """Queries of the split with at least one relevant document, in qrels order."""
        return queries_with_relevant_documents(self.qrels)

    def check_candidates(self, query_id: str, doc_ids: Sequence[str]) -> None:
        """DatasetError naming the first of `doc_ids` that the corpus does not hold."""
        for doc_id in doc_ids:
            if doc_id not in self.corpus:
                raise DatasetError(f"candidate {doc_id!r} of query {query_id!r} is not in "
                                   f"{self.directory / 'corpus.jsonl'}")

    def passages(self, query_id: str, doc_ids: Sequence[str]) -> list[str]:
        self.check_candidates(query_id, doc_ids)
        return [self.corpus[doc_id].passage for doc_id in doc_ids]


def dataset_files(directory: str | Path, split: str = "test") -> list[Path]:
    """The files a split of the dataset is read from (whether or not they exist)."""
    directory = Path(directory)
    return [directory / "corpus.jsonl", directory / "queries.jsonl",
            directory / "qrels" / f"{split}.tsv"]


def load_dataset(directory: str | Path, split: str = "test", *,
                 only_documents: Collection[str] | None = None) -> BeirDataset:
    """Load a BEIR dataset directory; `only_documents` keeps just those corpus entries
    (the candidates of a run), which saves memory on large corpora."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"dataset directory {directory} does not exist")
    corpus_path, queries_path, qrels_path = dataset_files(directory, split)
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (directory / "qrels").glob("*.tsv"))
        found = ", ".join(splits) if splits else "none"
        raise DatasetError(f"no qrels for split {split!r}: {qrels_path} does not exist "
                           f"(splits found: {found})")
    _require(queries_path)
    _require(corpus_path)
    queries = load_queries(queries_path)
    qrels = load_qrels(qrels_path, known_queries=queries, queries_path=queries_path)
    return BeirDataset(directory, split, load_corpus(corpus_path, only_documents), queries, qrels)


def _require(path: Path) -> None:
    if not path.is_file():
        raise DatasetError(f"no {path.name} in {path.parent} (expected the BEIR layout: "
                           "corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")


def _jsonl_records(path: Path, text_fields: Sequence[str]) -> Iterator[tuple[str, dict]]:
    """(id, record) per non-blank line; ids are strings (some datasets write numbers)."""
    seen: dict[str, int] = {}
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except json.JSONDecodeError as e:
            raise DatasetError.at(path, number, f"not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DatasetError.at(path, number, "expected a JSON object")
        raw_id = record.get("_id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or raw_id == "":
            raise DatasetError.at(path, number, 'expected a string "_id"')
        for field in text_fields:
            value = record.get(field, "")
            if not isinstance(value, str):
                raise DatasetError.at(path, number, f'"{field}" must be a string')
            position = unpaired_surrogate(value)  # JSON's "\ud83d" escape can write one
            if position is not None:
                raise DatasetError.at(path, number, f'"{field}" has an unpaired surrogate '
                                      f"({repr(value[position])[1:-1]}) at character "
                                      f"{position + 1}, which is not text")
        record_id = str(raw_id)
        if record_id in seen:
            raise DatasetError.at(path, number, f"duplicate _id {record_id!r} "
                                                f"(first on line {seen[record_id]})")
        seen[record_id] = number
        yield record_id, record


def load_corpus(path: str | Path,
                only_documents: Collection[str] | None = None) -> dict[str, CorpusDocument]:
    corpus = {}
    for doc_id, record in _jsonl_records(Path(path), ("title", "text")):
        if only_documents is None or doc_id in only_documents:
            corpus[doc_id] = CorpusDocument(record.get("title", ""), record.get("text", ""))
    return corpus


def load_queries(path: str | Path) -> dict[str, str]:
    path = Path(path)
    queries = {}
    for query_id, record in _jsonl_records(path, ("text",)):
        if "text" not in record:
            raise DatasetError(f'{path}: query {query_id!r} has no "text"')
        queries[query_id] = record["text"]
    return queries


def load_qrels(path: str | Path, *, known_queries: Collection[str] | None = None,
               queries_path: Path | None = None) -> Qrels:
    """Relevance judgments; an optional header line (query-id, corpus-id, score) is skipped."""
    path = Path(path)
    qrels: Qrels = {}
    first_line = True
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        may_be_header, first_line = first_line, False
        columns = line.rstrip("\r\n").split("\t")
        if len(columns) != 3:
            raise DatasetError.at(path, number,
                                  f"expected 3 tab-separated columns (query-id, corpus-id, "
                                  f"score), got {len(columns)}")
        query_id, doc_id, score = (c.strip() for c in columns)
        if may_be_header and not _is_number(score):  # the header BEIR writes
            continue
        try:
            relevance = int(score)
        except ValueError:
            raise DatasetError.at(path, number,
                                  f"relevance {score!r} is not an integer") from None
        if known_queries is not None and query_id not in known_queries:
            raise DatasetError.at(path, number, f"query {query_id!r} is not in "
                                                f"{queries_path or 'the queries'}")
        judged = qrels.setdefault(query_id, {})
        if judged.get(doc_id, relevance) != relevance:
            raise DatasetError.at(path, number,
                                  f"query {query_id!r} and document {doc_id!r} were judged "
                                  f"{judged[doc_id]} on an earlier line and {relevance} here; "
                                  "keep one judgment")
        judged[doc_id] = relevance
    return qrels


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
