"""The EMA's in-place update pairs (``aligned_parts``) and the gather of partitioned state dicts, on stand-ins of
ZeRO-3 parameters (``ds_id``, ``ds_tensor``, ``ds_numel``, whole ``data`` only while gathered): one process, no
DeepSpeed engine (the 2-process runs are in test_engines_deepspeed.py)."""

from __future__ import annotations

import torch
from torch import nn

from oneforcing.models.sharded import aligned_parts


def zero3_like(whole: torch.Tensor, gathered: bool) -> nn.Parameter:
    """A parameter as ZeRO-3 leaves it on rank 0 of 2: its half as ``ds_tensor``, the whole tensor as ``data``
    only when gathered (else empty); ``partition()`` drops the whole copy."""
    p = nn.Parameter(whole.clone() if gathered else torch.empty(0), requires_grad=False)
    p.ds_id, p.ds_numel = id(p), whole.numel()
    p.ds_tensor = whole.flatten()[: (whole.numel() + 1) // 2].clone()
    p.partitions = 0

    def partition():
        p.data = torch.empty(0)
        p.partitions += 1

    p.partition = partition
    return p


def same(x: torch.Tensor, y: torch.Tensor) -> bool:
    """The same storage and shape (``.data`` is a new tensor object at each access)."""
    return x.data_ptr() == y.data_ptr() and x.shape == y.shape


def holder(*params: nn.Parameter) -> nn.Module:
    module = nn.Module()
    for i, p in enumerate(params):
        module.register_parameter(f"p{i}", p)
    return module


def test_partitions_pair_and_whole_copies_pair_only_when_both_are_whole():
    w = torch.arange(6.0).reshape(2, 3)
    target = holder(zero3_like(w, gathered=True), zero3_like(w, gathered=False), zero3_like(w, gathered=True))
    source = holder(zero3_like(w + 1, gathered=True), zero3_like(w + 1, gathered=True),
                    zero3_like(w + 1, gathered=False))  # the third: a skipped step left it released
    targets, sources = aligned_parts(target, source)
    t0, t1, t2 = target.parameters()
    s0, s1, s2 = source.parameters()
    assert len(targets) == len(sources) == 4
    assert all(same(x, y) for x, y in zip(targets, [t0.ds_tensor, t0.data, t1.ds_tensor, t2.ds_tensor]))
    assert all(same(x, y) for x, y in zip(sources, [s0.ds_tensor, s0.data, s1.ds_tensor, s2.ds_tensor]))
    # the target's whole copy without a whole source is released, to be gathered afresh from its partition
    assert (t0.partitions, t1.partitions, t2.partitions) == (0, 0, 1) and t2.data.numel() == 0
    torch._foreach_lerp_(targets, sources, 0.5)  # what the EMA update does with them
    assert torch.equal(t0.data, w + 0.5) and torch.equal(t0.ds_tensor, (w + 0.5).flatten()[:3])


def test_plain_parameters_pair_themselves():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    targets, sources = aligned_parts(a, b)
    assert [t is p for t, p in zip(targets, a.parameters())] == [True, True]
    assert [s is p for s, p in zip(sources, b.parameters())] == [True, True]
