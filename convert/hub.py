"""Resolve a conversion source: a local checkpoint directory or a Hugging Face Hub repo id."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from convert.errors import CheckpointError

CHECKPOINT_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json",
                    "tokenizer.json", "tokenizer_config.json", "added_tokens.json",
                    "special_tokens_map.json"]


@dataclass(frozen=True)
class ResolvedSource:
    directory: Path
    name: str  # what the user named: a repo id or a path
    revision: str | None  # the commit a Hub snapshot resolved to


def resolve_checkpoint(source: str | Path, revision: str | None = None) -> ResolvedSource:
    """A local directory is used as it is; a repo id goes through huggingface-hub's cache.

    With HF_HUB_OFFLINE=1 a warm cache is enough and the network is never touched.
    """
    check_source_given(source)
    path = Path(source).expanduser()
    if path.exists():
        if revision:
            raise CheckpointError(f"--revision applies to Hub repo ids, not to the local path {path}")
        return ResolvedSource(path, str(path), None)
    text = str(source)
    check_repo_id(text)
    return _download(text, revision)


def check_source_given(source: str | Path) -> None:
    """An empty source is refused: pathlib reads "" as ".", the working directory."""
    if str(source) == "":
        raise CheckpointError("the source is empty; give a checkpoint directory (\".\" for "
                              "this one) or a Hub repo id like jinaai/jina-reranker-v3")


def check_repo_id(text: str) -> None:
    """CheckpointError unless `text` is an owner/name Hub repo id (huggingface-hub's rules:
    `../models` matches a simple pattern of names and slashes, and is not one)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if text.count("/") != 1:
            raise HFValidationError("not owner/name")
        validate_repo_id(text)
    except HFValidationError:
        raise CheckpointError(f"{text} is neither an existing directory nor a Hub repo id "
                              "like jinaai/jina-reranker-v3") from None


def _download(repo_id: str, revision: str | None) -> ResolvedSource:
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id + (f"@{revision}" if revision else ""), revision):
        snapshot = Path(snapshot_download(repo_id, revision=revision,
                                          allow_patterns=CHECKPOINT_FILES))
    # Snapshot folders are named after the commit they hold.
    return ResolvedSource(snapshot, repo_id, snapshot.name)


def hub_unreachable() -> str | None:
    """Why the Hub cannot be reached at all now (its name does not resolve, the connection
    is refused, a proxy refuses it), or None: it answered, offline mode is on, or it is
    only slow.

    hf_hub_download retries a connection that fails five times, about 24 s, before it
    looks in the local cache; snapshot_download gives up at once. One request without
    retries tells a caller of hf_hub_download to look in the cache alone. A timeout is
    not taken for an answer: a slow Hub is waited for, and retried, by hf_hub_download."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return None  # hf_hub_download looks in the cache alone already
    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:  # the transport errors of whichever HTTP library it uses
        if "timeout" in type(e).__name__.lower():  # httpx's and requests' timeouts
            return None
        return f"{type(e).__name__}: {e}"
    return None


@contextlib.contextmanager
def hub_errors(what: str, revision: str | None = None,
               unreachable: str | None = None) -> Iterator[None]:
    """huggingface-hub's download errors as one-line CheckpointErrors naming `what`
    (and why the Hub was out of reach, when `hub_unreachable` said)."""
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        yield
    except LocalEntryNotFoundError as e:  # before EntryNotFoundError: it is one
        raise CheckpointError(
            f"{what} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"({unreachable or 'offline?'}); download it on a connected machine or use local "
            "files") from e
    except EntryNotFoundError as e:
        raise CheckpointError(f"{what} does not exist on the Hub") from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"the Hub repo of {what} does not exist or needs a login") from e
    except RevisionNotFoundError as e:
        raise CheckpointError(f"{what}: the Hub has no revision {revision}") from e
    except (HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"downloading {what} failed: {e}") from e
