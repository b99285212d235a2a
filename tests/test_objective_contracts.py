"""What every objective promises besides its maths: the reference's hyper-parameters as defaults, the names of
its logged metrics, randomness drawn only from ``ctx.rng`` (so a resumed run is exact), which roll-out it
asks for, and clear errors. Together with tests/test_wiring.py these are what mutation testing checks."""

from __future__ import annotations

import pytest
import torch

from oneforcing.models.causal_attention import KVCache
from oneforcing.objectives.base import Objective
from oneforcing.objectives.consistency import ConsistencyDistillation
from oneforcing.objectives.diffusion import CausalDiffusion
from oneforcing.objectives.dmd import DMD
from oneforcing.objectives.gan import GAN
from oneforcing.objectives.sid import SiD
from oneforcing.objectives.timesteps import sample_score_sigma
from oneforcing.objectives.trajectory import TrajectoryDistillation
from tests.stubs import StubFullSequence, StubScore
from tests.test_wiring import B, NF, C, H, W, context_for, latents

# docs/algorithms.md §10-§13, §16 (w = 1 + g for the DMD-form guidance of the papers)
REFERENCE_DEFAULTS = {
    DMD: dict(weight=1.0, guidance_scale=4.0, timestep_shift=5.0, critic_timestep_shift=5.0, min_timestep=20.0,
              max_timestep=980.0, train_critic=True),
    SiD: dict(weight=1.0, alpha=1.0, guidance_scale=4.0, timestep_shift=5.0, critic_timestep_shift=5.0,
              min_timestep=20.0, max_timestep=980.0),
    ConsistencyDistillation: dict(weight=1.0, num_grid_steps=48, grid_shift=5.0, guidance_scale=3.0,
                                  teacher_forcing=True),
    CausalDiffusion: dict(weight=1.0, teacher_forcing=True, timestep_shift=5.0),
    TrajectoryDistillation: dict(weight=1.0, flavour="bidirectional"),
    GAN: dict(weight=0.03, feature_layers=[3, 5], num_registers=2, head_ffn_dim=256, head_num_heads=4,
              relativistic=False, r1_weight=0.0, r1_sigma=0.1, r1_kind="apt",
              r2_weight=0.0, r2_sigma=0.01, critic_timestep_shift=5.0, real_source="data", head_lr=None,
              head_betas=(0.0, 0.999), shared_flow_pass=False, discriminator_update_every=1),
}


@pytest.mark.parametrize("cls", list(REFERENCE_DEFAULTS), ids=lambda c: c.__name__)
def test_defaults_are_the_reference_hyper_parameters(cls):
    objective = cls()
    assert {k: getattr(objective, k) for k in REFERENCE_DEFAULTS[cls]} == REFERENCE_DEFAULTS[cls]


def stub_models():
    torch.manual_seed(0)
    return {"teacher": StubScore(0.5, 0.2, 1.0), "critic": StubScore(-0.3, 0.7, 0.4),
            "generator": StubFullSequence(0.2, d=0.3, block_size=2), "generator_ema": StubFullSequence(-0.4, d=0.1)}


def trajectory_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"trajectory": torch.randn(B, 3, NF, C, H, W, generator=g),
            "trajectory_sigmas": torch.tensor([1.0, 0.9, 0.7]).repeat(B, 1),
            "ode_output": torch.randn(B, NF, C, H, W, generator=g)}


def run(objective, side: str, seed: int = 11, grad: bool = False, global_seed: int = 0):
    x = latents(0, grad=grad)
    ctx = context_for(x, stub_models(), real=latents(1, offset=-2.0), seed=seed, batch=trajectory_batch())
    torch.manual_seed(global_seed)  # after the stubs' own seeding: only ctx.rng may decide the draws
    requested = []
    rollout = ctx.rollout_fn
    ctx.rollout_fn = lambda g: requested.append(g) or rollout(g)
    loss, logs = getattr(objective, f"{side}_loss")(ctx)
    return loss, logs, requested


CASES = {  # objective, side -> the metric names it logs, and the roll-out it asks for (None: none)
    "dmd generator": (lambda: DMD(), "generator", {"dmd_loss", "dmd_gradient_norm", "dmd_sigma"}, [True]),
    "dmd critic": (lambda: DMD(), "critic", {"critic_flow_loss", "critic_sigma"}, [False]),
    "sid generator": (lambda: SiD(), "generator", {"sid_loss", "sid_sigma"}, [True]),
    "sid critic": (lambda: SiD(), "critic", {"critic_flow_loss", "critic_sigma"}, [False]),
    "cd": (lambda: ConsistencyDistillation(num_grid_steps=8), "generator", {"cd_loss", "cd_sigma"}, []),
    "diffusion": (lambda: CausalDiffusion(), "generator", {"diffusion_loss", "diffusion_sigma"}, []),
    "trajectory": (lambda: TrajectoryDistillation(), "generator", {"ode_loss", "ode_sigma"}, []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logged_metrics_rollout_request_and_randomness_from_ctx_rng_only(case):
    make, side, names, wanted = CASES[case]
    loss_a, logs_a, requested = run(make(), side, global_seed=1)
    loss_b, logs_b, _ = run(make(), side, global_seed=2)  # the global generator must not matter
    assert set(logs_a) == names
    assert requested == wanted
    assert torch.equal(loss_a, loss_b) and all(torch.equal(logs_a[k], logs_b[k]) for k in logs_a)
    loss_c, _, _ = run(make(), side, seed=12)
    assert not torch.equal(loss_a, loss_c), "another ctx.rng seed gives other draws"
    sigma_key = next(k for k in names if k.endswith("sigma"))
    assert 0.0 < float(logs_a[sigma_key]) <= 1.0


def recording_gan_scores(monkeypatch):
    def scores(self, ctx, x, sigma, context):
        return (x.flatten(1).mean(1) * 3.0).float(), torch.zeros_like(x)

    monkeypatch.setattr(GAN, "scores", scores)


@pytest.mark.parametrize("kwargs,side,names,wanted", [
    ({}, "generator", {"gan_g_loss", "gan_g_fake_logit"}, [True]),
    ({}, "critic", {"gan_d_loss", "gan_real_logit", "gan_fake_logit", "gan_sigma"}, [False]),
    ({"r1_weight": 1.0, "r2_weight": 1.0, "shared_flow_pass": True}, "critic",
     {"gan_d_loss", "gan_real_logit", "gan_fake_logit", "gan_sigma", "gan_r1", "gan_r2", "critic_flow_loss",
      "critic_sigma"}, [False]),
])
def test_gan_logged_metrics_and_rollout_request(monkeypatch, kwargs, side, names, wanted):
    recording_gan_scores(monkeypatch)
    gan = GAN(feature_layers=[0], num_registers=1, **kwargs)
    loss_a, logs, requested = run(gan, side, grad=side == "generator", global_seed=1)
    loss_b, _, _ = run(gan, side, grad=side == "generator", global_seed=2)
    assert set(logs) == names and requested == wanted and torch.equal(gan.weighted(loss_a), gan.weighted(loss_b))


def test_gan_discriminator_slots_and_the_flow_loss_between_them(monkeypatch):
    recording_gan_scores(monkeypatch)
    gan = GAN(weight=0.5, feature_layers=[0], num_registers=1, shared_flow_pass=True, discriminator_update_every=3)
    x = latents(0)
    due, off = (context_for(x, stub_models(), real=latents(1)) for _ in range(2))
    due.iteration, off.iteration = 6, 7
    _, logs_due = gan.critic_loss(due)
    loss_off, logs_off = gan.critic_loss(off)
    assert "gan_d_loss" in logs_due and set(logs_off) == {"critic_flow_loss", "critic_sigma"}
    assert set(loss_off) == {"critic_flow"}
    assert torch.allclose(gan.weighted(loss_off), logs_off["critic_flow_loss"]), "the flow loss counts unscaled"


def test_objective_errors_name_what_is_missing():
    ctx = context_for(latents(0), stub_models(), real=None)
    with pytest.raises(KeyError, match="CausalDiffusion needs ground-truth latents"):
        CausalDiffusion().generator_loss(ctx)
    with pytest.raises(KeyError, match="ConsistencyDistillation needs ground-truth latents"):
        ConsistencyDistillation().generator_loss(ctx)
    with pytest.raises(KeyError, match="needs 'trajectory' in the batch.*oneforcing data trajectories"):
        TrajectoryDistillation().generator_loss(ctx)
    ctx.batch = trajectory_batch()
    with pytest.raises(KeyError, match=r"flavour='teacher_forcing'\) needs ground-truth latents"):
        TrajectoryDistillation(flavour="teacher_forcing").generator_loss(ctx)
    with pytest.raises(KeyError, match=r"real_source='data'\) found no real latents in the batch \(pixels or latents\)"):
        GAN(feature_layers=[0], num_registers=1).critic_loss(ctx)
    with pytest.raises(KeyError, match=r"real_source='ode'\) found no real latents in the batch \(ode_output\)"):
        GAN(feature_layers=[0], num_registers=1, real_source="ode").critic_loss(
            context_for(latents(0), stub_models(), real=latents(1)))
    ctx = context_for(latents(0), stub_models(), real=latents(1, shape=(B, NF + 1, C, H, W)))
    with pytest.raises(ValueError, match=r"GAN real latents \(3, 5, 2, 3, 3\) and generated \(3, 4, 2, 3, 3\) differ"):
        GAN(feature_layers=[0], num_registers=1).critic_loss(ctx)
    with pytest.raises(ValueError, match="num_grid_steps=1: the consistency grid needs at least 2 steps"):
        ConsistencyDistillation(num_grid_steps=1)
    ConsistencyDistillation(num_grid_steps=2)  # the smallest grid is allowed
    with pytest.raises(ValueError, match="0 <= min_timestep < max_timestep <= 1000, got 500, 400"):
        DMD(min_timestep=500, max_timestep=400)
    with pytest.raises(ValueError, match="GAN weight=0 must be > 0"):
        GAN(weight=0)
    with pytest.raises(ValueError, match="head_lr=0 must be > 0"):
        GAN(feature_layers=[0], num_registers=1, head_lr=0)


def test_gan_data_checks_name_the_members_and_the_fix():
    videos_only = {"kind": "toy", "members": ["caption.txt", "latents.safetensors"]}
    assert GAN().check_data(videos_only) == [] and GAN().check_data(None) == []
    prompts = {"world": "prompts", "members": ["caption.txt", "attributes.json"]}
    (problem,) = GAN().check_data(prompts)
    assert problem == ("GAN(real_source='data') reads pixels or latents from the batch, but the training samples carry "
                       "only prompts; train on shards written by `oneforcing data encode` or `oneforcing data toy`.")
    (problem,) = GAN(real_source="ode").check_data({"kind": "trajectories", "members": ["pixels.safetensors"]})
    assert problem.startswith("GAN(real_source='ode') reads ode_output from the batch, but the training samples carry "
                              "only ['pixels']")
    (problem,) = GAN(real_source="ode").check_data({"kind": "toy"})
    assert problem == ("GAN(real_source='ode') needs trajectory shards (with ode_output); the train split holds toy "
                       "data. Use real_source: data, or train on `oneforcing data trajectories` output")
    (problem,) = GAN(real_source="ode").check_data({"world": "toy"})
    assert "holds toy data" in problem
    (problem,) = GAN(real_source="ode").check_data({})
    assert "holds videos data" in problem


@pytest.mark.parametrize("shift,lo,hi", [(5.0, 20.0, 980.0), (3.0, 100.0, 900.0)])
def test_score_sigma_is_the_clamped_shift_of_a_uniform_integer_timestep(shift, lo, hi):
    sigma = sample_score_sigma(4096, torch.Generator().manual_seed(3), shift, lo, hi)
    u = torch.randint(0, 1000, (4096,), generator=torch.Generator().manual_seed(3)).double() / 1000.0  # U{0..999}/1000
    expected = (shift * u / (1 + (shift - 1) * u)).clamp(lo / 1000, hi / 1000).float()
    assert sigma.dtype == torch.float32 and torch.equal(sigma, expected)
    default = sample_score_sigma(4096, torch.Generator().manual_seed(3))
    assert torch.equal(default, (5 * u / (1 + 4 * u)).clamp(0.02, 0.98).float()), "defaults: shift 5, t in [20, 980]"


# --- the KV cache's remembered blocks: gaps, the block just before, eviction, the call's own block -------
def filled_cache(capacity: int, remembered: set[int], frames: int, sink: int = 0):
    T, shape = 2, (1, 2, 1, 3)
    cache = KVCache(num_layers=1, batch_size=1, tokens_per_frame=T, num_heads=1, head_dim=3,
                    capacity_frames=capacity, sink_frames=sink, keep_gradient=True)
    g = torch.Generator().manual_seed(0)
    exits = {}
    for frame in range(frames):
        cache.begin_call(frame, 1)
        lo, hi = cache.current
        if frame in remembered:
            exits[frame] = tuple(torch.randn(shape, generator=g).requires_grad_() for _ in range(2))
            cache.remember(0, *exits[frame])
        cache.begin_call(frame, 1)
        cache.k[0, :, lo:hi], cache.v[0, :, lo:hi] = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    return cache, exits


def gradients_through_history(cache, exits, end):
    keys, values = cache.history(0, end)
    assert keys.shape[1] == end and values.shape[1] == end, "history covers exactly the slots before the call"
    assert torch.equal(keys, cache.k[0, :, :end]) and torch.equal(values, cache.v[0, :, :end])
    if keys.requires_grad:
        (keys.sum() + 2 * values.sum()).backward()
    return {f: (k.grad is not None and bool((k.grad == 1).all()), v.grad is not None and bool((v.grad == 2).all()))
            for f, (k, v) in exits.items()}


def test_history_routes_gradient_to_each_remembered_block_after_an_unremembered_one():
    cache, exits = filled_cache(capacity=4, remembered={1}, frames=2)
    cache.begin_call(2, 1)
    assert gradients_through_history(cache, exits, cache.current[0]) == {1: (True, True)}, \
        "the block just before the call, after a block without gradient"


def test_history_skips_evicted_blocks_and_keeps_the_others():
    cache, exits = filled_cache(capacity=3, remembered={0, 1, 2}, frames=3)
    cache.begin_call(3, 1)  # evicts frame 0
    assert cache.frames == [1, 2, 3]
    assert gradients_through_history(cache, exits, cache.current[0]) == {0: (False, False), 1: (True, True),
                                                                         2: (True, True)}


def test_history_leaves_out_the_calls_own_block():
    cache, exits = filled_cache(capacity=4, remembered={0, 1}, frames=2)
    cache.begin_call(1, 1)  # block 1 again (e.g. its context pass): its own slots are not history
    assert gradients_through_history(cache, exits, cache.current[0]) == {0: (True, True), 1: (False, False)}


def test_dmd_timestep_range_bounds():
    DMD(min_timestep=0.0, max_timestep=1000.0)  # the closed range's ends are allowed
    for lo, hi in ((500.0, 500.0), (-1.0, 980.0), (20.0, 1000.5)):
        with pytest.raises(ValueError, match=f"got {lo}, {hi}"):
            DMD(min_timestep=lo, max_timestep=hi)


def test_gradient_window_positions_and_errors():
    from oneforcing.objectives.rollout import gradient_window

    assert gradient_window(5, 2, "head").tolist() == [True, True, False, False, False]
    assert gradient_window(5, 2).tolist() == [False, False, False, True, True]
    assert gradient_window(5, 5).dtype == torch.bool and gradient_window(5, 5).all()
    assert gradient_window(5, 4, "head").tolist() == [True, True, True, True, False]
    with pytest.raises(ValueError, match="gradient window position 'middle' is not 'tail' or 'head'"):
        gradient_window(5, 2, "middle")


def test_r1_and_r2_perturb_the_noised_samples_by_their_own_sigma(monkeypatch):
    calls = []

    def scores(self, ctx, x, sigma, context):
        calls.append({"x": x.clone(), "sigma": sigma.clone(), "context": context.clone()})
        return x.flatten(1).mean(1) * 3.0, torch.zeros_like(x)

    monkeypatch.setattr(GAN, "scores", scores)
    fake, real = latents(0), latents(1, offset=-2.0)
    ctx = context_for(fake, stub_models(), real=real)
    GAN(feature_layers=[0], num_registers=1, r1_weight=1.0, r1_sigma=0.1, r2_weight=1.0, r2_sigma=0.05).critic_loss(ctx)
    pair, r1_call, r2_call = calls
    xf, xr = pair["x"].chunk(2)
    for call, base, scale in ((r1_call, xr, 0.1), (r2_call, xf, 0.05)):
        eta = (call["x"] - base) / scale
        assert abs(float(eta.mean())) < 0.25 and abs(float(eta.std()) - 1) < 0.25, "x + σ_r·η with η ~ N(0, 1)"
        assert torch.equal(call["sigma"], pair["sigma"][:B]) and torch.equal(call["context"], ctx.context)


def test_trajectory_snapshot_index_covers_every_snapshot():
    seen = {"bidirectional": set(), "teacher_forcing": set()}
    for flavour in seen:
        for seed in range(12):
            generator = StubFullSequence(block_size=2)
            batch = trajectory_batch()
            ctx = context_for(latents(0), {"generator": generator}, real=latents(1), seed=seed, batch=batch)
            TrajectoryDistillation(flavour=flavour).generator_loss(ctx)
            sigma = generator.calls[0]["sigma"]  # (B, F), a snapshot σ of 1.0, 0.9 or 0.7
            seen[flavour] |= {round(float(s), 3) for s in sigma.flatten()}
    assert seen == {"bidirectional": {1.0, 0.9, 0.7}, "teacher_forcing": {1.0, 0.9, 0.7}}


def test_kv_cache_defaults_dtype_and_capacity_error():
    cache = KVCache(num_layers=1, batch_size=1, tokens_per_frame=2, num_heads=1, head_dim=3, capacity_frames=2)
    assert (cache.sink_frames, cache.keep_gradient, cache.k.dtype) == (0, False, torch.float32)
    cache.begin_call(0, 1)
    cache.begin_call(1, 1)  # a block of 1 by default fits a 2-frame cache
    half = KVCache(1, 1, 2, 1, 3, capacity_frames=3, dtype=torch.bfloat16)
    assert half.k.dtype == torch.bfloat16 and half.v.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="cannot hold 2 sink frames plus a block of 2; make the window at least 4"):
        KVCache(1, 1, 2, 1, 3, capacity_frames=3, sink_frames=2, max_block_frames=2)
    KVCache(1, 1, 2, 1, 3, capacity_frames=4, sink_frames=2, max_block_frames=2)


def test_named_terms_count_weight_times_except_the_absolute_ones():
    class TwoTerms(Objective):
        absolute_terms = ("own",)

    objective = TwoTerms(weight=0.5)
    assert objective.weighted(torch.tensor(2.0)).item() == 1.0
    assert objective.weighted({"scaled": torch.tensor(2.0), "own": torch.tensor(3.0)}).item() == 4.0
    with pytest.raises(ValueError, match="^TwoTerms returned no loss terms"):
        objective.weighted({})


def test_each_objective_declares_the_members_it_reads_and_the_data_check_names_the_missing_ones():
    trajectories = ["ode_output.safetensors", "pixels.safetensors", "trajectory.safetensors",
                    "trajectory_sigmas.safetensors", "txt", "json"]
    expected = {  # objective -> the members it reads from the batch (alternatives joined by "or")
        CausalDiffusion(): ["pixels or latents"],
        ConsistencyDistillation(): ["pixels or latents"],
        ConsistencyDistillation(ground_truth="ode_output"): ["ode_output"],
        DMD(): [], SiD(): [],
        GAN(): ["pixels or latents"],
        TrajectoryDistillation(flavour="teacher_forcing"): ["trajectory", "trajectory_sigmas", "ode_output",
                                                            "pixels or latents"],
        TrajectoryDistillation(flavour="teacher_forcing", clean_context="ode_output"): [
            "trajectory", "trajectory_sigmas", "ode_output"],
    }
    (problem,) = CausalDiffusion().check_data({"members": ["txt"]})
    assert problem.startswith("CausalDiffusion reads pixels or latents from the batch"), "the objective is named"
    for objective, members in expected.items():
        assert [" or ".join(m) for m in objective.batch_members()] == members, objective.describe()
        prompts_only = {"kind": "trajectories", "snapshot_sigmas": [1.0], "members": ["txt", "json"]}
        problems = [p for p in objective.check_data(prompts_only) if " from the batch, " in p]
        assert [p.split(" reads ")[1].split(" from the batch")[0] for p in problems] == members, objective.describe()
        full = {"kind": "trajectories", "snapshot_sigmas": [1.0], "members": trajectories}
        assert not [p for p in objective.check_data(full) if " from the batch, " in p], objective.describe()
