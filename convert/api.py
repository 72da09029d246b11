"""The converter's entry points: checkpoint -> GGUF, and GGUF -> requantized GGUF."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from gguf import LlamaFileType

from convert.checkpoint import load_checkpoint
from convert.errors import ConversionError
from convert.file_types import file_type
from convert.gguf_export import ProgressCallback, SourceInfo, write_gguf
from convert.hub import resolve_checkpoint
from convert.output import atomic_output, check_not_an_input, check_output_path, scratch_file
from convert.quantize import run_llama_quantizer
from convert.vocab import read_vocabulary
from reranker.errors import ModelFileError
from reranker.gguf_metadata import read_metadata
from reranker.model_check import check_reranker_metadata, open_reranker_file
from reranker.model_format import FLOAT_FILE_TYPES, Keys
from reranker.model_info import file_type_name
from reranker.projector import carries_projector

# The lossless intermediate for types llama.cpp's quantizer makes, by source dtype.
_INTERMEDIATE = {"BF16": "bf16", "F16": "f16", "F32": "f32"}


@dataclass(frozen=True)
class ConversionSummary:
    path: Path
    type_name: str
    size_bytes: int
    tensor_count: int
    seconds: float
    source: str

    def describe(self) -> str:
        return (f"{self.path}: {self.type_name}, {self.size_bytes / 1e6:.1f} MB, "
                f"{self.tensor_count} tensors, {self.seconds:.1f} s")


def convert_checkpoint(source: str | Path, outfile: str | Path, type_name: str = "f16", *,
                       revision: str | None = None, force: bool = False,
                       n_threads: int | None = None,
                       progress: ProgressCallback | None = None,
                       on_stage=None) -> ConversionSummary:
    """Convert a jina-reranker-v3 checkpoint (directory or Hub id) into one GGUF file.

    `on_stage(text)` is told about each long step; `progress` about each tensor.
    """
    started = time.monotonic()
    target = file_type(type_name)
    outfile = Path(outfile)
    check_output_path(outfile, force)  # before any download or hashing
    stage = on_stage or (lambda _text: None)

    resolved = resolve_checkpoint(source, revision)
    ckpt = load_checkpoint(resolved.directory)
    check_not_an_input(outfile, ckpt.source_files)
    vocab = read_vocabulary(ckpt.tokenizer_json, ckpt.shape.vocab_size)
    stage("hashing the source weights")
    info = SourceInfo(resolved.name, resolved.revision, ckpt.weights_sha256())

    with atomic_output(outfile, force) as tmp:
        if target.direct is not None:
            stage(f"writing {target.name}")
            count = write_gguf(ckpt, vocab, target, tmp, info, progress)
        else:
            middle = file_type(_INTERMEDIATE[ckpt.source_dtype])
            with scratch_file(outfile, f".{middle.name}") as intermediate:
                stage(f"writing a {middle.name} intermediate")
                count = write_gguf(ckpt, vocab, middle, intermediate, info, progress)
                stage(f"quantizing to {target.name} with llama.cpp")
                run_llama_quantizer(intermediate, tmp, target, n_threads)
        _check_the_runtime_opens(tmp, outfile)
    return ConversionSummary(outfile, target.name, outfile.stat().st_size, count,
                             time.monotonic() - started, resolved.name)


def _check_the_runtime_opens(written: Path, outfile: Path) -> None:
    """Refuse, before it is renamed into place, a file that rerank and serve would refuse:
    an input the converter's own checks missed must not become a model that fails later."""
    try:
        open_reranker_file(written)
    except ModelFileError as e:
        problem = str(e).replace(str(written), str(outfile))  # not the hidden temporary name
        raise ConversionError(f"{outfile} was not written: the runtime would refuse it "
                              f"({problem})") from e


def quantize_gguf(infile: str | Path, outfile: str | Path, type_name: str, *,
                  force: bool = False, n_threads: int | None = None,
                  on_stage=None) -> ConversionSummary:
    """Requantize an F32/F16/BF16 reranker GGUF; the projector is carried along.

    `on_stage(text)` is told when the quantizer starts, once the input has been checked.
    """
    started = time.monotonic()
    target = file_type(type_name)
    infile, outfile = Path(infile), Path(outfile)
    try:
        meta = read_metadata(infile)
        check_reranker_metadata(meta)
    except ModelFileError as e:
        raise ConversionError(str(e)) from e
    if not carries_projector(meta):
        raise ConversionError(f"{infile} has no reranker projector; it was not made by "
                              "`reranker-cli convert`")
    ftype = meta.get(Keys.FILE_TYPE, int(LlamaFileType.ALL_F32))
    if ftype not in FLOAT_FILE_TYPES:
        raise ConversionError(f"{infile} is {file_type_name(ftype)}; requantize from an f32, f16 "
                              "or bf16 file to avoid compounding quantization error")
    check_not_an_input(outfile, [infile])
    if ftype == int(target.ftype):
        raise ConversionError(f"{infile} is already {target.name}")
    with atomic_output(outfile, force) as tmp:
        if on_stage is not None:
            on_stage(f"quantizing {infile} to {target.name} with llama.cpp")
        run_llama_quantizer(infile, tmp, target, n_threads)
        _check_the_runtime_opens(tmp, outfile)  # as convert's own output is
    return ConversionSummary(outfile, target.name, outfile.stat().st_size, len(meta.tensors),
                             time.monotonic() - started, str(infile))
