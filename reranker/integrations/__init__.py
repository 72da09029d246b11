"""Adapters that put `reranker.Reranker` into LangChain, LlamaIndex and Haystack pipelines.

Each framework has a module of its own, imported only when asked for, so that neither
`import reranker` nor this package imports any framework:

- `reranker.integrations.langchain.RerankerCompressor` (extra `reranker[langchain]`)
- `reranker.integrations.llama_index.RerankerPostprocessor` (extra `reranker[llama-index]`)
- `reranker.integrations.haystack.RerankerRanker` (extra `reranker[haystack]`)

All three share one loaded model per file and load options in a process
(`reranker.integrations._shared`). See docs/integrations.md.
"""
