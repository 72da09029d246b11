"""The published jina-reranker-v3 prompt, built as text pieces and control tokens.

Hugging Face tokenizes the whole prompt string: it splits at special tokens and
byte-pair-encodes each piece between them, template text and user text together
(so `capital?` followed by the template's newline becomes the one token `?\\n`).
The prompt is therefore kept as a list of parts: plain text, joined where adjacent
and encoded with special-token parsing off, and the template's own control tokens,
inserted by id. User text can then never become a control token, and the ids
match the reference exactly.
"""
from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from reranker.model_format import DOC_MARKER, QUERY_MARKER

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CONTROL_TOKENS = (IM_START, IM_END, THINK_OPEN, THINK_CLOSE, DOC_MARKER, QUERY_MARKER)

SYSTEM_PROMPT = (
    "You are a search relevance expert who can determine a ranking of the passages based on "
    "how relevant they are to the query. If the query is a question, how relevant a passage "
    "is depends on how well it answers the question. If not, try to analyze the intent of the "
    "query and assess how well each passage satisfies the intent. If an instruction is "
    "provided, you should follow the instruction when determining the ranking."
)


@dataclass(frozen=True)
class Control:
    """A control token of the template, inserted by id."""
    text: str


@dataclass(frozen=True)
class Tokenized:
    """User text with the token ids it has on its own, so it is not tokenized again.

    Its ids are those it gets inside the prompt unless it starts with a line break: the
    template text before it ends in `>\\n`, and the pre-tokenizer splits there unless
    more line breaks follow (they join `>\\n`'s piece). `joins_previous` says so.
    """
    text: str
    ids: array[int]  # compact: a request holds every document's at once

    @property
    def joins_previous(self) -> bool:
        return self.text.startswith(("\r", "\n"))


Part = str | Control | Tokenized


def remove_markers(text: str) -> str:
    """What the published code does to every query and document: drop the marker strings."""
    return text.replace(QUERY_MARKER, "").replace(DOC_MARKER, "")


def build_prompt(query: str, documents: Sequence[str | Tokenized],
                 instruction: str | None = None) -> list[Part]:
    """The prompt parts for one block; inputs must already be marker-free and truncated."""
    parts: list[Part] = [
        Control(IM_START), "system\n" + SYSTEM_PROMPT, Control(IM_END), "\n",
        Control(IM_START),
        "user\n"
        f"I will provide you with {len(documents)} passages, each indicated by a numerical "
        f"identifier. Rank the passages based on their relevance to query: {query}\n",
    ]
    if instruction:
        parts.append(f"<instruct>\n{instruction}\n</instruct>\n")
    for i, doc in enumerate(documents):
        if i:
            parts.append("\n")
        parts += [f'<passage id="{i}">\n', doc, Control(DOC_MARKER), "\n</passage>"]
    parts += [
        "\n<query>\n" + query, Control(QUERY_MARKER), "\n</query>",
        Control(IM_END), "\n", Control(IM_START), "assistant\n",
        Control(THINK_OPEN), "\n\n", Control(THINK_CLOSE), "\n\n",
    ]
    return parts


def prompt_text(parts: list[Part]) -> str:
    """The prompt as one string, as the published code hands it to its tokenizer."""
    return "".join(p if isinstance(p, str) else p.text for p in parts)
