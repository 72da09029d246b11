"""The scoring plan: which prompts one request decodes, computed in this one place.

A plan follows the published `rerank()`: marker strings removed from the query, the
instruction and every document, query and documents cut to their token limits (and
decoded back to text, as published), documents grouped into blocks (`reranker.blocks`),
and one prompt per block (`reranker.prompt`) with the positions of its markers. A block
whose prompt does not fit the engine's context is halved until it does (the published
budget ignores the template's own tokens), and a single document that still does not
fit is an `InputTooLongError`, raised before anything is decoded.

`Reranker.score` decodes a plan, the server checks its token limit on one,
`scripts/bench.py` times its prompts. Each document is tokenized once per plan: its ids
are spliced into the prompt rather than tokenized again with the template around it
(a document cut to its limit is a new text, and is tokenized once more, as published).
"""
from __future__ import annotations

import unicodedata
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from reranker.blocks import plan_blocks
from reranker.errors import InputTooLongError, RerankerCancelled, TooManyTokensError
from reranker.model_format import DOC_MARKER, QUERY_MARKER
from reranker.prompt import CONTROL_TOKENS, Part, Tokenized, build_prompt, remove_markers


class Tokenizer(Protocol):
    """What planning needs of an engine: its vocabulary and its context size."""
    max_context: int

    def tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...
    def special_token_id(self, text: str) -> int: ...


@dataclass(frozen=True)
class PlanLimits:
    """The published `rerank()` arguments that shape a plan."""
    max_query_tokens: int
    max_doc_tokens: int
    block_size: int
    block_tokens: int


@dataclass(frozen=True)
class PlannedBlock:
    """One prompt: the documents it holds and where its markers are."""
    documents: tuple[int, ...]  # indices into the request's document list, ascending
    # The whole prompt, closing template tokens included; 4 bytes a token (a list of
    # Python ints took 36: a plan holds every block's prompt at once).
    token_ids: array[int]
    doc_positions: tuple[int, ...]  # of each document's marker, in `documents` order
    query_position: int  # of the query marker, after the last document's

    @property
    def marker_positions(self) -> list[int]:
        """The positions whose hidden states score the block, ascending."""
        return [*self.doc_positions, self.query_position]

    @property
    def decode_length(self) -> int:
        """Tokens the engine decodes: attention is causal, nothing after the query marker counts."""
        return self.query_position + 1


@dataclass(frozen=True)
class ScoringPlan:
    blocks: tuple[PlannedBlock, ...]  # in document order
    query_tokens: int  # the query's tokens after marker removal and truncation
    document_tokens: tuple[int, ...]  # each document's, likewise, in input order

    def __post_init__(self):
        # A plan built by hand must still give every document exactly one score: a gap
        # would leave an embedding unset, which no later step could notice.
        covered = [i for block in self.blocks for i in block.documents]
        if covered != list(range(len(self.document_tokens))):
            raise ValueError(f"the plan's blocks hold documents {covered[:8]}...; they must "
                             f"hold 0..{len(self.document_tokens) - 1} once each, in order")
        for n, block in enumerate(self.blocks):
            positions = block.marker_positions
            if (len(block.doc_positions) != len(block.documents)
                    or any(not a < b for a, b in zip([-1, *positions], positions))
                    or positions[-1] >= len(block.token_ids)):
                raise ValueError(f"block {n} of the plan has {len(block.documents)} documents "
                                 f"but markers at {positions} in {len(block.token_ids)} tokens")

    @property
    def input_tokens(self) -> int:
        """Query plus documents as scored: what a server's token limit caps."""
        return self.query_tokens + sum(self.document_tokens)

    @property
    def total_tokens(self) -> int:
        """Prompt tokens over every block: the usage the API reports."""
        return sum(len(block.token_ids) for block in self.blocks)


# Texts longer than this (in characters) are tokenized from their start only (`encode_start`).
PREFIX_CHARS = 16_384


class PromptPlanner:
    """Plans requests on one engine's vocabulary and context size."""

    def __init__(self, engine: Tokenizer, limits: PlanLimits):
        self._engine = engine
        self.limits = limits
        self._control_ids = {t: engine.special_token_id(t) for t in CONTROL_TOKENS}

    def encode(self, text: str) -> list[int]:
        # The Hugging Face tokenizer NFC-normalizes before splitting; llama.cpp does not.
        return self._engine.tokenize(unicodedata.normalize("NFC", text))

    def encode_start(self, text: str, limit: int) -> list[int]:
        """`encode(text)`, or for a long text ids that agree with it on the first `limit`
        tokens and hold more than `limit`, without tokenizing the whole text.

        llama.cpp tokenizes about a megabyte in 3 s, and a document is cut at 2048 tokens
        anyway. Tokenizing a prefix gives the whole text's tokens except at the prefix's
        end, where a word (pre-token) may be cut; so prefixes doubling in length are
        tokenized until two in a row agree on their first `limit` + 1 tokens.
        """
        size = max(PREFIX_CHARS, 8 * limit)
        previous: list[int] | None = None
        while size < len(text):
            # Cut before a starter: NFC reorders a run of combining marks as a whole and may
            # compose its first letter with its last mark, however long the run.
            end = size
            while end > 0 and unicodedata.combining(text[end]):
                end -= 1
            ids = self.encode(text[:end]) if end else []
            if len(ids) > limit:
                if previous is not None and previous[:limit + 1] == ids[:limit + 1]:
                    return ids
                previous = ids
            size *= 2
        return self.encode(text)

    def truncate(self, text: str, limit: int) -> tuple[Tokenized, int]:
        """As published: cut to `limit` tokens and decode back to text; with its length."""
        ids = self.encode_start(text, limit)
        if len(ids) >= limit:
            cut = self._engine.detokenize(ids[:limit])
            return Tokenized(cut, array("i", self.encode(cut))), limit
        return Tokenized(text, array("i", ids)), len(ids)

    def encode_prompt(self, parts: Iterable[Part]) -> tuple[list[int], list[int], int]:
        """Token ids, the document marker positions and the query marker position."""
        ids: list[int] = []
        pending: list[str] = []  # adjacent text parts are encoded together
        doc_positions: list[int] = []
        query_position = -1
        for part in parts:
            if isinstance(part, str) or (isinstance(part, Tokenized) and part.joins_previous):
                pending.append(part if isinstance(part, str) else part.text)
                continue
            if pending:
                ids += self.encode("".join(pending))
                pending = []
            if isinstance(part, Tokenized):
                ids += part.ids
                continue
            if part.text == DOC_MARKER:
                doc_positions.append(len(ids))
            elif part.text == QUERY_MARKER:
                query_position = len(ids)
            ids.append(self._control_ids[part.text])
        if pending:
            ids += self.encode("".join(pending))
        return ids, doc_positions, query_position

    def plan(self, query: str, documents: Sequence[str], instruction: str | None = None,
             max_doc_tokens: int | None = None,
             should_stop: Callable[[], bool] | None = None,
             max_input_tokens: int | None = None) -> ScoringPlan:
        """`max_doc_tokens` cuts documents shorter than the limits do for this one plan
        (Cohere's `max_tokens_per_doc`); it never lengthens them. `should_stop` is asked
        before each document is tokenized (a thousand long ones take seconds). Once the
        query and the documents so far hold more than `max_input_tokens`, the rest are not
        tokenized: TooManyTokensError."""
        limits = self.limits
        doc_limit = (limits.max_doc_tokens if max_doc_tokens is None
                     else min(int(max_doc_tokens), limits.max_doc_tokens))
        cut_query, query_tokens = self.truncate(remove_markers(query), limits.max_query_tokens)
        if max_input_tokens is not None and query_tokens > max_input_tokens:
            raise TooManyTokensError(f"the query alone holds {query_tokens} tokens after "
                                     f"truncation, more than {max_input_tokens}",
                                     max_input_tokens)
        if instruction is not None:
            instruction = remove_markers(instruction)
        docs, lengths = [], []
        counted = query_tokens
        for done, document in enumerate(documents):
            if should_stop is not None and should_stop():
                raise RerankerCancelled(f"stopped while tokenizing, after {done} of "
                                        f"{len(documents)} documents: should_stop() answered true")
            tokenized, length = self.truncate(remove_markers(document), doc_limit)
            docs.append(tokenized)
            lengths.append(length)
            counted += length
            if max_input_tokens is not None and counted > max_input_tokens:
                raise TooManyTokensError(
                    f"the query and documents hold more than {max_input_tokens} tokens after "
                    f"truncation ({counted} by document {done + 1} of {len(documents)})",
                    max_input_tokens)
        groups = plan_blocks(lengths, query_tokens, max_length=limits.block_tokens,
                             block_size=limits.block_size, max_doc_length=doc_limit)
        blocks: list[PlannedBlock] = []
        queue = list(reversed(groups))
        while queue:
            group = queue.pop()
            parts = build_prompt(cut_query.text, [docs[i] for i in group], instruction)
            ids, doc_positions, query_position = self.encode_prompt(parts)
            block = PlannedBlock(tuple(group), array("i", ids), tuple(doc_positions),
                                 query_position)
            max_context = self._engine.max_context
            if block.decode_length <= max_context:
                blocks.append(block)
            elif len(group) == 1:
                raise InputTooLongError(
                    f"document {group[0]} with the query and instruction needs "
                    f"{block.decode_length} tokens but the context is capped at {max_context}; "
                    "shorten the query or instruction, or lower max_doc_tokens")
            else:  # the published budget ignores the template's own tokens: halve, retry
                half = len(group) // 2
                queue += [group[half:], group[:half]]
        return ScoringPlan(tuple(blocks), query_tokens, tuple(lengths))

