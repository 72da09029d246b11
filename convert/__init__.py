"""Export jina-reranker-v3 checkpoints to GGUF files that stock llama.cpp loads."""
from __future__ import annotations

__version__ = "0.1.0"
