"""A failed checkpoint save leaves the previous checkpoint intact and no partial file."""

import pytest
import torch

from oneforcing.callbacks.atomic_checkpoint import AtomicCheckpointIO


def test_save_is_all_or_nothing(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["step"] == 1

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    assert torch.load(target, weights_only=True)["step"] == 1, "the previous checkpoint survives"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"], "no partial file is left"
