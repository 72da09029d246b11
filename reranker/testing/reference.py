"""The reference: jina-reranker-v3 as published, on Hugging Face transformers' Qwen3.

This mirrors the published `modeling.py` (`format_docs_prompts_func`, `rerank()`,
the projector and cosine) with transformers' own Qwen3Model in float32 and the
`tokenizers` library reading the checkpoint's tokenizer.json. It shares no code
with the runtime under test, so agreement between the two means something.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import Qwen3Config, Qwen3Model

SPECIAL = {"query_embed_token": "<|rerank_token|>", "doc_embed_token": "<|embed_token|>"}


def published_prompt(query, docs, instruction=None):
    for token in SPECIAL.values():
        query = query.replace(token, "")
        docs = [d.replace(token, "") for d in docs]
    prefix = (
        "<|im_start|>system\n"
        "You are a search relevance expert who can determine a ranking of the passages based on how relevant they are to the query. "
        "If the query is a question, how relevant a passage is depends on how well it answers the question. "
        "If not, try to analyze the intent of the query and assess how well each passage satisfies the intent. "
        "If an instruction is provided, you should follow the instruction when determining the ranking."
        "<|im_end|>\n<|im_start|>user\n"
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prompt = (f"I will provide you with {len(docs)} passages, each indicated by a numerical identifier. "
              f"Rank the passages based on their relevance to query: {query}\n")
    if instruction:
        prompt += f"<instruct>\n{instruction}\n</instruct>\n"
    prompt += "\n".join(f'<passage id="{i}">\n{d}{SPECIAL["doc_embed_token"]}\n</passage>'
                        for i, d in enumerate(docs)) + "\n"
    prompt += f"<query>\n{query}{SPECIAL['query_embed_token']}\n</query>"
    return prefix + prompt + suffix


class ReferenceReranker:
    def __init__(self, checkpoint: Path, backbone: Qwen3Model | None = None):
        """The float32 reference. `backbone`: a Qwen3Model already loaded from this
        checkpoint another way (the benchmarks' bf16 baselines use from_pretrained);
        then only the projector is read here."""
        checkpoint = Path(checkpoint)
        state, projector = {}, {}
        for path in sorted(checkpoint.glob("*.safetensors")):
            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    if not name.startswith("model."):
                        projector[name] = f.get_tensor(name).float()
                    elif backbone is None:
                        state[name.removeprefix("model.")] = f.get_tensor(name).float()
        if backbone is None:
            config = json.loads((checkpoint / "config.json").read_text())
            config.pop("architectures", None)
            backbone = Qwen3Model(Qwen3Config(**config)).float().eval()
            backbone.load_state_dict(state, strict=True)
        self.model = backbone
        self.projector = torch.nn.Sequential(
            torch.nn.Linear(1, 1, bias=False), torch.nn.ReLU(), torch.nn.Linear(1, 1, bias=False))
        self.projector[0].weight = torch.nn.Parameter(projector["projector.0.weight"])
        self.projector[2].weight = torch.nn.Parameter(projector["projector.2.weight"])
        self.tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
        self.doc_id = self.tokenizer.token_to_id(SPECIAL["doc_embed_token"])
        self.query_id = self.tokenizer.token_to_id(SPECIAL["query_embed_token"])

    def prompt_ids(self, query, docs, instruction=None) -> list[int]:
        return self.tokenizer.encode(published_prompt(query, docs, instruction)).ids

    @torch.no_grad()
    def block(self, query, docs, instruction=None):
        ids = torch.tensor([self.prompt_ids(query, docs, instruction)])
        hidden = self.model(input_ids=ids).last_hidden_state[0].float()
        doc_embeds = self.projector(hidden[ids[0] == self.doc_id]).numpy()
        query_embed = self.projector(hidden[ids[0] == self.query_id]).numpy()[0]
        return doc_embeds, query_embed

    def _truncate(self, text, limit):
        ids = self.tokenizer.encode(text).ids
        if len(ids) >= limit:
            return self.tokenizer.decode(ids[:limit], skip_special_tokens=False), limit
        return text, len(ids)

    def scores(self, query, documents, instruction=None, *, max_length=131072, block_size=125,
               max_query_length=512, max_doc_length=2048) -> np.ndarray:
        """Scores in input order, as published `rerank()` computes them."""
        docs, lengths = zip(*(self._truncate(d, max_doc_length) for d in documents))
        query, query_length = self._truncate(query, max_query_length)
        doc_embeddings, query_embeddings, weights = [], [], []
        block, capacity = [], max_length - 2 * query_length

        def flush():
            d, q = self.block(query, block, instruction)
            doc_embeddings.extend(d)
            query_embeddings.append(q)
            cos = d @ q / (np.linalg.norm(d, axis=1) * np.linalg.norm(q))
            weights.append(((1.0 + cos) / 2.0).max())

        for length, doc in zip(lengths, docs):
            block.append(doc)
            capacity -= length
            if len(block) >= block_size or capacity <= max_doc_length:
                flush()
                block, capacity = [], max_length - 2 * query_length
        if block:
            flush()
        q = np.average(np.array(query_embeddings, dtype=np.float64), axis=0, weights=weights)
        d = np.array(doc_embeddings, dtype=np.float64)
        return d @ q / (np.linalg.norm(d, axis=1) * np.linalg.norm(q))
