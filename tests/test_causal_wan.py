"""The causal student: block-causal masks, the three execution paths, the KV cache and its rolling window."""

import pytest
import torch

from conftest import TINY_WAN
from oneforcing.models.block_layout import BlockLayout, frame_visibility, teacher_forcing_visibility
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanBackbone, WanConfig

CFG = WanConfig(**TINY_WAN)
B, F, C, H, W = 2, 12, 12, 8, 8
LAYOUTS = {"framewise": dict(block_size=1), "chunkwise": dict(block_size=3),
           "first4then1": dict(block_size=1, first_block_size=4)}


def make(**layout) -> CausalWanBackbone:
    torch.manual_seed(0)
    return CausalWanBackbone(CFG, **layout).eval()


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, F, C, H, W, generator=g), torch.rand(B, F, generator=g),
            torch.randn(B, 5, CFG.text_dim, generator=g), torch.randn(B, F, C, H, W, generator=g))


def run_cached(model, x, sigma, context, clean=None):
    """Block by block; the cache keeps each block's own input, or the clean block if given (context pass)."""
    cache = model.new_cache(B, H, W, x.shape[1])
    outs = []
    for start, n in model.layout(x.shape[1]).blocks:
        outs.append(model.forward_cached(x[:, start:start + n], sigma[:, start:start + n], context, cache, start))
        if clean is not None:
            model.forward_cached(clean[:, start:start + n], torch.zeros(B, n), context, cache, start)
    return torch.cat(outs, dim=1), cache


@pytest.mark.parametrize("name", LAYOUTS)
def test_cached_equals_full_sequence(name):
    model = make(**LAYOUTS[name])
    x, sigma, context, _ = inputs()
    with torch.no_grad():
        full = model(x, sigma, context)
        cached, _ = run_cached(model, x, sigma, context)
    assert (full - cached).abs().max() <= 1e-5


@pytest.mark.parametrize("name", LAYOUTS)
def test_teacher_forcing_equals_cache_filled_by_clean_context_passes(name):
    model = make(**LAYOUTS[name])
    x, sigma, context, clean = inputs()
    with torch.no_grad():
        forced = model.forward_teacher_forcing(x, sigma, context, clean)
        cached, _ = run_cached(model, x, sigma, context, clean=clean)
    assert (forced - cached).abs().max() <= 1e-5


@pytest.mark.parametrize("name", LAYOUTS)
def test_later_frames_never_change_earlier_outputs(name):
    model = make(**LAYOUTS[name])
    x, sigma, context, _ = inputs()
    last_block_start = model.layout(F).blocks[-1][0]
    x2 = x.clone()
    x2[:, last_block_start:] += 1.0
    with torch.no_grad():
        full, full2 = model(x, sigma, context), model(x2, sigma, context)
        cached, _ = run_cached(model, x, sigma, context)
        cached2, _ = run_cached(model, x2, sigma, context)
    assert torch.equal(full[:, :last_block_start], full2[:, :last_block_start])
    assert torch.equal(cached[:, :last_block_start], cached2[:, :last_block_start])
    assert (full[:, last_block_start:] - full2[:, last_block_start:]).abs().max() > 1e-3  # the change is seen


def test_bidirectional_within_a_block_causal_across():
    model = make(block_size=3)
    x, sigma, context, _ = inputs()
    x2 = x.clone()
    x2[:, 5] += 1.0  # last frame of block 1 (frames 3..5)
    with torch.no_grad():
        a, b = model(x, sigma, context), model(x2, sigma, context)
    assert torch.equal(a[:, :3], b[:, :3])
    assert (a[:, 3] - b[:, 3]).abs().max() > 1e-3  # same block sees frame 5


def test_block_causal_visibility_matrix():
    visible = frame_visibility(BlockLayout(5, 2, first_block_size=1))  # blocks [0], [1, 2], [3, 4]
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0],
                             [1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(visible, expected)


def test_teacher_forcing_mask_semantics():
    layout = BlockLayout(4, 2)  # blocks [0, 1], [2, 3]
    m = teacher_forcing_visibility(layout)
    F_ = 4
    clean_to_clean, noisy_to_clean, noisy_to_noisy = m[:F_, :F_], m[F_:, :F_], m[F_:, F_:]
    assert torch.equal(clean_to_clean, frame_visibility(layout))
    assert not m[:F_, F_:].any(), "clean frames never see noisy ones"
    assert not noisy_to_clean[:2].any(), "the first noisy block has no earlier clean block"
    assert noisy_to_clean[2:, :2].all() and not noisy_to_clean[2:, 2:].any(), "noisy block 1 sees clean block 0 only"
    assert torch.equal(noisy_to_noisy, torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)).bool())


def test_windowed_visibility_keeps_sink_and_recent_frames():
    visible = frame_visibility(BlockLayout(8, 1), window_frames=4, sink_frames=1)
    # frame 6 sees the sink frame 0 and the 3 most recent frames 4, 5, 6
    assert visible[6].nonzero().flatten().tolist() == [0, 4, 5, 6]
    assert visible[2].nonzero().flatten().tolist() == [0, 1, 2]


@pytest.mark.parametrize("block_size,window,sink", [(1, 4, 0), (1, 5, 2), (3, 6, 3), (3, 7, 1)])
def test_rolling_cache_equals_brute_force_recomputation_over_the_window(block_size, window, sink):
    """The cached roll-out with eviction equals one masked pass in which every frame attends to its window."""
    torch.manual_seed(0)
    model = CausalWanBackbone(CFG, block_size=block_size, window_frames=window, sink_frames=sink).eval()
    x, sigma, context, clean = inputs()
    with torch.no_grad():
        brute = model.forward_teacher_forcing(x, sigma, context, clean)
        cached, cache = run_cached(model, x, sigma, context, clean=clean)
    assert (brute - cached).abs().max() <= 1e-5
    assert cache.num_cached_frames == window
    assert cache.frames[:sink] == list(range(sink)), "sink frames are never evicted"
    # a window that covers everything equals the unwindowed model
    unwindowed = CausalWanBackbone(CFG, block_size=block_size).eval()
    unwindowed.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (unwindowed.forward_teacher_forcing(x, sigma, context, clean) - brute).abs().max() > 1e-4


def test_long_rollout_with_window_has_constant_cache_memory():
    torch.manual_seed(0)
    model = CausalWanBackbone(CFG, block_size=1, window_frames=4, sink_frames=1).eval()
    frames = 10 * F
    context = torch.randn(1, 5, CFG.text_dim)
    cache = model.new_cache(1, H, W, frames)
    size_before = cache.k.numel()
    with torch.no_grad():
        for start in range(frames):
            out = model.forward_cached(torch.randn(1, 1, C, H, W), torch.ones(1, 1), context, cache, start)
    assert torch.isfinite(out).all()
    assert cache.k.numel() == size_before == CFG.num_layers * 4 * (H // 2) * (W // 2) * CFG.dim
    assert cache.frames == [0, frames - 3, frames - 2, frames - 1]


def test_rope_positions_are_absolute_frame_indices():
    model = make(block_size=1)
    rope = model.transformer.rope
    hidden = torch.zeros(1, C, F, H, W)  # diffusers layout
    full_cos, full_sin = rope(hidden)
    T = (H // 2) * (W // 2)
    model.control.frame_positions = torch.arange(5, 7)
    block_cos, block_sin = rope(torch.zeros(1, C, 2, H, W))
    model.control.clear()
    assert torch.equal(block_cos, full_cos[:, 5 * T:7 * T]) and torch.equal(block_sin, full_sin[:, 5 * T:7 * T])
    # the same block at offset 0 has different (non-offset) temporal frequencies
    assert not torch.equal(rope(torch.zeros(1, C, 2, H, W))[0], block_cos)


def test_teacher_weights_load_into_the_causal_student():
    torch.manual_seed(0)
    teacher = WanBackbone(CFG)
    student = CausalWanBackbone(CFG, block_size=3)
    student.load_state_dict(teacher.state_dict(), strict=True)
    x, sigma, context, _ = inputs()
    with torch.no_grad():  # the first block sees only itself, like a bidirectional pass over those frames
        same = teacher(x[:, :3], sigma[:, 0], context) - student(x[:, :3], sigma[:, :1].expand(-1, 3), context)
    assert same.abs().max() <= 1e-5


def test_gradient_reaches_only_the_current_block_through_a_detached_cache():
    model = make(block_size=1)
    x, sigma, context, _ = inputs()
    cache = model.new_cache(B, H, W, F)
    with torch.no_grad():
        for start in range(3):
            model.forward_cached(x[:, start:start + 1], sigma[:, start:start + 1], context, cache, start)
    block = x[:, 3:4].clone().requires_grad_(True)
    out = model.forward_cached(block, sigma[:, 3:4], context, cache, 3)
    out.square().mean().backward()
    assert block.grad is not None and block.grad.abs().sum() > 0
    assert not cache.k.requires_grad and not cache.v.requires_grad
    assert model.transformer.blocks[0].attn1.to_k.weight.grad.abs().sum() > 0


def test_bad_layouts_and_cache_misuse_fail_clearly():
    with pytest.raises(ValueError, match="do not split"):
        BlockLayout(10, 3)
    with pytest.raises(ValueError, match="smaller than a block"):
        CausalWanBackbone(CFG, block_size=3, window_frames=2)
    with pytest.raises(ValueError, match="needs a rolling window"):
        CausalWanBackbone(CFG, block_size=1, sink_frames=1)
    model = make(block_size=1)
    x, sigma, context, _ = inputs()
    cache = model.new_cache(B, H, W, F)
    with torch.no_grad():
        model.forward_cached(x[:, :1], sigma[:, :1], context, cache, 0)
        with pytest.raises(ValueError, match="batch size 2"):
            model.forward_cached(x[:1, 1:2], sigma[:1, 1:2], context[:1], cache, 1)
        with pytest.raises(ValueError, match="another prompt"):
            model.forward_cached(x[:, 1:2], sigma[:, 1:2], context + 1, cache, 1)
        with pytest.raises(ValueError, match="generate blocks in order"):
            model.forward_cached(x[:, 3:4], sigma[:, 3:4], context, cache, 3)
