"""DistillationModule's iteration as the logs and the optimizers see it: the update schedule's edges, what is logged
each iteration and how the losses add up, and the split's cached prompt embeddings taken instead of the text
encoder (fast: tiny backbone, one process; found by mutation testing, docs/mutation_testing.md)."""

from __future__ import annotations

import pytest
import torch

from oneforcing.data.prompt_cache import PROMPT_MEMBER
from oneforcing.objectives.diffusion import CausalDiffusion
from oneforcing.objectives.dmd import DMD
from oneforcing.objectives.gan import GAN
from tests.test_distillation_module import fit, make_module


def record_logs(module) -> list[dict[str, float]]:
    """Every iteration's ``log_dict`` (plus ``iteration``), as plain floats."""
    calls: list[dict[str, float]] = []
    log_dict, log = module.log_dict, module.log

    def spy_dict(metrics, **kwargs):
        calls.append({k: float(v) for k, v in metrics.items()})
        return log_dict(metrics, **kwargs)

    def spy(name, value, **kwargs):
        calls[-1][name] = float(value)
        return log(name, value, **kwargs)

    module.log_dict, module.log = spy_dict, spy
    return calls


def test_one_forcing_iterations_log_each_role_on_its_schedule(teacher_file):
    module = make_module(teacher_file, [DMD(guidance_scale=2.0), GAN(feature_layers=[1], num_registers=1, weight=0.25,
                                                                     head_lr=1e-3, head_ffn_dim=16, head_num_heads=2,
                                                                     r1_weight=0.5)],
                         generator_update_every=3)
    logs = record_logs(module)
    trainer = fit(module, 4)
    assert trainer.global_step == 4 and int(module.iteration) == 4  # one counted step per iteration
    generator = {"generator/loss", "generator/grad_norm", "generator/gan_g_loss", "generator/gan_g_fake_logit"}
    critic = {"critic/loss", "critic/grad_norm", "head0/grad_norm", "critic/gan_d_loss"}
    for i, step in enumerate(logs):
        assert step["iteration"] == i + 1
        assert step["train/nonfinite_skipped"] == 0.0 and step["data/skipped_samples"] == 0.0
        assert critic <= set(step), sorted(step)
        assert (generator <= set(step)) == (i % 3 == 0), (i, sorted(step))  # iterations 0 and 3 only
        assert step["critic/grad_norm"] > 0 and step["head0/grad_norm"] > 0
    first = logs[0]
    total = first["generator/dmd_loss"] + 0.25 * first["generator/gan_g_loss"]  # Σ weight · loss
    assert first["generator/grad_norm"] > 0 and first["generator/loss"] == pytest.approx(total, rel=1e-6)
    # the critic's sum: DMD's flow loss (weight 1), 0.25 · the discriminator loss, R1 unscaled (its own weight)
    critic_total = first["critic/critic_flow_loss"] + 0.25 * first["critic/gan_d_loss"] + first["critic/gan_r1"]
    assert first["critic/gan_r1"] > 0 and first["critic/loss"] == pytest.approx(critic_total, rel=1e-6)


def test_without_a_critic_the_generator_steps_every_iteration(teacher_file):
    module = make_module(teacher_file, [CausalDiffusion()], generator_update_every=5)
    logs = record_logs(module)
    trainer = fit(module, 3)
    assert trainer.global_step == 3  # Lightning counts the generator's steps here
    assert all("generator/loss" in step and "generator/grad_norm" in step for step in logs) and len(logs) == 3
    assert not any(k.startswith("critic/") for step in logs for k in step)


def test_a_zero_generator_clip_keeps_the_generator_and_reports_the_unclipped_norm(teacher_file):
    module = make_module(teacher_file, [CausalDiffusion()], generator_grad_clip=0.0, ema_start=None)
    logs = record_logs(module)
    module.configure_model()
    before = {k: v.clone() for k, v in module.generator.state_dict().items()}
    fit(module, 1)
    assert logs[0]["generator/grad_norm"] > 0
    # AdamW's decoupled weight decay still shrinks the weights: only by lr·wd, not by a gradient step
    after = module.generator.state_dict()
    for k, v in before.items():  # |Δw| = lr · wd · |w| (1e-3 · 0.01), up to float rounding
        assert torch.allclose(after[k], v * (1 - 1e-5), rtol=1e-6, atol=1e-9), k


# --- cached prompt embeddings (`oneforcing data prompts / encode`) ----------------------------------------------
class CachedSplit:
    """The part of ShardDataModule that `_adopt_cached_prompts` reads."""

    def __init__(self, cached):
        self.cached = cached

    def cached_negative_prompt(self):
        return self.cached


def toy_module(teacher_file, objectives=None, **overrides):
    return make_module(teacher_file, objectives if objectives is not None else [DMD(guidance_scale=2.0)], **overrides)


def test_cached_prompt_embeddings_of_another_encoder_are_refused(teacher_file):
    module = toy_module(teacher_file)
    length, dim = module.text_encoder.context_length, module.backbone_config.text_dim
    index = {"members": [f"{PROMPT_MEMBER}.safetensors", "latents.safetensors"], "context_length": 512,
             "context_dim": 4096}
    problems = module._adopt_cached_prompts(CachedSplit(None), index)
    assert problems == [f"the cached prompt embeddings are 512 tokens of 4096 (index.json) but the text encoder gives "
                        f"{length} of {dim}; re-encode the data with this model's text encoder (oneforcing data "
                        "prompts / encode --model-dir)"]
    assert module._adopt_cached_prompts(CachedSplit(None), dict(index, context_length=length, context_dim=dim)) == []
    # without cached embeddings in the split, their shape is not checked
    assert module._adopt_cached_prompts(CachedSplit(None), {"members": ["latents.safetensors"],
                                                            "context_length": 1}) == []


def test_the_cached_negative_prompt_replaces_the_text_encoder_call(teacher_file):
    module = toy_module(teacher_file)
    dim = module.backbone_config.text_dim
    embedding = torch.randn(3, dim)  # 3 tokens, without padding rows
    assert module._adopt_cached_prompts(CachedSplit(("", embedding)), {"members": []}) == []
    calls = []
    module.text_encoder.forward = lambda prompts: calls.append(prompts)  # must not be called
    uncond = module.uncond_context(2)
    assert calls == [] and uncond.shape == (2, module.text_encoder.context_length, dim)
    assert torch.equal(uncond[:, :3], embedding.expand(2, 3, dim)) and not uncond[:, 3:].any()


@pytest.mark.parametrize("embedding_shape", [(3, 7), (25, None)], ids=["other width", "longer than the encoder"])
def test_a_cached_negative_prompt_that_does_not_fit_is_not_taken(teacher_file, embedding_shape):
    module = toy_module(teacher_file)
    tokens, width = embedding_shape
    embedding = torch.randn(tokens, width or module.backbone_config.text_dim)
    assert module._adopt_cached_prompts(CachedSplit(("", embedding)), {"members": []}) == []
    assert module._negative_embedding is None


def test_a_different_cached_negative_prompt_is_warned_about_only_when_a_teacher_reads_it(teacher_file):
    module = toy_module(teacher_file)
    embedding = torch.randn(2, module.backbone_config.text_dim)
    with pytest.warns(UserWarning, match=r"The training data cache the negative prompt 'red circle'\.\.\. but "
                                         r"model.init_args.negative_prompt is ''\.\.\.: the text encoder encodes it"):
        assert module._adopt_cached_prompts(CachedSplit(("red circle", embedding)), {"members": []}) == []
    assert module._negative_embedding is None
    student_only = toy_module(None, [CausalDiffusion()])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert student_only._adopt_cached_prompts(CachedSplit(("red circle", embedding)), {"members": []}) == []


def test_an_index_without_members_has_no_cached_embeddings_to_check(teacher_file):
    module = toy_module(teacher_file)
    assert module._adopt_cached_prompts(CachedSplit(None), {"context_length": 1, "context_dim": 1}) == []


def test_a_cached_negative_prompt_of_exactly_the_encoder_length_is_taken(teacher_file):
    module = toy_module(teacher_file)
    length, dim = module.text_encoder.context_length, module.backbone_config.text_dim
    embedding = torch.randn(length, dim)
    assert module._adopt_cached_prompts(CachedSplit(("", embedding)), {"members": []}) == []
    assert torch.equal(module._negative_embedding, embedding[None])


def test_the_negative_prompt_warning_names_both_texts_cut_at_40_characters(teacher_file):
    cached = "c" * 39 + "Xtail of the cached text"
    configured = "a large red circle moving right slowly and a small blue square"  # toy words, 62 characters
    module = toy_module(teacher_file, negative_prompt=configured)
    embedding = torch.randn(2, module.backbone_config.text_dim)
    with pytest.warns(UserWarning) as warned:
        module._adopt_cached_prompts(CachedSplit((cached, embedding)), {"members": []})
    assert str(warned[0].message) == (
        f"The training data cache the negative prompt {cached[:40]!r}... but model.init_args.negative_prompt is "
        f"{configured[:40]!r}...: the text encoder encodes it for the teacher's CFG. Set negative_prompt to the "
        "cached text, or re-run `oneforcing data prompts / encode --negative-prompt`.")


def test_micro_batches_share_the_step_s_draws_and_a_skipped_step_has_no_backward(teacher_file):
    """The exit steps drawn for the first micro-batch are the list every later one reads; when every micro-batch's
    loss is non-finite no backward runs (no gradient norm is logged, no EMA update follows)."""
    module = toy_module(teacher_file)
    seen = []

    def step_loss(side, batch, context, uncond, draws):
        seen.append(draws)
        draws.append((len(seen), None))  # what a roll-out would record
        return torch.tensor(float("nan"), requires_grad=True), {"generator/loss": torch.tensor(2.0)}

    module.step_loss = step_loss
    with pytest.warns(UserWarning, match="Non-finite generator loss"):
        backward, logs = module._accumulate([({}, None, None), ({}, None, None)], "generator")
    assert backward is False and float(logs["generator/loss"]) == pytest.approx(2.0)
    assert seen[0] is seen[1] and seen[0] == [(1, None), (2, None)]


def test_a_checkpoint_without_a_trainer_holds_this_process_s_noise_state(teacher_file):
    module = toy_module(teacher_file)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["oneforcing_module"] == "DistillationModule"
    assert len(checkpoint["oneforcing_rng"]["rank"]) == 1
    assert torch.equal(checkpoint["oneforcing_rng"]["rank"][0], module.rank_rng.get_state())
    assert torch.equal(checkpoint["oneforcing_rng"]["shared"], module.shared_rng.get_state())


def test_every_role_s_gradients_are_freed_after_its_step(teacher_file):
    module = make_module(teacher_file, [DMD(guidance_scale=2.0), GAN(feature_layers=[1], num_registers=1,
                                                                     head_ffn_dim=16, head_num_heads=2)],
                         generator_update_every=1)
    fit(module, 1)
    for role in (module.generator, module.critic, *module.objectives):
        assert all(p.grad is None for p in role.parameters())


def test_a_critic_warmup_runs_critic_steps_only_before_the_first_generator_step(teacher_file):
    module = make_module(teacher_file, [DMD(guidance_scale=2.0)], generator_update_every=1, critic_warmup=2)
    logs = record_logs(module)
    fit(module, 4)
    assert [("generator/loss" in step, "critic/loss" in step) for step in logs] == \
        [(False, True), (False, True), (True, True), (True, True)]


def test_a_negative_critic_warmup_is_refused(teacher_file):
    with pytest.raises(ValueError, match=r"critic_warmup=-1 must be >= 0 \(critic-only iterations before the first "
                                         r"generator step\)"):
        make_module(teacher_file, [DMD()], critic_warmup=-1)
