"""Wan2.1's text encoder: umT5 through transformers, and Wan's standard negative prompt.

It maps a list of prompts to a padded context (B, L, D) whose padding rows are zero, as Wan expects. The toy
world's deterministic encoder is ``oneforcing.toy.text_encoder.ToyTextEncoder``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from oneforcing.models.wan_folder import tokenizer_vocab_problem

# Wan2.1's standard negative prompt: the unconditional CFG branch of every Wan recipe in the reference trainers
# (DMD's real score, the consistency teacher, the ODE-trajectory export; docs/algorithms.md §2).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


class UMT5TextEncoder(nn.Module):
    """Wan's umT5-XXL encoder from a local diffusers/transformers directory; padding positions zeroed.

    Loads on first use, so that configs build and validate without the weights; ``dim`` is umT5-XXL's 4096.
    ``tokenizer``: the tokenizer folder (default: the sibling ``tokenizer`` folder of ``path``, as in a Wan2.1
    diffusers folder, else ``path`` itself); its vocabulary is checked against the encoder's embedding table.
    The frozen encoder is kept out of the module's state dict (checkpoints hold trained weights only) and runs on
    the device the module was moved to.
    """

    def __init__(self, path: str, max_length: int = 512, dtype: str = "bfloat16", dim: int = 4096,
                 tokenizer: str | None = None) -> None:
        super().__init__()
        self.path, self.max_length, self.dtype, self.dim = path, max_length, dtype, dim
        self.tokenizer_path = tokenizer
        self._loaded: dict = {}  # a plain dict: not a submodule, not in state_dict()
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)  # follows .to(device)

    @property
    def context_length(self) -> int:
        """L of the (B, L, D) contexts (cached embeddings are padded back to it)."""
        return self.max_length

    @property
    def tokenizer(self):
        return self._loaded.get("tokenizer")

    @property
    def model(self):
        return self._loaded.get("model")

    def load(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoTokenizer, UMT5EncoderModel


        root = Path(self.path)
        if not (root / "config.json").is_file():
            raise FileNotFoundError(
                f"umT5 directory {root} does not exist or has no config.json. Point text_encoder.path (or model_dir) "
                "at a local copy of the Wan2.1 diffusers folder's text_encoder (its tokenizer is read from the "
                "sibling 'tokenizer' folder)."
            )
        sibling = root.parent / "tokenizer"
        tokenizer_dir = Path(self.tokenizer_path) if self.tokenizer_path else (sibling if sibling.is_dir() else root)
        if not tokenizer_dir.is_dir():
            raise FileNotFoundError(f"Tokenizer directory {tokenizer_dir} does not exist; set the text encoder's "
                                    "tokenizer to the Wan2.1 folder's 'tokenizer' folder.")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        model = UMT5EncoderModel.from_pretrained(root, torch_dtype=getattr(torch, self.dtype), local_files_only=True)
        if model.config.d_model != self.dim:
            raise ValueError(f"{root} gives {model.config.d_model}-dim tokens, the config says {self.dim}; set the "
                             f"text encoder's dim and backbone.text_dim to {model.config.d_model}.")
        problem = tokenizer_vocab_problem(len(tokenizer), model.config.vocab_size, tokenizer_dir, root)
        if problem:
            raise ValueError(f"Tokenizer and text encoder do not match: {problem}.")
        self._loaded.update(tokenizer=tokenizer, model=model.requires_grad_(False).eval())

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        self.load()
        model = self._loaded["model"] = self.model.to(self._device_probe.device)
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).to(model.device)
        hidden = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return hidden * tokens.attention_mask[..., None].to(hidden.dtype)  # (B, L, D), padding zeroed

