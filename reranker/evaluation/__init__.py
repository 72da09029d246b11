"""Evaluation and quantization fidelity: rerank a BEIR dataset's first-stage candidates and
measure nDCG/MRR/Recall before and after; compare models' scores on the same queries."""
from __future__ import annotations

from reranker.evaluation.agreement import Agreement, kendall_tau_b, measure_agreement
from reranker.evaluation.beir import BeirDataset, CorpusDocument, load_dataset
from reranker.evaluation.compare import (Comparison, LadderRow, ModelRun, RerankRequest,
                                         compare_models, ladder_files, quantization_ladder,
                                         requests_from_evaluation, run_model)
from reranker.evaluation.errors import DatasetError, MissingDependencyError
from reranker.evaluation.first_stage import bm25_candidates
from reranker.evaluation.metrics import (evaluate_rankings, ndcg_at_k, recall_at_k,
                                         reciprocal_rank_at_k)
from reranker.evaluation.rerank_eval import (EvaluationInput, EvaluationReport,
                                             evaluate_reranking, prepare_evaluation)
from reranker.evaluation.trec_run import read_run, run_rankings

__all__ = ["Agreement", "BeirDataset", "Comparison", "CorpusDocument", "DatasetError",
           "EvaluationInput", "EvaluationReport", "LadderRow", "MissingDependencyError",
           "ModelRun", "RerankRequest", "bm25_candidates", "compare_models", "evaluate_rankings",
           "evaluate_reranking", "kendall_tau_b", "ladder_files", "load_dataset",
           "measure_agreement", "ndcg_at_k", "prepare_evaluation", "quantization_ladder",
           "read_run", "recall_at_k", "reciprocal_rank_at_k", "requests_from_evaluation",
           "run_model", "run_rankings"]
