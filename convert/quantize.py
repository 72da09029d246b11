"""Requantize a GGUF with llama.cpp's own quantizer (k-quants, i-quants, legacy types)."""
from __future__ import annotations

import os
from pathlib import Path

from convert.errors import ConversionError
from convert.file_types import FileType


def run_llama_quantizer(source: Path, destination: Path, target: FileType,
                        n_threads: int | None = None) -> None:
    """Quantize `source` (F32/F16/BF16 GGUF) into `destination`.

    llama.cpp copies every metadata key to the output, so the projector and the
    provenance keys travel with the weights.
    """
    import llama_cpp

    from reranker.interrupts import run_interruptibly
    from reranker.llama_logging import route_llama_logs, take_last_error

    route_llama_logs()
    take_last_error()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(target.ftype)
    params.nthread = n_threads or 0  # 0: llama.cpp uses the hardware's thread count
    # os.fsencode: a file name that is not UTF-8 reaches the C library as its own bytes.
    # llama.cpp's quantizer cannot be stopped: on Ctrl-C it is left to finish in its own
    # thread, writing into a temporary file the caller removes (a removed file's writes
    # go nowhere); waiting for it would hold Ctrl-C up for minutes.
    status = run_interruptibly(
        lambda: llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(destination),
                                               params), wait=False)
    if status != 0:
        reason = take_last_error() or f"status {status}"
        raise ConversionError(f"llama.cpp's quantizer failed to make {target.name}: {reason} "
                              "(run with -v to see its log)")
