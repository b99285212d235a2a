"""The streaming sampler: step schedules, first-frame enhancement, seeds, and bad input."""

import pytest
import torch

from conftest import TINY_WAN
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanConfig
from oneforcing.sampling.schedules import many_step_sigmas, student_sigmas
from oneforcing.sampling.streaming import StreamingSampler, per_prompt_generators

CFG = WanConfig(**TINY_WAN)
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


class GaussianWorld(torch.nn.Module):
    """The exact velocity of data x0 ~ N(0, s²) per element, as a block-causal model (no context needed):
    E[x0 | x_σ] = (1-σ)s² / ((1-σ)²s² + σ²) · x_σ and v = (x_σ - E[x0 | x_σ]) / σ."""

    def __init__(self, s: float = 0.5) -> None:
        super().__init__()
        self.s, self.calls = s, 0

    def layout(self, num_frames):
        from oneforcing.models.block_layout import BlockLayout
        return BlockLayout(num_frames, 1)

    def new_cache(self, *args, **kwargs):
        return None

    def forward_cached(self, x, sigma, context, cache, start):
        self.calls += 1
        s2, sig = self.s ** 2, sigma.view(*sigma.shape, 1, 1, 1).clamp_min(1e-4)
        mean = (1 - sig) * s2 / ((1 - sig) ** 2 * s2 + sig ** 2) * x
        return (x - mean) / sig


def test_euler_solver_integrates_a_diffusion_models_ode_and_renoising_does_not():
    """On N(0, s²) data with the exact velocity, 48 Euler steps end with the data's spread; re-noising the posterior
    mean at each step (the few-step students' update) ends with less (it keeps sampling means)."""
    from oneforcing.sampling.schedules import many_step_sigmas

    sigmas = many_step_sigmas(48, shift=1.0)
    spreads = {}
    for solver in ("euler", "renoise"):
        world = GaussianWorld(0.5)
        sampler = StreamingSampler(world, sigmas, solver=solver)
        out = sampler.sample(torch.zeros(2, 1, 4), 2, (4, 16, 16), per_prompt_generators(0, 2))
        spreads[solver] = float(out.std())
        assert world.calls == 2 * (48 + 1)  # every step plus the context pass, per frame
    assert abs(spreads["euler"] - 0.5) < 0.02, spreads
    assert spreads["renoise"] < 0.45, spreads
    with pytest.raises(ValueError, match="solver='heun'.*'renoise', 'euler'"):
        StreamingSampler(GaussianWorld(), sigmas, solver="heun")


@pytest.mark.parametrize("solver", ["renoise", "euler"])
def test_a_stream_continued_from_its_own_first_blocks_reproduces_it(solver):
    """The prefix fills the cache by context passes and its blocks consume their noise draws: continuing from the
    first two blocks gives the same later blocks; another prefix changes them (the cache is read)."""
    torch.manual_seed(0)
    model = CausalWanBackbone(CFG, block_size=1, first_block_size=2).eval()
    sampler = StreamingSampler(model, student_sigmas(3), solver=solver)
    context = torch.randn(2, 5, CFG.text_dim)
    whole = sampler.sample(context, 5, LATENT, per_prompt_generators(1, 2))
    continued = sampler.sample(context, 5, LATENT, per_prompt_generators(1, 2), prefix=whole[:, :3])
    assert (continued - whole).abs().max() <= 1e-5
    other = sampler.sample(context, 5, LATENT, per_prompt_generators(1, 2), prefix=whole[:, :3] + 1.0)
    assert (other[:, 3:] - whole[:, 3:]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="whole number of blocks"):
        sampler.sample(context, 5, LATENT, per_prompt_generators(1, 2), prefix=whole[:, :1])


def test_the_kv_cache_is_kept_in_the_dtype_the_blocks_compute_in():
    """float32 parameters under bf16 autocast (bf16-mixed) compute K and V in bfloat16: the cache holds them so,
    and a stream through it stays close to the float32 one; outside autocast the cache has the parameters' dtype."""
    torch.manual_seed(0)
    model = CausalWanBackbone(CFG, block_size=1).eval()
    assert model.new_cache(1, 8, 8, 3).k.dtype == torch.float32
    assert model.new_cache(1, 8, 8, 3, dtype=torch.float16).k.dtype == torch.float16  # an explicit dtype wins
    context = torch.randn(1, 5, CFG.text_dim)
    reference = StreamingSampler(model, student_sigmas(1)).sample(context, 3, LATENT, per_prompt_generators(0, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.new_cache(1, 8, 8, 3)
        assert cache.k.dtype == cache.v.dtype == torch.bfloat16
        mixed = StreamingSampler(model, student_sigmas(1)).sample(context, 3, LATENT, per_prompt_generators(0, 1))
    assert (mixed.float() - reference).abs().max() < 0.1 * reference.abs().max()
