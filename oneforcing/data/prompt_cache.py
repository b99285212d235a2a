"""Cached prompt embeddings in shards, so that training never loads the text encoder (umT5-XXL: 5 B parameters).

A sample's ``prompt_embedding`` member is its caption's context without the padding rows: (L, D) in the text
encoder's dtype, L the caption's token count (umT5 zeroes padding rows, so trimming and padding with zeros back to
the encoder's length gives the encoder's output exactly). The negative prompt's embedding (the unconditional CFG
branch) is stored once per split, in ``negative_prompt.safetensors`` beside ``index.json``, whose
``negative_prompt`` field records its text; ``context_length`` and ``context_dim`` record the padded shape.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PROMPT_MEMBER = "prompt_embedding"
NEGATIVE_FILE = "negative_prompt.safetensors"


def trim_padding(context: torch.Tensor) -> torch.Tensor:
    """(L, D) -> (n, D): drop the trailing all-zero (padding) rows; at least one row is kept."""
    nonzero = context.abs().amax(dim=-1) > 0  # (L,)
    n = int(nonzero.nonzero().max()) + 1 if nonzero.any() else 1
    return context[:n].contiguous()


def pad_contexts(contexts: list[torch.Tensor] | torch.Tensor, length: int) -> torch.Tensor:
    """(B, n, D) or B tensors (n_b, D) -> (B, length, D), zero rows appended (the encoder's padding)."""
    rows = list(contexts)
    too_long = [r.shape[0] for r in rows if r.shape[0] > length]
    if too_long:
        raise ValueError(f"cached prompt embeddings of {max(too_long)} tokens exceed the text encoder's length {length}; "
                         "re-encode them with the same text encoder (oneforcing data prompts / encode).")
    out = rows[0].new_zeros(len(rows), length, rows[0].shape[-1])
    for b, row in enumerate(rows):
        out[b, : row.shape[0]] = row
    return out


def save_negative(split_dir: str | Path, embedding: torch.Tensor) -> None:
    """Write the negative prompt's (L, D) embedding (padding trimmed) beside a split's index."""
    path = Path(split_dir) / NEGATIVE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"negative_prompt": trim_padding(embedding).contiguous()}, str(tmp))
    tmp.replace(path)


def load_negative(split_dir: str | Path) -> torch.Tensor | None:
    """The split's cached negative-prompt embedding (n, D), or None when it has none."""
    path = Path(split_dir) / NEGATIVE_FILE
    return load_file(str(path))["negative_prompt"] if path.is_file() else None
