"""Listwise reranking with jina-reranker-v3 on CPU, through llama.cpp."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# What `from reranker import X` gives, and the module X lives in. Each is imported on first
# use: `import reranker` (which every submodule's import runs first, the CLI's start
# included) then loads neither numpy nor llama.cpp, and a Ctrl-C during a command's first
# second meets the CLI's own handler instead of a traceback from inside an import.
_EXPORTS = {
    "InputTooLongError": "reranker.errors",
    "ModelFileError": "reranker.errors",
    "RerankerCancelled": "reranker.errors",
    "RerankerClosedError": "reranker.errors",
    "RerankerError": "reranker.errors",
    "TooManyTokensError": "reranker.errors",
    "Reranker": "reranker.reranker",
    "RerankResult": "reranker.reranker",
    "Scores": "reranker.reranker",
    "PlannedBlock": "reranker.scoring_plan",
    "ScoringPlan": "reranker.scoring_plan",
    "RequestError": "reranker.api_contract",
    "RerankRequest": "reranker.api_contract",
    "RerankResponse": "reranker.api_contract",
    "answer_request": "reranker.api_contract",
}
__all__ = ["InputTooLongError", "ModelFileError", "PlannedBlock", "Reranker", "RerankResult",
           "RerankerCancelled", "RerankerClosedError", "RerankerError", "Scores", "ScoringPlan",
           "RequestError", "RerankRequest", "RerankResponse", "TooManyTokensError",
           "answer_request"]  # _EXPORTS' names, spelled out for linters (a test compares them)

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from reranker.api_contract import RequestError, RerankRequest, RerankResponse, answer_request
    from reranker.errors import (InputTooLongError, ModelFileError, RerankerCancelled,
                                 RerankerClosedError, RerankerError, TooManyTokensError)
    from reranker.reranker import Reranker, RerankResult, Scores
    from reranker.scoring_plan import PlannedBlock, ScoringPlan


def __getattr__(name: str):
    if name == "__version__":
        value = _installed_version()
    else:
        try:
            module = _EXPORTS[name]
        except KeyError:
            raise AttributeError(f"module 'reranker' has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _installed_version() -> str:
    """`__version__`: one version string, pyproject.toml's, read when first asked for (the
    package metadata costs more to read than the rest of this module): the CLI, the server
    and converted files all read it."""
    from importlib import metadata

    try:
        return metadata.version("reranker")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"
