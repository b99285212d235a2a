"""Text encoders: a deterministic one for the toy vocabulary, umT5 (through transformers) for Wan.

Both map a list of prompts to a padded context (B, L, D) whose padding rows are zero, as Wan expects;
the empty prompt "" encodes to all zeros and serves as the unconditional (CFG) context for the toy.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from oneforcing.models.toy_vocabulary import VOCABULARY

_WORD = re.compile(r"[a-z]+")

# Wan2.1's standard negative prompt: the unconditional CFG branch of every Wan recipe in the reference trainers
# (DMD's real score, the consistency teacher, the ODE-trajectory export; algorithm-notes §0, §10.2).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


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


class UMT5TextEncoder(nn.Module):
    """Wan's umT5-XXL encoder from a local diffusers/transformers directory; padding positions zeroed.

    Loads on first use, so that configs build and validate without the weights; ``dim`` is umT5-XXL's 4096.
    """

    def __init__(self, path: str, max_length: int = 512, dtype: str = "bfloat16", dim: int = 4096) -> None:
        super().__init__()
        self.path, self.max_length, self.dtype, self.dim = path, max_length, dtype, dim
        self.tokenizer = self.model = None

    def load(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(self.path)
        if not root.is_dir():
            raise FileNotFoundError(
                f"umT5 directory {root} does not exist. Point text_encoder.path at a local copy of the Wan2.1 "
                "diffusers folder's text_encoder (its tokenizer is read from the sibling 'tokenizer' folder)."
            )
        tokenizer_dir = root.parent / "tokenizer" if (root.parent / "tokenizer").is_dir() else root
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        model = UMT5EncoderModel.from_pretrained(root, torch_dtype=getattr(torch, self.dtype), local_files_only=True)
        if model.config.d_model != self.dim:
            raise ValueError(f"{root} gives {model.config.d_model}-dim tokens, the config says {self.dim}.")
        self.model = model.requires_grad_(False)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        self.load()
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).to(self.model.device)
        hidden = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return hidden * tokens.attention_mask[..., None].to(hidden.dtype)  # (B, L, D), padding zeroed


TextEncoder = ToyTextEncoder | UMT5TextEncoder
