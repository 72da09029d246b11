"""How a message tells the user to install one of the optional extras.

One form for every command and module: the extras are installed from the project's own
folder. `pip install 'reranker[torch]'` names PyPI's `reranker`, another project, and
installs that one wherever this project is not already the installed `reranker`.
"""
from __future__ import annotations


def install_hint(extra: str) -> str:
    """`pip install -e '.[EXTRA]'` and where to run it."""
    return f"pip install -e '.[{extra}]' in this project's folder"
