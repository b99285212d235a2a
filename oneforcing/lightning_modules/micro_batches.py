"""Gradient accumulation's split of a batch into equal micro-batches."""

from __future__ import annotations

import torch


def split_batch(batch: dict, parts: int) -> list[dict]:
    """``batch`` split along its samples (``caption`` counts them) into ``parts`` equal micro-batches (the whole batch
    when 1); members that are not per sample (e.g. a skip count) are shared by every part."""
    size = len(batch["caption"])
    if parts == 1:
        return [batch]
    if size % parts:
        raise ValueError(f"A batch of {size} samples does not split into micro_batches={parts}; set the data's "
                         f"batch_size to a multiple of {parts} (e.g. {parts * max(1, size // parts)}).")
    step = size // parts

    def part(value, k: int):
        per_sample = (isinstance(value, torch.Tensor) and value.ndim > 0 and len(value) == size) or \
            (isinstance(value, list) and len(value) == size)
        return value[k * step:(k + 1) * step] if per_sample else value

    return [{key: part(value, k) for key, value in batch.items()} for k in range(parts)]
