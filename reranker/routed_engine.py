"""Both engines in one process: llama.cpp for short prompts, the torch engine for long ones.

Where `reranker-cli doctor --model` measured torch faster on long requests but slower on
short ones (an AVX2 EPYC: llama.cpp's int8 products win at a few hundred tokens, its
attention loses at a few thousand), `auto` loads both and sends each block's prompt to
the engine measured faster at its length (`engine_choice.auto_engine`). Tokenization is
llama.cpp's, shared by both, so a document has the same tokens whichever engine runs it.
The price is memory: both engines' weights are held (about 1 GB for llama.cpp and 1.3 GB
for torch on a q8_0 file).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from reranker.engine import LlamaEngine
from reranker.engine_choice import ROUTED
from reranker.torch_engine import TorchEngine


class RoutedEngine:
    """The engine interface of `LlamaEngine`, answered by whichever engine a prompt's
    length picks: torch from `torch_from_tokens` tokens on, llama.cpp below."""

    name = ROUTED

    def __init__(self, llama: LlamaEngine, torch_from_tokens: int, **torch_options):
        """Takes `llama` over (closing this closes it) and loads the torch engine on the
        same file with `torch_options`, tokenizing through `llama`."""
        self.llama = llama
        try:
            if isinstance(torch_from_tokens, bool) or not isinstance(torch_from_tokens, int) \
                    or torch_from_tokens < 1:
                raise ValueError(f"torch_from_tokens must be a positive integer, got "
                                 f"{torch_from_tokens!r}")
            self.torch = TorchEngine(llama.model_path, vocabulary=llama, **torch_options)
        except BaseException:  # nothing half-made is left holding the weights
            llama.close()
            raise
        self.torch_from_tokens = torch_from_tokens
        self.model_path = llama.model_path
        self.n_threads = llama.n_threads
        self.cpu_path = llama.cpu_path  # llama.cpp's weight layout; torch has none
        self.hidden_size = llama.hidden_size
        self.n_vocab = llama.n_vocab
        self.max_context = min(llama.max_context, self.torch.max_context)
        self._last: LlamaEngine | TorchEngine = llama  # the engine of the last call

    def engine_for(self, n_tokens: int) -> LlamaEngine | TorchEngine:
        """The engine a prompt of `n_tokens` tokens goes to."""
        return self.torch if n_tokens >= self.torch_from_tokens else self.llama

    # -- tokens: llama.cpp's ----------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.llama.tokenize(text)

    def detokenize(self, tokens: Sequence[int], **options) -> str:
        return self.llama.detokenize(tokens, **options)

    def special_token_id(self, text: str) -> int:
        return self.llama.special_token_id(text)

    # -- hidden states ------------------------------------------------------------------
    def hidden_states(self, tokens: Sequence[int], positions: Sequence[int],
                      should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """`LlamaEngine.hidden_states`, on the engine this prompt's length picks."""
        engine = self.engine_for(len(tokens))
        states = engine.hidden_states(tokens, positions, should_stop)
        self._last = engine
        return states

    @property
    def reused_tokens(self) -> int:
        return self._last.reused_tokens

    @property
    def decoded_tokens(self) -> int:
        return self._last.decoded_tokens

    def reset_cache(self) -> None:
        self.llama.reset_cache()
        self.torch.reset_cache()

    def close(self) -> None:
        """Close both engines (torch first: it tokenizes through llama.cpp); idempotent."""
        self.torch.close()
        self.llama.close()
