"""The streaming sampler: step schedules, first-frame enhancement, seeds, and bad input."""

import pytest
import torch

from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanConfig
from oneforcing.sampling.schedules import many_step_sigmas, student_sigmas
from oneforcing.sampling.streaming import StreamingSampler, per_prompt_generators

CFG = WanConfig(num_layers=2, num_attention_heads=2, attention_head_dim=12, ffn_dim=32)
LATENT = (12, 8, 8)


def test_warped_student_schedules_at_shift_5():
    assert [round(1000 * s, 1) for s in student_sigmas(4, 5.0)] == [1000.0, 937.5, 833.3, 625.0]
    assert [round(1000 * s, 2) for s in student_sigmas(2, 5.0)] == [1000.0, 833.33]
    assert student_sigmas(1, 5.0) == [1.0]
    grid = many_step_sigmas(48, 5.0)
    assert len(grid) == 48 and [grid[i] for i in (0, 12, 24, 36)] == pytest.approx(student_sigmas(4, 5.0))


def record_calls(model):
    calls = []
    original = model.forward_cached

    def spy(x, sigma, context, cache, frame_offset):
        calls.append((frame_offset, x.shape[1], round(float(sigma[0, 0]), 4)))
        return original(x, sigma, context, cache, frame_offset)

    model.forward_cached = spy
    return calls


def test_first_frame_enhancement_applies_to_the_first_block_only():
    torch.manual_seed(0)
    model = CausalWanBackbone(CFG, block_size=1, first_block_size=4).eval()
    calls = record_calls(model)
    sampler = StreamingSampler(model, student_sigmas(1), first_block_sigmas=student_sigmas(4))
    video = sampler.sample(torch.randn(1, 5, CFG.text_dim), 8, LATENT, per_prompt_generators(0, 1))
    assert video.shape == (1, 8, *LATENT)
    first = [c for c in calls if c[0] == 0]
    assert first == [(0, 4, 1.0), (0, 4, 0.9375), (0, 4, 0.8333), (0, 4, 0.625), (0, 4, 0.0)]  # 4 steps + context
    for start in range(4, 8):
        assert [c for c in calls if c[0] == start] == [(start, 1, 1.0), (start, 1, 0.0)]  # 1 step + context


def test_stream_yields_blocks_in_order_and_matches_sample():
    torch.manual_seed(0)
    model = CausalWanBackbone(CFG, block_size=3).eval()
    sampler = StreamingSampler(model, student_sigmas(2))
    context = torch.randn(2, 5, CFG.text_dim)
    blocks = list(sampler.stream(context, 9, LATENT, per_prompt_generators(7, 2)))
    assert [b.start for b in blocks] == [0, 3, 6]
    whole = sampler.sample(context, 9, LATENT, per_prompt_generators(7, 2))
    assert torch.equal(torch.cat([b.latents for b in blocks], dim=1), whole)


def test_prompt_seed_does_not_depend_on_batching():
    torch.manual_seed(0)
    model = CausalWanBackbone(CFG, block_size=1).eval()
    sampler = StreamingSampler(model, student_sigmas(2))
    context = torch.randn(2, 5, CFG.text_dim)
    batch = sampler.sample(context, 4, LATENT, per_prompt_generators(3, 2))
    alone = sampler.sample(context[1:], 4, LATENT, per_prompt_generators(4, 1))
    assert (batch[1:] - alone).abs().max() <= 1e-5


def test_bad_step_lists_fail_clearly():
    model = CausalWanBackbone(CFG, block_size=1)
    with pytest.raises(ValueError, match="not strictly decreasing"):
        StreamingSampler(model, [0.5, 0.9])
    with pytest.raises(ValueError, match="outside"):
        StreamingSampler(model, [1.5, 0.5])
    with pytest.raises(ValueError, match="empty"):
        StreamingSampler(model, [])
    chunkwise = StreamingSampler(CausalWanBackbone(CFG, block_size=3), [1.0])
    with pytest.raises(ValueError, match="do not split"):
        chunkwise.sample(torch.randn(1, 5, CFG.text_dim), 7, LATENT, per_prompt_generators(0, 1))
    with pytest.raises(ValueError, match="one per prompt"):
        chunkwise.sample(torch.randn(2, 5, CFG.text_dim), 6, LATENT, per_prompt_generators(0, 1))
