"""reranker-cli: the command group (convert, quantize, rerank, pull, inspect, serve, eval,
compare, doctor) and process-level signal handling."""
from __future__ import annotations

import logging
import signal
import sys

import click

from reranker.cli.convert_commands import convert, quantize
from reranker.cli.doctor_command import doctor
from reranker.cli.eval_commands import compare, evaluate
from reranker.cli.inspect_command import inspect
from reranker.cli.pull_command import pull
from reranker.cli.rerank_command import rerank
from reranker.cli.serve_command import serve


def _interrupt_on_sigterm(signum, frame):
    # A terminated conversion then unwinds like Ctrl-C and removes its partial output.
    raise KeyboardInterrupt


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show progress details and llama.cpp's own log.")
@click.version_option(package_name="reranker")
def cli(verbose: bool) -> None:
    """Run the jina-reranker-v3 listwise reranker on CPU through llama.cpp.

    \b
    Typical air-gapped workflow:
      reranker-cli pull --type q8_0               # on a connected machine
      reranker-cli convert ./jina-reranker-v3 --type q4_k_m   # or from a local copy
      reranker-cli rerank --query "..." --document "..." --document "..."

    \b
    On a new machine, run `reranker-cli doctor` first: it checks which of
    llama.cpp's CPU kernels work here and which one is used.
    """
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root = logging.getLogger("reranker")
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)


for command in (convert, quantize, rerank, pull, inspect, serve, evaluate, compare, doctor):
    cli.add_command(command)


def main() -> None:
    """The console script: the CLI plus process-level signal handling."""
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    cli()


if __name__ == "__main__":
    main()
