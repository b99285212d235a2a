"""Smaller contracts the maths depends on: σ draws passed through, default arguments, boundaries, the
cross-attention cache, and the messages that name a problem (found by mutation testing, docs/mutation_testing.md)."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_TOY, TINY_WAN
from oneforcing.models.causal_attention import KVCache
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanConfig
from oneforcing.objectives.base import ModuleView, Objective
from oneforcing.objectives.consistency import ConsistencyDistillation
from oneforcing.objectives.diffusion import CausalDiffusion
from oneforcing.objectives.dmd import DMD, critic_flow_loss, dmd_gradient, dmd_surrogate_loss
from oneforcing.objectives.gan import GAN
from oneforcing.objectives.rollout import self_forcing_rollout
from oneforcing.objectives.sid import SiD, sid_loss
from oneforcing.objectives.timesteps import sample_score_sigma
from oneforcing.objectives.trajectory import TrajectoryDistillation
from oneforcing.sampling.schedules import many_step_sigmas, nominal_steps
from oneforcing.sampling.streaming import StreamingSampler, per_prompt_generators
from tests.stubs import RecordingNoise, StubCausal, StubFullSequence, StubScore
from tests.test_wiring import B, C, H, W, context_for, latents

TINY = WanConfig(**TINY_WAN)


def critic_sigma(objective, side: str, seed: int = 5, grad: bool = False) -> torch.Tensor:
    critic, teacher = StubScore(-0.3, 0.7, 0.4), StubScore(0.5, 0.2, 1.0)
    getattr(objective, f"{side}_loss")(context_for(latents(0, grad=grad), {"critic": critic, "teacher": teacher},
                                                   seed=seed))
    return critic.calls[0]["sigma"]


@pytest.mark.parametrize("cls,side", [(DMD, "generator"), (DMD, "critic"), (SiD, "generator"), (SiD, "critic")])
def test_score_sigma_settings_reach_the_draw(cls, side):
    shift = {"generator": dict(timestep_shift=3.0), "critic": dict(critic_timestep_shift=3.0)}[side]
    objective = cls(min_timestep=300.0, max_timestep=700.0, **shift)
    expected = sample_score_sigma(B, torch.Generator().manual_seed(5), 3.0, 300.0, 700.0)
    assert torch.equal(critic_sigma(objective, side, grad=side == "generator"), expected)


def test_critic_flow_loss_defaults_clamp_to_20_and_980():
    critic = StubScore()
    critic_flow_loss(context_for(latents(0), {"critic": critic}, seed=5), 2.0)
    assert torch.equal(critic.calls[0]["sigma"], sample_score_sigma(B, torch.Generator().manual_seed(5), 2.0, 20, 980))


def test_dmd_surrogate_without_a_mask_and_the_normaliser_floor():
    g = torch.Generator().manual_seed(0)
    x, grad = torch.randn(2, 3, 2, 2, 2, generator=g, requires_grad=True), torch.randn(2, 3, 2, 2, 2, generator=g)
    loss = dmd_surrogate_loss(x, grad)
    assert torch.allclose(loss, 0.5 * grad.square().mean())
    real = x.detach() + 0.01  # |x − real| = 0.01: far above the 1e-6 floor, far below 1
    assert torch.allclose(dmd_gradient(x.detach(), real, real + 0.02), torch.full_like(real, 2.0), atol=1e-4)
    zero = torch.zeros(1, 2, 1, 1, 1)
    assert torch.allclose(dmd_gradient(zero, zero, zero + 1e-3), torch.full_like(zero, 1e-3 / 1e-6)), \
        "an exact real score (x = real): the normaliser is floored at 1e-6"


def test_sid_loss_default_alpha_is_one_and_its_floor():
    g = torch.Generator().manual_seed(1)
    x, real, fake = (torch.randn(2, 3, 2, 2, 2, generator=g) for _ in range(3))
    assert torch.allclose(sid_loss(x, real, fake), sid_loss(x, real, fake, alpha=1.0))
    assert not torch.allclose(sid_loss(x, real, fake), sid_loss(x, real, fake, alpha=2.0))
    near = x + 1e-3  # |x − r| = 1e-3 is above the 1e-6 floor
    expected = ((near - fake) * ((near - x) - (near - fake)) / 1e-3).mean()
    assert torch.allclose(sid_loss(x, near, fake), expected, rtol=1e-3)


def test_base_objective_weight_and_missing_losses():
    assert Objective().weight == 1.0 and not Objective().has_generator_loss and not Objective().has_critic_loss


@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_consistency_without_teacher_forcing_runs_the_block_causal_forward(teacher_forcing):
    teacher, student, ema = StubScore(), StubFullSequence(0.2, d=0.3), StubFullSequence(-0.4, d=0.1)
    real = latents(9)
    ConsistencyDistillation(num_grid_steps=8, teacher_forcing=teacher_forcing).generator_loss(
        context_for(real, {"teacher": teacher, "generator": student, "generator_ema": ema}, real=real))
    for call in (student.calls[0], ema.calls[0]):
        assert ("clean" in call) == teacher_forcing
        assert call["sigma"].shape == (B, real.shape[1]) and torch.equal(call["context"], context_for(real, {}).context)


def test_consistency_draws_every_grid_point_but_the_last_as_its_start():
    starts = set()
    for seed in range(40):
        student = StubFullSequence()
        ConsistencyDistillation(num_grid_steps=4).generator_loss(context_for(
            latents(9), {"teacher": StubScore(), "generator": student, "generator_ema": StubFullSequence()},
            real=latents(9), seed=seed))
        starts |= {round(float(s), 4) for s in student.calls[0]["sigma"][:, 0]}
    grid = ConsistencyDistillation(num_grid_steps=4).grid
    assert starts == {round(float(s), 4) for s in grid[:-1]}, "k ~ U{0..N-2}: σ_0 = 1 included, σ_{N-1} never"


def test_rollout_reports_its_exit_steps():
    model = StubCausal(block_size=1)
    rollout = self_forcing_rollout(model, torch.zeros(1, 2, 4), RecordingNoise(), 3, (C, H, W), [1.0, 0.8], 1)
    assert (rollout.exit_index, rollout.first_exit_index) == (1, 1), "without a first-block schedule: the same exit"
    rollout = self_forcing_rollout(StubCausal(block_size=1), torch.zeros(1, 2, 4), RecordingNoise(), 3, (C, H, W),
                                   [1.0, 0.8], 1, first_block_sigmas=[1.0, 0.9, 0.7], first_exit_index=2)
    assert (rollout.exit_index, rollout.first_exit_index) == (1, 2)


def test_gan_feature_layer_range_and_messages():
    from oneforcing.lightning_modules.distillation import DistillationModule

    tiny = dict(TINY_TOY)
    DistillationModule([DMD(), GAN(feature_layers=[0, 1])], backbone=tiny, teacher_weights="t")  # both ends valid
    with pytest.raises(ValueError) as error:
        DistillationModule([DMD(), GAN(feature_layers=[2], num_registers=1)], backbone=tiny, teacher_weights="t")
    assert "GAN feature layer 2 does not exist in the critic (2 blocks: 0..1)" in str(error.value)
    with pytest.raises(ValueError) as error:
        DistillationModule([DMD(), GAN(feature_layers=[1], num_registers=1, shared_flow_pass=True)], backbone=tiny,
                           teacher_weights="t")
    assert ("GAN(shared_flow_pass=true) computes the critic's flow loss itself, and DMD trains it too; set DMD's "
            "train_critic: false (or shared_flow_pass: false)") in str(error.value)
    gan = GAN(feature_layers=[1], num_registers=1, head_ffn_dim=12, head_num_heads=3)
    gan.configure(CausalWanBackbone(TINY))
    assert gan.head.pools[0].num_heads == 3 and gan.head.pools[0].ffn[0].out_features == 12


def test_gan_reads_its_real_samples_from_the_ode_outputs_when_asked():
    ode = latents(3, offset=-1.0)
    ctx = context_for(latents(0), {}, real=latents(1), batch={"ode_output": ode})
    assert GAN(real_source="ode").real_latents(ctx) is ode and GAN().real_latents(ctx) is ctx.real_latents


def test_error_messages_start_with_the_objective_and_end_with_the_fix():
    ctx = context_for(latents(0), {"generator": StubFullSequence()}, real=None)
    for objective, start in ((CausalDiffusion(), "CausalDiffusion needs ground-truth latents (pixels or latents)"),
                             (ConsistencyDistillation(), "ConsistencyDistillation needs ground-truth latents"),
                             (TrajectoryDistillation(), "TrajectoryDistillation needs 'trajectory' in the batch")):
        with pytest.raises(KeyError) as error:
            objective.generator_loss(ctx)
        assert error.value.args[0].startswith(start) and error.value.args[0].endswith(".")
    view = ModuleView(objectives=(), num_layers=2, step_sigmas=(1.0, 0.8), first_block_sigmas=None, has_ema=False)
    problems = ConsistencyDistillation().check(view)
    assert problems[0] == "ConsistencyDistillation regresses onto the generator's EMA: set ema_start (e.g. 0)"
    assert problems[1].endswith("(48 steps at the same shift contains [1000, 750, 500, 250])")
    exact = ModuleView(objectives=(), num_layers=2, step_sigmas=(float(ConsistencyDistillation().grid[3]),),
                       first_block_sigmas=None, has_ema=True)
    assert ConsistencyDistillation().check(exact) == [], "a step exactly on the grid is accepted"


def test_kv_cache_accepts_an_equal_prompt_and_names_out_of_order_calls():
    cache = KVCache(1, 1, 2, 1, 3, capacity_frames=4)
    context = torch.ones(1, 2, 4)
    cache.check_inputs(1, context)
    cache.check_inputs(1, context.clone())  # the same prompt in another tensor
    with pytest.raises(ValueError) as error:
        cache.check_inputs(1, context + 1)
    assert str(error.value) == ("This KV cache holds another prompt's cross-attention; call cache.reset() or create a "
                                "new cache before generating for a different prompt.")
    with pytest.raises(ValueError) as error:
        cache.check_inputs(2, context)
    assert str(error.value).endswith("create a new cache (or reset()) for a different batch.")
    cache.begin_call(0, 1)
    with pytest.raises(ValueError, match=r"frames \[2, 3\) neither appends the next block \(starting at frame 1\)"):
        cache.begin_call(2, 1)


def test_cross_attention_keys_are_computed_once_per_prompt_when_streaming():
    torch.manual_seed(0)
    model = CausalWanBackbone(TINY, block_size=1).eval()
    calls = []
    model.transformer.blocks[0].attn2.to_k.register_forward_hook(lambda *a: calls.append(1))
    StreamingSampler(model, [1.0]).sample(torch.randn(1, 3, TINY.text_dim), 3, (12, 4, 4), per_prompt_generators(0, 1))
    assert len(calls) == 1, "the prompt's cross-attention K/V are cached for every later call"
    calls.clear()
    x = torch.randn(1, 2, 12, 4, 4, requires_grad=True)
    cache = model.new_cache(1, 4, 4, 2)
    with torch.enable_grad():
        for start in range(2):
            model.forward_cached(x[:, start:start + 1], torch.ones(1, 1), torch.zeros(1, 3, TINY.text_dim), cache, start)
    assert len(calls) == 2, "with gradient the K/V are recomputed (their projections train)"


def test_rope_table_bound_and_message():
    model = CausalWanBackbone(TINY, block_size=1)
    limit = model.transformer.rope.inner.max_seq_len
    model.control.frame_positions = torch.tensor([limit])
    with pytest.raises(ValueError) as error:
        model.transformer.rope(torch.zeros(1, 12, 1, 4, 4))
    assert str(error.value) == (f"Frame position {limit} exceeds the RoPE table ({limit}); raise rope_max_seq_len or "
                                "generate fewer frames.")
    model.control.frame_positions = torch.tensor([limit - 1])
    model.transformer.rope(torch.zeros(1, 12, 1, 4, 4))  # the last row of the table is usable
    model.control.clear()


def test_sampler_schedules_name_the_bad_list_and_pass_blocks_on():
    with pytest.raises(ValueError, match=r"^step_sigmas=\[0.5, 0.8\] is not strictly decreasing"):
        StreamingSampler(StubCausal(), [0.5, 0.8])
    with pytest.raises(ValueError, match=r"^first_block_sigmas=\[2.0\] has values outside"):
        StreamingSampler(StubCausal(), [1.0], first_block_sigmas=[2.0])
    seen = []
    StreamingSampler(StubCausal(), [1.0]).sample(torch.zeros(1, 2, 4), 2, (C, H, W), per_prompt_generators(0, 1),
                                                 on_block=seen.append)
    assert [b.start for b in seen] == [0, 1] and all(b.latents.shape == (1, 1, C, H, W) for b in seen)
    with pytest.raises(ValueError, match=r"^num_steps must be >= 1, got 0\.$"):
        nominal_steps(0)
    assert many_step_sigmas() == many_step_sigmas(48, 5.0) and len(many_step_sigmas()) == 48
    assert many_step_sigmas()[12] == pytest.approx(0.9375)
    with pytest.raises(ValueError, match=r"^nominal_timesteps is empty"):
        from oneforcing.models.flow_matching import warped_step_sigmas

        warped_step_sigmas([], 5.0)


def test_each_trainable_role_gets_its_own_adamw_settings(tmp_path):
    from safetensors.torch import save_file

    from oneforcing.lightning_modules.distillation import DistillationModule
    from oneforcing.models.wan import WanBackbone

    tiny = dict(TINY_TOY)
    torch.manual_seed(0)
    path = tmp_path / "t.safetensors"
    save_file({f"model.{k}": v for k, v in WanBackbone(WanConfig(**tiny)).state_dict().items()}, path)
    module = DistillationModule([DMD(), GAN(feature_layers=[1], num_registers=1, head_lr=3e-3)], backbone=tiny,
                                teacher_weights=str(path), generator_lr=1e-4, critic_lr=2e-5, betas=(0.1, 0.9),
                                weight_decay=0.05, ema_start=None)
    module.configure_model()
    generator_opt, critic_opt, head_opt = module.configure_optimizers()
    assert [(o.defaults["lr"], o.defaults["betas"], o.defaults["weight_decay"]) for o in (generator_opt, critic_opt)] \
        == [(1e-4, (0.1, 0.9), 0.05), (2e-5, (0.1, 0.9), 0.05)]
    assert head_opt.defaults["lr"] == 3e-3 and head_opt.defaults["weight_decay"] == 0.05
    assert {id(p) for g in generator_opt.param_groups for p in g["params"]} == {id(p) for p in module.generator.parameters()}


def test_checkpoints_gather_every_ranks_noise_state(monkeypatch):
    """On save, the per-rank generators' states of all ranks are gathered (resume restores each rank's own)."""
    from oneforcing.lightning_modules.distillation import DistillationModule

    tiny = dict(TINY_TOY)
    module = DistillationModule([CausalDiffusion()], backbone=tiny)
    module.randomness.seed(0)
    trainer = type("T", (), {"world_size": 2})()
    monkeypatch.setattr(type(module), "trainer", property(lambda self: trainer))
    module._trainer = trainer
    other = torch.Generator().manual_seed(99).get_state()
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_gather_object",
                        lambda out, state: out.__setitem__(slice(None), [state, other]))
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    states = checkpoint["oneforcing_rng"]["rank"]
    assert len(states) == 2 and torch.equal(states[0], module.rank_rng.get_state()) and torch.equal(states[1], other)
    assert torch.equal(checkpoint["oneforcing_rng"]["shared"], module.shared_rng.get_state())
    module.on_load_checkpoint(checkpoint)
    module.randomness.seed(1)
    assert torch.equal(module.rank_rng.get_state(), other), "rank 1 resumes from its own gathered state"


def fake_trainer(module, train_index):
    """Attach a stand-in trainer whose datamodule carries ``train_index`` (what on_fit_start reads)."""
    datamodule = type("DM", (), {"train_index": train_index})()
    trainer = type("T", (), {"datamodule": datamodule, "world_size": 1, "global_rank": 0})()
    module._trainer = trainer
    return trainer


@pytest.fixture
def trainer_property(monkeypatch):
    from oneforcing.lightning_modules.distillation import DistillationModule

    monkeypatch.setattr(DistillationModule, "trainer", property(lambda self: self._trainer))


TINY_ARGS = dict(backbone=dict(TINY_TOY))


def test_trajectory_snapshots_are_checked_against_the_students_steps(trainer_property):
    from oneforcing.lightning_modules.distillation import DistillationModule

    module = DistillationModule([TrajectoryDistillation()], denoising_steps=[1000, 750, 500, 250], **TINY_ARGS)
    objective, view = module.objectives[0], module.view()
    # the warped 4-step list at shift 5 matches to 1e-5
    assert objective.check_data({"kind": "trajectories", "snapshot_sigmas": [1.0, 0.9375, 0.8333333, 0.625]}, view) == []
    for snapshots in ([1.0, 0.9375, 0.8333], [1.0, 0.9375, 0.8333, 0.62], [1.0, 0.9375, 0.8333, 0.625, 0.5]):
        (problem,) = objective.check_data({"snapshot_sigmas": snapshots}, view)
        assert problem.startswith(f"The trajectory snapshots σ={[round(s, 4) for s in snapshots]} do not match the "
                                  "student's steps σ=[1.0, 0.9375, 0.8333, 0.625]; set denoising_steps to the nominal steps")
    assert objective.check_data({"kind": "toy"}, view) == [
        "TrajectoryDistillation needs trajectory shards (written by `oneforcing data trajectories`); the train split's "
        "index.json records no snapshot_sigmas."]
    fake_trainer(module, {"kind": "toy"})
    with pytest.raises(ValueError, match="records no snapshot_sigmas"):
        module.on_fit_start()  # reported when fitting starts
    other = DistillationModule([CausalDiffusion()], **TINY_ARGS)
    fake_trainer(other, {"kind": "toy"})
    other.on_fit_start()  # no trajectory objective: no check


def test_on_fit_start_reports_every_objectives_data_problem_and_on_train_start_seeds_the_rank(trainer_property):
    from oneforcing.lightning_modules.distillation import DistillationModule

    module = DistillationModule([GAN(feature_layers=[0], num_registers=1),
                                 GAN(feature_layers=[0], num_registers=1, real_source="ode")], **TINY_ARGS)
    fake_trainer(module, {"world": "prompts", "members": ["caption.txt"]})
    with pytest.raises(ValueError) as error:
        module.on_fit_start()
    message = str(error.value)
    assert message.startswith("The training data do not fit the objectives:\n  - GAN(real_source='data') reads pixels "
                              "or latents from the batch")
    assert "\n  - GAN(real_source='ode') reads ode_output from the batch" in message
    module = DistillationModule([CausalDiffusion()], seed=7, **TINY_ARGS)
    fake_trainer(module, {"world": "toy", "members": ["pixels.safetensors"]})
    module.on_fit_start()
    module.rank_rng.manual_seed(123)
    module.on_train_start()
    expected = torch.Generator().manual_seed(7 + 1000 * 0 + 1)
    assert torch.equal(module.rank_rng.get_state(), expected.get_state())
    assert torch.equal(module.shared_rng.get_state(), torch.Generator().manual_seed(7).get_state())
