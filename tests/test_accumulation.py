"""Gradient accumulation (``micro_batches``): a batch split into equal parts whose gradients add up before one step
per role, the step's exit steps shared by its parts (one process, tiny backbone)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

import oneforcing.lightning_modules.distillation as distillation
from oneforcing.engines.steps import RoleSteps, role_steps_of
from oneforcing.lightning_modules.micro_batches import split_batch
from oneforcing.objectives.base import Losses, Objective, StepContext
from oneforcing.objectives.dmd import DMD
from tests.test_distillation_module import CAPTIONS, make_module


class SquaredVelocity(Objective):
    """A loss with no random draw: the mean over samples of v_G(x0, σ = 0.5)², so that the mean of two halves'
    gradients is the whole batch's."""

    roles = ("generator",)

    def generator_loss(self, ctx: StepContext) -> Losses:
        x0 = ctx.real_latents  # (B, F, C, H, W)
        v = ctx.models["generator"](x0, torch.full(x0.shape[:2], 0.5), ctx.context)
        loss = v.float().square().mean()
        return loss, {"square": loss.detach(), "batch": torch.tensor(float(len(x0)))}


def four_sample_loader(n: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.utils.data.DataLoader([{"caption": CAPTIONS * 2, "pixels": torch.rand(4, 4, 3, 16, 16, generator=g) * 2 - 1,
                                         "num_skipped": torch.tensor(0)} for _ in range(n)], batch_size=None)


def trained_generator(teacher_file, micro_batches: int, steps: int = 2) -> tuple[dict[str, torch.Tensor], list]:
    """The generator's weights after ``steps`` iterations, and each iteration's logged values."""
    import lightning as L

    from tests.test_training_step import record_logs

    module = make_module(teacher_file, [SquaredVelocity()], micro_batches=micro_batches, ema_start=None,
                         generator_grad_clip=1e9)
    logs = record_logs(module)
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, train_dataloaders=four_sample_loader())
    return {k: v.detach().clone() for k, v in module.generator.state_dict().items()}, logs


def test_accumulated_micro_batches_step_like_the_whole_batch(teacher_file):
    (whole, whole_logs), *parts = (trained_generator(teacher_file, k) for k in (1, 2, 4))
    initial = make_module(teacher_file, [SquaredVelocity()])
    initial.configure_model()
    moved = max(float((whole[k] - v).abs().max()) for k, v in initial.generator.state_dict().items())
    assert moved > 1e-4  # the steps changed the weights
    for weights, logs in parts:
        worst = max(float((weights[k] - whole[k]).abs().max()) for k in whole)
        assert worst < 1e-5, worst
        for step, reference in zip(logs, whole_logs):  # AdamW hides a gradient's scale; the logged norm does not
            for key in ("generator/grad_norm", "generator/loss", "generator/square"):
                assert step[key] == pytest.approx(reference[key], rel=1e-5), key


def test_micro_batches_share_the_step_exit_draws_and_log_the_mean(teacher_file, monkeypatch):
    calls = []

    def recording_rollout(generator, context, noise, num_frames, latent_shape, sigmas, exit_index, *args, **kwargs):
        calls.append((len(context), exit_index))
        raise StopIteration  # nothing further is needed

    monkeypatch.setattr(distillation, "self_forcing_rollout", recording_rollout)
    module = make_module(teacher_file, [DMD(guidance_scale=2.0)], micro_batches=2,
                         denoising_steps=[1000, 750, 500, 250])
    module.configure_model()
    module.shared_rng.manual_seed(5)
    draws = []
    batch = {"caption": CAPTIONS * 2}
    contexts = [(part, module.batch_context(part), None) for part in split_batch(batch, module.hparams.micro_batches)]
    for part, context, _ in contexts:
        ctx = module._step_context(part, context, None, draws)
        for grad in (True, False):  # two roll-outs per micro-batch
            with pytest.raises(StopIteration):
                ctx.rollout_fn(grad)
    reference = torch.Generator().manual_seed(5)
    expected = [int(torch.randint(4, (), generator=reference)) for _ in range(2)]
    assert calls == [(2, expected[0]), (2, expected[1]), (2, expected[0]), (2, expected[1])]
    assert torch.equal(module.shared_rng.get_state(), reference.get_state())  # drawn once per step, not per part


def test_the_logs_of_a_step_are_the_mean_over_its_micro_batches(teacher_file):
    from tests.test_training_step import record_logs

    module = make_module(teacher_file, [SquaredVelocity()], micro_batches=4, ema_start=None)
    logs = record_logs(module)
    import lightning as L

    L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, train_dataloaders=four_sample_loader())
    assert logs[0]["generator/batch"] == pytest.approx(1.0)  # each part had 1 of the 4 samples
    assert logs[0]["iteration"] == 1.0


def test_micro_batches_split_every_per_sample_value_and_keep_the_rest():
    batch = {"caption": ["a", "b", "c", "d"], "pixels": torch.arange(4.0).view(4, 1), "num_skipped": torch.tensor(3)}
    first, second = split_batch(batch, 2)
    assert first["caption"] == ["a", "b"] and second["caption"] == ["c", "d"]
    assert first["pixels"].flatten().tolist() == [0.0, 1.0] and second["pixels"].flatten().tolist() == [2.0, 3.0]
    assert first["num_skipped"] is batch["num_skipped"] is second["num_skipped"]
    assert split_batch(batch, 1) == [batch]


def test_a_batch_that_does_not_split_and_a_bad_count_are_refused(teacher_file):
    with pytest.raises(ValueError, match=r"A batch of 3 samples does not split into micro_batches=2; set the data's "
                                         r"batch_size to a multiple of 2 \(e.g. 2\)"):
        split_batch({"caption": ["a", "b", "c"]}, 2)
    with pytest.raises(ValueError, match=r"micro_batches=0 must be >= 1 \(1: no gradient accumulation\)"):
        make_module(teacher_file, micro_batches=0)


class FakeDDP:
    """Stands in for the DDP wrapper: records whether each backward ran inside ``no_sync``."""

    def __init__(self, module):
        self.module, self.inside = module, False

    @contextlib.contextmanager
    def no_sync(self):
        self.inside = True
        yield
        self.inside = False

    def parameters(self):
        return self.module.parameters()


class NaNOnCall(SquaredVelocity):
    """SquaredVelocity whose ``bad``-th call (0-based) returns a non-finite loss."""

    def __init__(self, bad: int):
        super().__init__()
        self.bad, self.calls = bad, 0

    def generator_loss(self, ctx: StepContext) -> Losses:
        loss, logs = super().generator_loss(ctx)
        self.calls += 1
        return (loss * float("nan") if self.calls - 1 == self.bad else loss), logs


def accumulate_under_fake_ddp(teacher_file, monkeypatch, objective: Objective, parts: int = 4, ddp: bool = True):
    """``_accumulate`` of a 4-sample batch in ``parts`` under FakeDDP (``ddp``; else no wrapper). Returns, per
    backward, whether it ran inside no_sync and its loss, and the generator's gradients after the step."""
    module = make_module(teacher_file, [objective], micro_batches=parts, ema_start=None)
    module.configure_model()
    ddp = FakeDDP(module) if ddp else None
    steps = RoleSteps(SimpleNamespace(model=module))
    monkeypatch.setattr(steps, "_ddp", lambda: ddp)
    monkeypatch.setattr(module, "_steps", lambda: steps)
    backwards = []

    def backward(loss):
        backwards.append((ddp is not None and ddp.inside, loss.detach()))
        loss.backward()

    monkeypatch.setattr(module, "manual_backward", backward)
    batch = next(iter(four_sample_loader(1)))
    micro = [(part, module.batch_context(part), None) for part in split_batch(batch, module.hparams.micro_batches)]
    with pytest.warns(UserWarning, match="Non-finite") if isinstance(objective, NaNOnCall) else contextlib.nullcontext():
        backward_ran, _ = module._accumulate(micro, "generator")
    assert backward_ran
    grads = {n: p.grad.clone() for n, p in module.generator.named_parameters() if p.grad is not None}
    return backwards, grads


def test_under_ddp_every_backward_but_the_last_accumulates_without_sync(teacher_file, monkeypatch):
    """One gradient all-reduce per role step: micro-batches 1..K-1 inside DDP's no_sync, the last one syncing."""
    backwards, _ = accumulate_under_fake_ddp(teacher_file, monkeypatch, SquaredVelocity())
    assert [inside for inside, _ in backwards] == [True, True, True, False]
    assert all(loss > 0 for _, loss in backwards)  # the micro-batches' own losses, no extra backward


def test_a_skipped_last_micro_batch_still_syncs_through_ddp(teacher_file, monkeypatch):
    """The last part non-finite (every rank skips it): a synced backward of a zero loss follows the unsynced ones,
    so DDP's reducer averages the accumulated gradients and closes the step's bookkeeping; it adds nothing to them."""
    backwards, grads = accumulate_under_fake_ddp(teacher_file, monkeypatch, NaNOnCall(bad=3))
    assert [inside for inside, _ in backwards] == [True, True, True, False]
    assert backwards[-1][1] == 0  # the zero loss over the trainable parameters
    _, local = accumulate_under_fake_ddp(teacher_file, monkeypatch, NaNOnCall(bad=3), ddp=False)
    assert local.keys() == grads.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, local[name]), name  # the same three parts' sum, unchanged by the zero loss
    # a skipped middle part leaves the last backward to sync: no extra backward
    backwards, _ = accumulate_under_fake_ddp(teacher_file, monkeypatch, NaNOnCall(bad=1))
    assert [inside for inside, _ in backwards] == [True, True, False]
    # without DDP nothing extra either
    backwards, _ = accumulate_under_fake_ddp(teacher_file, monkeypatch, NaNOnCall(bad=3), ddp=False)
    assert len(backwards) == 3


def test_without_ddp_no_backward_is_wrapped(teacher_file):
    module = make_module(teacher_file, [SquaredVelocity()], micro_batches=2)
    steps = role_steps_of(SimpleNamespace(model=module))  # one device: the module itself
    assert type(steps) is RoleSteps and steps._ddp() is None
    assert isinstance(steps.no_gradient_sync(), contextlib.nullcontext)


def test_the_ddp_wrapper_is_found_under_plain_ddp_only(tmp_path):
    """The role steps of plain DDP find its DistributedDataParallel model and accumulate inside its no_sync; those of
    any other model (FSDP2's module, one device) find none; DeepSpeed (a DDPStrategy subclass whose engines
    accumulate themselves) has its own, which never wrap a backward and step through the engines."""
    import torch.distributed as dist

    from oneforcing.engines.deepspeed import DeepSpeedRoleSteps, DeepSpeedStrategy

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
        assert role_steps_of(SimpleNamespace(model=ddp))._ddp() is ddp
        assert role_steps_of(SimpleNamespace(model=ddp)).no_gradient_sync().__class__ is not contextlib.nullcontext
        assert role_steps_of(SimpleNamespace(model=ddp.module))._ddp() is None  # not wrapped (FSDP2, one device)
        deepspeed = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
        steps = role_steps_of(deepspeed)
        assert type(steps) is DeepSpeedRoleSteps
        assert isinstance(steps.no_gradient_sync(), contextlib.nullcontext)
    finally:
        dist.destroy_process_group()
