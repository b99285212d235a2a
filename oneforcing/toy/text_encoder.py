"""The toy world's text encoder: deterministic, over the toy vocabulary.

Like umT5 (``oneforcing.models.text_encoders``) it maps prompts to a padded context (B, L, D) whose padding rows
are zero, as Wan expects; the empty prompt "" encodes to all zeros and is the unconditional (CFG) context.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from oneforcing.toy.vocabulary import VOCABULARY

_WORD = re.compile(r"[a-z]+")


class ToyTextEncoder(nn.Module):
    """One-hot word ⊕ one-hot position per token; no parameters, identical on every machine.

    The position code lets cross-attention bind an attribute to its object in two-object captions.
    """

    def __init__(self, max_tokens: int = 24) -> None:
        super().__init__()
        self.max_tokens = max_tokens
        self.vocabulary = VOCABULARY
        self.index = {w: i for i, w in enumerate(VOCABULARY)}
        self.dim = len(VOCABULARY) + max_tokens

    @property
    def context_length(self) -> int:
        """L of the (B, L, D) contexts (cached embeddings are padded back to it)."""
        return self.max_tokens

    def tokenize(self, prompt: str) -> list[int]:
        words = _WORD.findall(prompt.lower())
        unknown = sorted({w for w in words if w not in self.index})
        if unknown:
            raise ValueError(
                f"Prompt {prompt!r} has words outside the toy vocabulary: {unknown}. "
                f"Use only: {', '.join(self.vocabulary)}."
            )
        if len(words) > self.max_tokens:
            raise ValueError(
                f"Prompt {prompt!r} has {len(words)} words; the toy encoder takes at most {self.max_tokens}. "
                "Shorten it or raise max_tokens."
            )
        return [self.index[w] for w in words]

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> context (B, L, len(vocab) + L), float32."""
        token_ids = [self.tokenize(p) for p in prompts]  # validate all before allocating
        context = torch.zeros(len(prompts), self.max_tokens, self.dim)
        for b, ids in enumerate(token_ids):
            for pos, word in enumerate(ids):
                context[b, pos, word] = 1.0
                context[b, pos, len(self.vocabulary) + pos] = 1.0
        return context
