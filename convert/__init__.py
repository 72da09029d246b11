"""Export jina-reranker-v3 checkpoints to GGUF files that stock llama.cpp loads."""
