"""`pull`: fetch a ready model into models/ on a connected machine."""
from __future__ import annotations

import click

from convert.pull import CHECKSUMS_FILE, pull_converted, pull_published_gguf
from reranker.cli.convert_commands import TYPE_CHOICE, StageProgress
from reranker.cli.errors import friendly_errors
from reranker.cli.models_dir import (DEFAULT_HUB_REPO, models_dir_for_output,
                                     record_default_model)


@click.command()
@click.argument("repo", default=DEFAULT_HUB_REPO)
@click.option("--type", "-t", "type_name", type=TYPE_CHOICE, default="q8_0", show_default=True,
              help="Weight type to convert the checkpoint to.")
@click.option("--file", "gguf_file",
              help="Take this GGUF from a published GGUF repo (with its projector.safetensors) "
                   "instead of converting.")
@click.option("--revision", help="Hub revision (branch, tag or commit).")
@click.option("--force", is_flag=True, help="Overwrite files already in models/.")
def pull(repo: str, type_name: str, gguf_file: str | None, revision: str | None,
         force: bool) -> None:
    """Download a model into models/ and record its SHA-256 in models/SHA256SUMS.

    The model pulled last becomes the default of the other commands (recorded in
    models/DEFAULT_MODEL).

    By default REPO (jinaai/jina-reranker-v3) is downloaded through the Hugging
    Face cache and converted to --type. With --file, one GGUF of a published GGUF
    repo and its projector.safetensors are copied instead. Copy the models/ folder
    to an air-gapped machine and check it there with `sha256sum -c SHA256SUMS`.
    The weights are licensed CC BY-NC 4.0: non-commercial use only.

    \b
    Examples:
      reranker-cli pull --type q4_k_m
      reranker-cli pull jinaai/jina-reranker-v3-GGUF --file jina-reranker-v3-Q4_K_M.gguf
    """
    if gguf_file is not None and not gguf_file.lower().endswith(".gguf"):
        # It would be copied, then recorded as the default model that no command can load.
        raise click.UsageError(f"--file {gguf_file!r} is not a .gguf file; name one of the "
                               "repo's GGUF files (its projector is copied with it)")
    with models_dir_for_output() as folder, friendly_errors():
        if gguf_file:
            files = pull_published_gguf(repo, gguf_file, folder, revision=revision, force=force)
            for path in files:
                click.echo(f"{path}")
            model = files[0]
        else:
            progress = StageProgress()
            try:
                summary = pull_converted(repo, type_name, folder, revision=revision, force=force,
                                         progress=progress.tensor, on_stage=progress.stage)
            finally:
                progress.close()
            click.echo(summary.describe())
            model = summary.path
        record = record_default_model(model)
    click.echo(f"checksums recorded in {folder / CHECKSUMS_FILE}", err=True)
    click.echo(f"{model} is now the default model (used without --model; {record})", err=True)
