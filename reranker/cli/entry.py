"""The `reranker-cli` console script.

The command group is imported here, inside the script's own handler: the imports take
about half a second (numpy, pydantic, llama.cpp's bindings), and a Ctrl-C during them
printed a KeyboardInterrupt traceback. It now ends the command as click ends an
interrupted one. This module imports nothing else, and `reranker` itself is light.
"""
from __future__ import annotations

import sys


def main() -> None:
    try:
        from reranker.cli.main import main as run
    except KeyboardInterrupt:
        print("\nAborted!", file=sys.stderr)  # click's own words and exit status
        sys.exit(1)
    run()


if __name__ == "__main__":
    main()
