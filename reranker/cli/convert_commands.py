"""`convert` and `quantize`: thin wrappers over `convert.api`."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import click

from convert.api import ConversionSummary, convert_checkpoint, quantize_gguf
from convert.file_types import FILE_TYPES
from convert.pull import source_name
from reranker.cli.errors import friendly_errors
from reranker.cli.models_dir import models_dir, models_dir_for_output
from reranker.cli.progress import ProgressBars

# Types needing an importance matrix stay accepted so the refusal can say why.
TYPE_CHOICE = click.Choice(list(FILE_TYPES), case_sensitive=False)


def default_outfile(source: str, type_name: str) -> Path:
    return models_dir() / f"{source_name(source)}-{type_name.lower()}.gguf"


def _report(summary: ConversionSummary) -> None:
    click.echo(summary.describe())


class StageProgress:
    """A line per conversion stage and a progress bar over its tensors (on stderr)."""

    def __init__(self) -> None:
        self._bars = ProgressBars()

    def stage(self, text: str) -> None:
        self.close()
        click.echo(f"{text}...", err=True)

    def tensor(self, done: int, total: int, name: str) -> None:
        self._bars.update("tensors", total)

    def close(self) -> None:
        self._bars.close()


@click.command()
@click.argument("source")
@click.option("--outfile", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Output GGUF (default: models/<source name>-<type>.gguf).")
@click.option("--type", "-t", "type_name", type=TYPE_CHOICE, default="q8_0", show_default=True,
              help="Weight type of the output.")
@click.option("--revision", help="Hub revision (branch, tag or commit) when SOURCE is a repo id.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for llama.cpp's quantizer.")
def convert(source: str, outfile: Path | None, type_name: str, revision: str | None,
            force: bool, threads: int | None) -> None:
    """Convert a jina-reranker-v3 checkpoint to one GGUF file that stock llama.cpp loads.

    SOURCE is a local checkpoint directory (config.json, model.safetensors or a
    sharded index, tokenizer.json) or a Hub repo id such as jinaai/jina-reranker-v3,
    fetched through the Hugging Face cache (HF_HUB_OFFLINE=1 uses the cache only).
    The projector is stored in the GGUF's metadata. f32, f16, bf16 and q8_0 are
    written directly; the other types go through llama.cpp's quantizer.

    \b
    Examples:
      reranker-cli convert ./jina-reranker-v3 --type q4_k_m
      reranker-cli convert jinaai/jina-reranker-v3 -o models/jr3-f16.gguf -t f16
    """
    outfile = outfile or default_outfile(source, type_name)
    in_models_dir = models_dir_for_output() if outfile.parent == models_dir() else nullcontext()
    progress = StageProgress()
    with in_models_dir, friendly_errors():
        try:
            summary = convert_checkpoint(source, outfile, type_name, revision=revision,
                                         force=force, n_threads=threads, progress=progress.tensor,
                                         on_stage=progress.stage)
        finally:
            progress.close()
    _report(summary)


@click.command()
@click.argument("infile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--outfile", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output GGUF.")
@click.option("--type", "-t", "type_name", type=TYPE_CHOICE, required=True,
              help="Weight type of the output.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for llama.cpp's quantizer.")
def quantize(infile: Path, outfile: Path, type_name: str, force: bool, threads: int | None) -> None:
    """Requantize an f32/f16/bf16 reranker GGUF; the projector is carried along.

    \b
    Example:
      reranker-cli quantize models/jr3-f16.gguf -o models/jr3-q4_k_m.gguf -t q4_k_m
    """
    with friendly_errors():
        summary = quantize_gguf(infile, outfile, type_name, force=force, n_threads=threads,
                                on_stage=StageProgress().stage)
    _report(summary)
