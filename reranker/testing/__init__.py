"""Generated checkpoints and the transformers reference, shared by tests/ and scripts/.

`checkpoint` writes random-weight checkpoints in the published layout (what the tests
and benchmarks run on, since the real weights cannot be fetched there); `reference` is
the published scoring on Hugging Face transformers (needs the `test` extra: torch,
transformers, tokenizers, safetensors). Neither is used by the runtime: they live in
the package so that tests and scripts import them by name, not through sys.path.
"""
