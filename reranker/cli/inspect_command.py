"""`inspect`: what a model file is."""
from __future__ import annotations

import json

import click

from reranker.cpu_path import resolve_cpu_path
from reranker.engine_choice import resolve_engine
from reranker.model_info import describe_model
from reranker.reranker import resolve_model_file
from reranker.cli.errors import friendly_errors
from reranker.cli.models_dir import resolve_model


@click.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def inspect(model: str | None, as_json: bool) -> None:
    """Describe a model file: architecture, type, size, tokens, markers, projector, source.

    MODEL is a GGUF path, a directory, or a model name under models/ (default: the
    model `pull` fetched last, else the only one in models/, else
    jina-reranker-v3-q8_0.gguf among several). Only metadata is read;
    no weights are loaded. The last lines are the
    CPU path and the engine this machine would load it with (`reranker-cli doctor`
    checks the one and measures the other).

    \b
    Example:
      reranker-cli inspect models/jina-reranker-v3-q8_0.gguf
    """
    with friendly_errors():
        model_path = resolve_model_file(resolve_model(model))
        info = describe_model(model_path)
        # Not a property of the file: how this machine would load it (see `doctor`).
        cpu_path = resolve_cpu_path()
        info["cpu_path"] = {"name": cpu_path.name, "reason": cpu_path.reason}
        engine = resolve_engine(None, model_path)
        info["engine"] = {"name": engine.name, "reason": engine.reason,
                          "torch_from_tokens": engine.torch_from_tokens}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    projector = info["projector"]
    if projector is None:
        projector_text = "none found"
    elif projector["shapes"]:
        projector_text = f"{projector['where']}, shapes {projector['shapes']}"
    else:
        projector_text = projector["where"]
    markers = ", ".join(f"{k} = {'missing' if v is None else v}" for k, v in info["markers"].items())
    rows = [
        ("file", info["file"]),
        ("size", f"{info['size_bytes'] / 1e6:.1f} MB"),
        ("architecture", f"{info['architecture']} ({info['layers']} layers, hidden "
                         f"{info['hidden_size']}, context {info['context_length']})"),
        ("type", info["file_type"]),
        ("tensors", f"{info['tensor_count']} ("
                    + ", ".join(f"{k}: {v}" for k, v in info["tensor_types"].items()) + ")"),
        ("vocabulary", f"{info['vocab_size']} tokens"),
        ("markers", markers),
        ("projector", projector_text),
        ("source", " @ ".join(x for x in (info["source"], info["source_revision"]) if x) or "unknown"),
        ("source sha256", info["source_sha256"] or "unknown"),
        ("converter", info["converter_version"] or "unknown (not made by reranker-cli convert)"),
        ("reranker", "yes, rerank and serve load it" if info["problem"] is None
                     else f"no: {info['problem']}"),
        ("cpu path", f"{cpu_path.name} here ({cpu_path.reason})"),
        ("engine", f"{engine.name} here ({engine.reason})"),
    ]
    for key, value in rows:
        click.echo(f"{key + ':':15}{value}")
