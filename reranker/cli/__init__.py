"""The `reranker-cli` command: thin click commands over the `convert` and `reranker` libraries."""
