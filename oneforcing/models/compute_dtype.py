"""The dtype blocks compute in under mixed precision: autocast's where autocast runs, or the dtype a meta-device
trace stands in for it (the memory plan's ``MetaAutocast``), so that buffers such as the KV cache are sized alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_traced: ContextVar[torch.dtype | None] = ContextVar("traced_autocast_dtype", default=None)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The lower-precision dtype in force for ``device_type`` ("cuda", "cpu", "meta", ...), or None without one."""
    traced = _traced.get()
    if traced is not None:
        return traced
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


@contextmanager
def traced_autocast(dtype: torch.dtype) -> Iterator[None]:
    """While it lasts, ``autocast_dtype`` answers ``dtype`` on every device (a trace where autocast cannot run)."""
    token = _traced.set(dtype)
    try:
        yield
    finally:
        _traced.reset(token)
