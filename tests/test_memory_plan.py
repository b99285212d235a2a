"""`oneforcing plan`: the meta-device activation trace against the CPU allocator, the engines' state rules in
closed form, and the command's answers to good and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import TINY_WAN
from oneforcing.engines.memory import (DEEPSPEED_REDUCE_BUCKET, EngineSettings, LiveBytes, MetaAutocast, RoleSizes,
                                       state_bytes, traced_peak, unit_size)
from oneforcing.models.wan import WanConfig


class Block(nn.Module):
    """Attention and an MLP, as in a transformer block (fused attention on the CPU: q, k, v, out, lse kept)."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D)
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, E) each
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D)
        x = x + self.out(a)
        return x + self.mlp(x)


def test_live_bytes_counts_a_storage_once_until_its_last_view_dies():
    with LiveBytes() as meter:
        a = torch.empty(1000, device="meta")
        b = a.view(10, 100)
        assert meter.live == 4000
        del a
        assert meter.live == 4000  # the view keeps the storage
        c = torch.empty(500, device="meta")
        assert (meter.live, meter.peak) == (6000, 6000)
        del b, c
        assert meter.live == 0
        torch.empty(250, device="meta")
    assert meter.peak == 6000


def test_live_bytes_peak_in_closed_form():
    """y = exp(x), z = exp(y), backward of Σz: y, z, ∂/∂y and ∂/∂x are alive at once (x's own gradient is
    dropped on arrival): 4 tensors of N floats. (The profiler's per-op net accounting reads 3: it misses the peak
    inside a backward node, which frees its incoming gradient before it returns.)"""
    n = 100_000
    x = torch.randn(n, requires_grad=True)
    x.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))

    def step():
        y = x.exp()
        z = y.exp()
        z.sum().backward()

    meter = LiveBytes()
    with meter:
        step()
    assert 4 * 4 * n <= meter.peak <= 4 * 4 * n + 64
    assert meter.live <= 64


@pytest.mark.parametrize("batch, length", [(2, 64), (4, 128)])
def test_meta_trace_matches_the_cpu_run(batch, length):
    """The same forward and backward, traced on meta (fused attention stood in) vs run on the CPU (its flash
    attention kernel, real storages): the peaks agree within 5 %."""
    torch.manual_seed(0)
    block = Block()
    x = torch.randn(batch, length, 64)

    def step(model, inputs):
        return lambda: model(inputs).square().mean().backward()

    params = list(block.parameters())
    for p in params:
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    meter = LiveBytes()
    with meter:
        step(block, x)()
    measured = meter.peak
    meta = Block().to("meta")
    traced = traced_peak(step(meta, torch.empty_like(x, device="meta")), list(meta.parameters()))
    assert traced == pytest.approx(measured, rel=0.05)
    # and it scales: the activations grow with the tokens
    assert traced > 100_000 * batch * length / 128


def test_traced_peak_drops_the_gradients_and_restores_the_attention():
    """Two 4 MB weights: their gradients are dropped on arrival, so the second does not add to the first."""
    model = nn.Sequential(nn.Linear(1000, 1000, bias=False), nn.Linear(1000, 1000, bias=False)).to("meta")
    x = torch.empty(1, 1000, device="meta")
    step = lambda: model(x).sum().backward()  # noqa: E731
    kept = traced_peak(step, [])  # the gradients stay on the parameters
    model.zero_grad(set_to_none=True)
    dropped = traced_peak(step, list(model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    assert kept - dropped >= 3_990_000  # one weight gradient less (4 MB)
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"


def test_unit_size_excludes_nested_units():
    outer = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 8)))
    inner = outer[1]
    assert unit_size(outer, [inner, outer]) == 4 * 4 + 4
    assert unit_size(inner, [inner, outer]) == 4 * 8 + 8


def roles() -> list[RoleSizes]:
    return [RoleSizes("generator", params=1000, trainable=1000, largest_unit=100, persistent=200),
            RoleSizes("critic", params=1200, trainable=1100, largest_unit=150, persistent=0)]


def test_state_rules_in_closed_form():
    teacher, ema = 4000, 1000
    ddp = state_bytes(roles(), teacher, ema, EngineSettings("ddp", 2))
    assert ddp == {"parameters": 4 * 2200, "teacher": 4000, "ema": 4 * 1000, "gradients": 4 * 1100,
                   "optimizer": 8 * 2100, "buffers": 4 * 2100}
    fsdp2 = state_bytes(roles(), teacher, ema, EngineSettings("fsdp2", 4, param_bytes=2))
    assert fsdp2 == {"parameters": 4 * 2200 // 4, "teacher": 1000, "ema": 1000, "gradients": 4 * 2100 // 4,
                     "optimizer": 8 * 2100 // 4, "buffers": 2 * 2 * 150 + 4 * 150}
    zero2 = state_bytes(roles(), teacher, ema, EngineSettings("zero2", 2, reduce_bucket_size=10))
    assert zero2 == {"parameters": 4 * 2200, "teacher": 4000, "ema": 4000, "gradients": 4 * 1100 // 2,
                     "optimizer": 12 * 2100 // 2, "buffers": 2 * 4 * 10}
    zero3 = state_bytes(roles(), teacher, ema, EngineSettings("zero3", 2, reduce_bucket_size=10), ema_persistent=200)
    # an exact teacher's tables (no teacher sizes) stay whole; the EMA is partitioned as the generator
    assert zero3 == {"parameters": 4 * (2000 // 2 + 200), "teacher": 4000, "ema": 4 * (800 // 2 + 200),
                     "gradients": 4 * 2100 // 2, "optimizer": 12 * 2100 // 2, "buffers": 2 * 4 * 10 + 4 * 2000}
    wan_teacher = RoleSizes("teacher", params=1000, trainable=0, persistent=100)
    zero3_bf16 = state_bytes(roles(), teacher, ema, EngineSettings("zero3", 2, param_bytes=2, reduce_bucket_size=10),
                             teacher=wan_teacher, ema_persistent=200)
    # a Wan teacher partitioned in the engines' precision, and gathered while it computes; the EMA stays fp32
    assert zero3_bf16 == {"parameters": 2 * (2000 // 2 + 200), "teacher": 2 * (900 // 2 + 100),
                          "ema": 4 * (800 // 2 + 200), "gradients": 4 * 2100 // 2, "optimizer": 12 * 2100 // 2,
                          "buffers": 2 * 4 * 10 + 2 * (2000 + 900)}
    capped = state_bytes(roles(), teacher, ema, EngineSettings("zero3", 2, param_bytes=2, reduce_bucket_size=10,
                                                               max_live_parameters=1000), teacher=wan_teacher)
    assert capped["buffers"] == 2 * 4 * 10 + 2 * 1000  # DeepSpeed keeps at most max_live_parameters gathered
    overlapped = state_bytes(roles(), teacher, ema, EngineSettings("zero2", 2, reduce_bucket_size=10, overlap_comm=True))
    assert overlapped["buffers"] == 2 * 2 * 4 * 10  # double buffers
    assert state_bytes(roles(), 0, 0, EngineSettings("zero3", 2))["buffers"] >= 2 * 4 * DEEPSPEED_REDUCE_BUCKET


def test_engine_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="engine 'zero4' is not one of ddp, fsdp2, zero2, zero3"):
        EngineSettings("zero4", 2)
    with pytest.raises(ValueError, match="devices=0 must be >= 1"):
        EngineSettings("ddp", 0)


SMALL = ["--model.init_args.backbone.num_layers", "3", "--model.init_args.num_frames", "3"]


def plan_output(capsys, *argv: str) -> str:
    from oneforcing.commands.plan import plan_command

    plan_command(["--config", "configs/toy/self_forcing_dmd_1step.yaml", *SMALL, *argv])
    return capsys.readouterr().out


def test_plan_command_prints_every_row_and_the_verdict(capsys):
    out = plan_output(capsys, "--engine", "fsdp2", "--devices", "2", "--gpu-memory", "0.001")
    for row in ("parameters", "frozen teacher", "EMA", "gradients", "optimizer state", "engine buffers",
                "activations, generator step", "activations, critic step", "with activation checkpointing", "total",
                "does NOT fit"):
        assert row in out
    assert "fsdp2 on 2 device(s), 4 sample(s) per device" in out


def test_plan_fits_when_the_total_is_within_the_device():
    from oneforcing.engines.memory import Plan

    plan = Plan({"parameters": 60, "optimizer": 30}, {"generator": 10, "critic": 5}, {"generator": 8, "critic": 2},
                False, device_bytes=100)
    assert (plan.total, plan.fits) == (100, True)
    plan.device_bytes = 99
    assert plan.fits is False
    plan.device_bytes = None
    assert plan.fits is None


def test_plan_module_traces_each_step_and_checkpointing_lowers_the_critics():
    from oneforcing.commands.plan import _config_objects, plan_module

    def plan(*extra: str):
        module, _, _ = _config_objects("configs/toy/self_forcing_dmd_1step.yaml", [*SMALL, *extra])
        return module, plan_module(module, EngineSettings("fsdp2", 4), 2)

    module, one = plan()
    assert not one.checkpointing and set(one.activations) == {"generator", "critic"}
    # both steps recompute their blocks: the critic's flow pass and the generator's KV-cached roll-out calls
    assert one.activations_other["critic"] < 0.7 * one.activations["critic"]
    assert one.activations_other["generator"] < 0.9 * one.activations["generator"]
    assert one.total == sum(one.states.values()) + max(one.activations.values())
    trainable = sum(p.numel() for role in (module.generator, module.critic) for p in role.parameters())
    assert one.states["optimizer"] == 2 * 4 * trainable // 4  # AdamW's two fp32 states, sharded over 4
    _, checkpointed = plan("--model.init_args.activation_checkpointing", "[generator, critic]")
    assert checkpointed.checkpointing and checkpointed.activations == one.activations_other


@pytest.mark.parametrize("argv, message", [
    (["--devices", "0"], "--devices 0 must be >= 1"),
    (["--gpu-memory", "-1"], "--gpu-memory -1.0 must be > 0"),
    (["--batch-size", "3", "--model.init_args.micro_batches", "2"], "does not split into micro_batches=2"),
])
def test_plan_command_refuses_bad_input(capsys, argv, message):
    with pytest.raises(SystemExit) as error:
        plan_output(capsys, *argv)
    assert message in str(error.value)


def test_plan_refuses_a_teacher_config():
    from oneforcing.commands.plan import plan_command

    with pytest.raises(SystemExit, match="predicts a DistillationModule's training; the config builds a TeacherModule"):
        plan_command(["--config", "configs/toy/teacher.yaml"])


@pytest.mark.parametrize("batch, length", [(2, 64), (4, 128)])
def test_meta_trace_under_bf16_autocast_matches_the_cpu_run(batch, length):
    """bf16-mixed: the step traced on meta under MetaAutocast vs run on the CPU under torch.autocast(bfloat16),
    backward inside the autocast region as in Lightning's manual optimisation (its weight casts live until the
    region ends): the peaks agree within 5 %, and are well below the float32 trace's."""
    torch.manual_seed(0)
    block = Block()
    x = torch.randn(batch, length, 64)
    for p in block.parameters():
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    meter = LiveBytes()
    with meter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            block(x).float().square().mean().backward()
    meta = Block().to("meta")
    inputs = torch.empty_like(x, device="meta")

    def step():
        meta(inputs).float().square().mean().backward()

    traced = traced_peak(step, list(meta.parameters()), autocast=torch.bfloat16)
    full = traced_peak(step, list(meta.parameters()))
    assert traced == pytest.approx(meter.peak, rel=0.05)
    assert traced < 0.75 * full


def test_meta_autocast_reaches_activation_checkpointings_recompute():
    """The recompute in backward must cast as the forward did (checkpoint compares the saved tensors' dtypes)."""
    from oneforcing.engines.memory import MetaAutocast

    block = Block().to("meta")
    x = torch.empty(2, 16, 64, device="meta", requires_grad=True)

    def step():
        torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False).float().sum().backward()

    with_checkpointing = traced_peak(step, list(block.parameters()), autocast=torch.bfloat16)
    assert with_checkpointing > 0 and torch.utils.checkpoint.checkpoint.__name__ == "checkpoint"
    with MetaAutocast(torch.bfloat16):
        assert block.qkv(x).dtype == torch.bfloat16 and block(x).dtype == torch.float32  # the residual promotes


def test_the_trace_sizes_the_kv_cache_in_the_compute_dtype_as_autocast_does():
    """bf16-mixed: autocast on the CPU and the meta trace's stand-in both allocate the roll-out's cache in bfloat16."""
    from oneforcing.models.causal_wan import CausalWanBackbone

    with torch.device("meta"):
        model = CausalWanBackbone(WanConfig(**TINY_WAN), block_size=1)
    assert model.new_cache(1, 8, 8, 3).k.dtype == torch.float32
    with MetaAutocast(torch.bfloat16):
        assert model.new_cache(1, 8, 8, 3).k.dtype == torch.bfloat16
    assert model.new_cache(1, 8, 8, 3).k.dtype == torch.float32, "the stand-in ends with the trace"
