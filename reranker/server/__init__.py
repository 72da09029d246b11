"""An HTTP server speaking the Jina / Cohere rerank API over `reranker.Reranker`."""
