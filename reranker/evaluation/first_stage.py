"""First-stage candidates to rerank: a TREC run file, or BM25 over the corpus (bm25s)."""
from __future__ import annotations

from collections.abc import Mapping

from reranker.evaluation.beir import CorpusDocument
from reranker.evaluation.errors import DatasetError, MissingDependencyError
from reranker.extras import install_hint

# query id -> candidate document ids, best first
Candidates = dict[str, list[str]]

# bm25s's own list; the reranker is multilingual, but BM25 baselines on BEIR drop English ones.
DEFAULT_STOPWORDS = "en"


def _import_bm25s():
    try:
        import bm25s
    except ImportError:
        raise MissingDependencyError("the BM25 first stage needs the bm25s package: "
                                     f"{install_hint('eval')} (or take the candidates "
                                     "from a TREC run file)") from None
    return bm25s


def bm25_candidates(corpus: Mapping[str, CorpusDocument], queries: Mapping[str, str],
                    depth: int, *, stopwords: str | None = DEFAULT_STOPWORDS) -> Candidates:
    """The best `depth` documents of each query by BM25 (bm25s, Lucene's formula).

    Documents sharing no term with a query score 0 and are left out, as a Lucene
    index would not return them either.
    """
    if depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    bm25s = _import_bm25s()
    doc_ids = list(corpus)
    if not doc_ids:
        raise DatasetError("the corpus is empty: BM25 has nothing to retrieve")
    query_ids = list(queries)
    if not query_ids:
        return {}
    corpus_tokens = bm25s.tokenize([corpus[d].passage for d in doc_ids], stopwords=stopwords,
                                   show_progress=False)
    if not corpus_tokens.vocab:
        # bm25s would divide by a zero average length, then fail on an empty max().
        raise DatasetError(f"the corpus has no terms BM25 can index (its {len(doc_ids)} "
                           "documents are empty or only stop words): BM25 has nothing to "
                           "retrieve; take the candidates from a TREC run file instead")
    index = bm25s.BM25()
    index.index(corpus_tokens, show_progress=False)
    query_tokens = bm25s.tokenize([queries[q] for q in query_ids], stopwords=stopwords,
                                  show_progress=False)
    found, scores = index.retrieve(query_tokens, k=min(depth, len(doc_ids)), show_progress=False)
    return {query_id: [doc_ids[i] for i, score in zip(rows, row_scores, strict=True) if score > 0]
            for query_id, rows, row_scores in zip(query_ids, found, scores, strict=True)}
