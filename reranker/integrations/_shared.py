"""One loaded model per file and load options, shared by every framework wrapper of a process.

A model takes hundreds of megabytes and seconds to load, and a RAG application easily
builds several wrappers on the same file (a LangChain retriever per index, a Haystack
pipeline per route). So a wrapper given a path does not load it: it takes a lease on the
registry's `Reranker` for that file and those options, and the registry loads the file
on the first lease and closes it when the last one is released (the wrapper's
`close()`, or the wrapper being garbage-collected). A wrapper given a `Reranker` uses it
as it is and never closes it: that one is the caller's.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reranker.cpu_path import CPU_PATHS
from reranker.engine_choice import ENGINES
from reranker.engine import default_thread_count
from reranker.reranker import BLOCK_TOKENS, Reranker, RerankResult, resolve_model_file


@dataclass(frozen=True)
class LoadOptions:
    """The `Reranker` options a wrapper passes on when it loads a file (None: its default)."""
    n_threads: int | None = None
    block_tokens: int | None = None
    cpu_path: str | None = None
    engine: str | None = None

    def __post_init__(self):
        for name in ("n_threads", "block_tokens"):
            check_count(name, getattr(self, name), minimum=1, allow_none=True)
        for name, allowed in (("cpu_path", CPU_PATHS), ("engine", ENGINES)):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise TypeError(f"{name} is {type(value).__name__}; expected str or None")
            # Spelled as Reranker reads it (" TORCH " is torch), so both accept the same.
            if value.strip().lower() not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")
            object.__setattr__(self, name, value.strip().lower())

    def given(self) -> dict:
        return {name: value for name, value in vars(self).items() if value is not None}

    def effective(self) -> LoadOptions:
        """The same load with the defaults spelled out, so that leaving n_threads or
        block_tokens out and passing their defaults share one model. cpu_path and engine
        stay as given: None also reads $RERANKER_CPU_PATH / $RERANKER_ENGINE, so it need
        not mean "auto"."""
        return LoadOptions(self.n_threads or default_thread_count(),
                           self.block_tokens or BLOCK_TOKENS, self.cpu_path, self.engine)


@dataclass
class _Entry:
    reranker: Reranker
    users: int


class _Registry:
    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[tuple[Path, LoadOptions], _Entry] = {}

    def acquire(self, model: str, options: LoadOptions) -> tuple[tuple, Reranker]:
        # The resolved path is the key: "./m.gguf", an absolute path, a symlink or the
        # directory holding the file all name one model.
        key = (resolve_model_file(model).resolve(), options.effective())
        # Loading happens under the lock, so two threads asking for a new file at once
        # load it once; loads of other files wait meanwhile, which two cores would
        # serialize anyway.
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.reranker.closed:
                # Someone closed the shared Reranker by hand: load it again for the new
                # lease. The earlier leases still count, so that their releases cannot
                # close the new one under this lease.
                users = entry.users if entry is not None else 0
                entry = _Entry(self._load(key[0], options), users)
                self._entries[key] = entry
            entry.users += 1
            return key, entry.reranker

    @staticmethod
    def _load(path: Path, options: LoadOptions) -> Reranker:
        return Reranker(path, **options.given())

    def add_user(self, key: tuple) -> None:
        """One more lease on the model `key` names, for a caller already holding one (so the
        entry exists): a call in progress keeps the model open through a close() meanwhile."""
        with self._lock:
            self._entries[key].users += 1

    def release(self, key: tuple) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.users -= 1
            if entry.users > 0:
                return
            del self._entries[key]
        # Outside the lock: close() waits for a call running in another thread.
        entry.reranker.close()

    def snapshot(self) -> list[tuple[Path, LoadOptions, int]]:
        with self._lock:
            return [(path, options, entry.users)
                    for (path, options), entry in self._entries.items()]


_registry = _Registry()  # empty until a wrapper first needs a model: none is loaded at import


def shared_models() -> list[tuple[Path, LoadOptions, int]]:
    """(model file, load options, number of wrappers using it) for each model loaded here."""
    return _registry.snapshot()


class SharedModel:
    """The model one wrapper scores with: a `Reranker` it was given, or a lease on the
    registry's `Reranker` for a file, taken on first use and given back by `close()`."""

    def __init__(self, model, *, n_threads: int | None = None, block_tokens: int | None = None,
                 cpu_path: str | None = None, engine: str | None = None):
        self.options = LoadOptions(n_threads, block_tokens, cpu_path, engine)
        self._lock = threading.Lock()
        self._lease: tuple[tuple, Reranker] | None = None
        self._release = None
        if isinstance(model, Reranker):
            if self.options.given():
                raise ValueError(
                    f"{', '.join(self.options.given())} only apply when a model file is loaded; "
                    "this Reranker is loaded already: pass them to Reranker(...) instead, "
                    "or pass the model's path")
            self._given: Reranker | None = model
            self.path = str(model.model_path)
        elif isinstance(model, (str, os.PathLike)) and isinstance(os.fspath(model), str):
            self._given = None
            # Absolute now: the file is loaded lazily (Haystack's warm-up, a use after
            # close()), maybe after the working directory changed. Symlinks are kept, as
            # the user named the file; "~" is expanded first, as Reranker does.
            self.path = os.path.abspath(os.path.expanduser(os.fspath(model)))
        else:
            raise TypeError(f"model is {type(model).__name__}; expected the path of a GGUF "
                            "file (str or os.PathLike) or a reranker.Reranker")

    @property
    def given(self) -> bool:
        """True when the wrapper was handed a Reranker (which it must never close)."""
        return self._given is not None

    def get(self) -> Reranker:
        """The Reranker to score with, loading the file on first use."""
        if self._given is not None:
            return self._given
        with self._lock:
            return self._leased()[1]

    def _leased(self) -> tuple[tuple, Reranker]:
        """This handle's lease, taken now if it has none; called holding self._lock."""
        if self._lease is None:
            self._lease = _registry.acquire(self.path, self.options)
            # Releases the lease if the wrapper is dropped without close(); calling
            # it runs it at most once, so close() uses the same object. Not at exit:
            # the process's memory goes anyway, and llama.cpp may be torn down by then.
            self._release = weakref.finalize(self, _registry.release, self._lease[0])
            self._release.atexit = False
        return self._lease

    @contextmanager
    def _in_use(self) -> Iterator[Reranker]:
        """The Reranker to score with, kept open until the block ends. The call holds a lease
        of its own, taken while the handle's lease is held: a close() from another thread
        between taking the model and scoring would otherwise close it under the call, whose
        RerankerClosedError ("create a new Reranker") a wrapper's user cannot act on. With
        it, close() returns at once and the model is closed when the call ends."""
        if self._given is not None:
            yield self._given
            return
        with self._lock:
            key, reranker = self._leased()
            _registry.add_user(key)
        try:
            yield reranker
        finally:
            _registry.release(key)

    def close(self) -> None:
        """Give the lease back (the model is closed once no wrapper holds one); idempotent.
        The next `get()` takes a new lease."""
        with self._lock:
            release, self._release, self._lease = self._release, None, None
        if release is not None:
            release()

    def rerank(self, query: str, texts: list[str], *, top_n: int | None,
               instruction: str | None) -> list[RerankResult]:
        if not texts:
            # Nothing to rank: answer without loading a model (a Haystack pipeline may run
            # a retriever that found nothing before any warm-up).
            if not isinstance(query, str):
                raise TypeError(f"query is {type(query).__name__}; expected str")
            return []
        with self._in_use() as reranker:
            return reranker.rerank(query, texts, top_n=top_n, instruction=instruction)

    # A framework may copy a wrapper (pydantic's model_copy, copy.deepcopy): the copy
    # gets a handle of its own with the same model and options, which takes its own
    # lease, so closing either leaves the other working. A given Reranker is never
    # copied: its llama.cpp objects are pointers.
    def __copy__(self) -> SharedModel:
        if self._given is not None:
            return SharedModel(self._given)
        return SharedModel(self.path, **self.options.given())

    def __deepcopy__(self, memo) -> SharedModel:
        return self.__copy__()

    # Pickled as what __copy__ rebuilds from (multiprocessing, joblib and serving
    # frameworks pickle pipeline components): the lock, the lease and its finalizer
    # cannot be pickled, and the copy takes a lease of its own on first use anyway. The
    # path is absolute, so the copy finds the file from another working directory.
    def __reduce__(self):
        if self._given is not None:
            raise TypeError(
                f"a wrapper given a loaded Reranker ({self.path}) cannot be pickled: its "
                "llama.cpp model lives in this process; build the wrapper from the model's "
                "path to pickle it")
        return _unpickled_shared_model, (self.path, self.options.given())

    def __repr__(self) -> str:
        kind = "given" if self._given is not None else "shared"
        return f"SharedModel({self.path!r}, {kind}, {self.options.given()})"


def _unpickled_shared_model(path: str, options: dict) -> SharedModel:
    return SharedModel(path, **options)


def checked_shared_model(model, *, top_n, instruction, **load_options) -> SharedModel:
    """The model of a wrapper built with `top_n` (0 and None allowed) and `instruction`,
    after checking both; `load_options` are LoadOptions' fields. Checked here rather than
    left to the frameworks' pydantic models, which would turn "3" or True into a number
    instead of saying the call is wrong."""
    check_count("top_n", top_n, minimum=0, allow_none=True)
    check_instruction(instruction)
    return SharedModel(model, **load_options)


def check_count(name: str, value, *, minimum: int, allow_none: bool) -> None:
    """`value` must be an int of at least `minimum` (or None where allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        expected = "int or None" if allow_none else "int"
        raise TypeError(f"{name} is {type(value).__name__}; expected {expected}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def check_keywords(owner: str, keywords: dict, accepted) -> None:
    """A TypeError naming the first of `keywords` that is not in `accepted`. The
    frameworks' pydantic models ignore fields they do not know, so without this `top_k=1`
    (Haystack's name for top_n) or a typo would be dropped without a word. Not pydantic's
    extra="forbid", which the base classes allow: its ValidationError is a ValueError
    and cannot say which option was meant."""
    for name in keywords:
        if name in accepted:
            continue
        if name == "top_k":
            hint = "; the number of documents to return is top_n here"
        else:
            hint = ("; other Reranker options (max_context, max_doc_tokens, ...) are set by "
                    "building the Reranker and passing it as model")
        raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}{hint}")


def check_instruction(instruction) -> None:
    if instruction is not None and not isinstance(instruction, str):
        raise TypeError(f"instruction is {type(instruction).__name__}; expected str or None")


def check_list(name: str, items, item_type: type, type_name: str) -> list:
    """`items` as a list whose every element is an `item_type`, or a TypeError naming the
    first that is not (a str or a mapping would otherwise be iterated as documents)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"{name} is {type(items).__name__}; expected a list of {type_name}")
    for i, item in enumerate(items):
        if not isinstance(item, item_type):
            raise TypeError(f"{name}[{i}] is {type(item).__name__}; expected {type_name}")
    return list(items)
