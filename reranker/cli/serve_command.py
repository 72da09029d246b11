"""`serve`: the rerank API over HTTP (needs the `server` extra)."""
from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

import click

from reranker.api_contract import model_id
from reranker.model_check import open_reranker_file
from reranker.reranker import resolve_model_file
from reranker.cli.errors import friendly_errors
from reranker.cli.models_dir import resolve_model
from reranker.cli.runtime_options import block_tokens_option, cpu_path_option, engine_option
from reranker.extras import install_hint

API_KEY_ENV = "RERANKER_API_KEY"


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_api_key(api_key_file: Path | None) -> str | None:
    from reranker.server.settings import api_key_problem

    if api_key_file is not None:
        source = f"--api-key-file {api_key_file}"
        try:
            key = api_key_file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise click.ClickException(f"{source} is not UTF-8 text") from None
        except OSError as e:
            raise click.ClickException(f"cannot read {source}: {e.strerror or e}") from None
        if not key:
            raise click.ClickException(f"{source} is empty")
    else:
        source = f"${API_KEY_ENV}"
        key = os.environ.get(API_KEY_ENV) or None
        if key is None:
            return None
    # Refused here, before any request: such a key would make every request fail.
    problem = api_key_problem(key)
    if problem:
        raise click.ClickException(f"the API key in {source} cannot be used: {problem}")
    return key


@click.command()
@click.option("--model", "-m", help="GGUF file, directory, or name of a model in models/.")
@click.option("--projector", type=click.Path(dir_okay=False, path_type=Path),
              help="projector.safetensors for a backbone GGUF without one.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; loopback by default.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--model-name", help="Model id reported by the API (default: the file's stem).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="llama.cpp contexts scoring at once (threads are shared among them).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads in all.")
@block_tokens_option
@cpu_path_option
@engine_option
@click.option("--queue-size", default=16, show_default=True, type=click.IntRange(min=0),
              help="Requests that may wait for a worker; more get 429 with Retry-After.")
@click.option("--queue-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds a request may wait before it gets 503.")
@click.option("--max-documents", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--max-body-bytes", default=8 * 1024 * 1024, show_default=True,
              type=click.IntRange(min=1))
@click.option("--max-tokens", default=262_144, show_default=True, type=click.IntRange(min=1),
              help="Query plus documents (after truncation) per request.")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Require 'Authorization: Bearer <key>' with this key (or set ${API_KEY_ENV}).")
@click.option("--log-documents", is_flag=True, help="Log queries and documents (off: ids only).")
@click.option("--shutdown-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to let running requests finish on SIGTERM / Ctrl-C.")
def serve(model, projector, host, port, model_name, workers, threads, block_tokens, cpu_path,
          engine, queue_size, queue_timeout, max_documents, max_body_bytes, max_tokens,
          api_key_file, log_documents, shutdown_timeout) -> None:
    """Serve the Jina / Cohere rerank API: POST /v1/rerank (also at /rerank, which takes
    Hugging Face TEI's body too) and POST /v2/rerank (Cohere's v2).

    Also GET /health, GET /v1/models, GET /metrics (Prometheus) and GET /docs (OpenAPI).
    Requests beyond the workers and the queue are refused with 429 and Retry-After.

    \b
    Examples:
      reranker-cli serve --model models/jina-reranker-v3-q8_0.gguf --port 8080
      RERANKER_API_KEY=secret reranker-cli serve --host 0.0.0.0
      curl -s localhost:8080/v1/rerank -H 'Content-Type: application/json' \\
        -d '{"query": "capital of France", "documents": ["Paris", "Berlin"], "top_n": 1}'
    """
    try:
        import uvicorn

        from reranker.server.app import create_app, open_pool
        from reranker.server.settings import ServerSettings
    except ImportError as e:
        raise click.ClickException(f"the server needs its extra: {install_hint('server')} "
                                   f"({e.name} is missing)") from None
    model_path = resolve_model(model)
    api_key = _read_api_key(api_key_file)
    with friendly_errors():
        model_path = resolve_model_file(model_path)
        # The runtime's own check, on metadata and projector only: a file that is not a
        # reranker stops here with one line, before any worker loads its weights.
        open_reranker_file(model_path, projector)
        settings = ServerSettings(
            model_path=model_path, model_name=model_name or model_id(model_path),
            projector_path=projector, workers=workers, threads=threads,
            block_tokens=block_tokens, cpu_path=cpu_path, engine=engine, queue_size=queue_size,
            queue_timeout=queue_timeout, max_documents=max_documents,
            max_body_bytes=max_body_bytes, max_tokens=max_tokens, api_key=api_key,
            log_documents=log_documents)
    if not is_loopback(host) and not api_key:
        click.echo(f"warning: serving on {host} without an API key; anyone who can reach it "
                   f"can use it (set ${API_KEY_ENV} or --api-key-file)", err=True)
    server_log = logging.getLogger("reranker.server")
    if not server_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        server_log.addHandler(handler)
        server_log.setLevel(logging.INFO)
    with friendly_errors():
        # Loaded and proven by one scoring call before the port is bound: a build that
        # cannot score here stops now, with one line, instead of after /health said ok.
        pool = open_pool(settings)
    uvicorn.run(create_app(settings, pool=pool), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=shutdown_timeout)
