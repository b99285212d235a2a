"""The engines' settings fail early and clearly, and FSDP2's units cover every trainable parameter (one process)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, TINY_BACKBONE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.pytorch.strategies import StrategyRegistry

from oneforcing.cli import OneForcingCLI
from oneforcing.engines.fsdp2 import FSDP2Strategy
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanBackbone
from oneforcing.objectives.dmd import DMD
from oneforcing.objectives.gan import GAN

RECIPE = REPO_ROOT / "configs" / "toy" / "one_forcing_framewise_1step.yaml"
SETTINGS = {"param_dtype": "float32", "reduce_dtype": "float32", "cpu_offload": False, "reshard_after_forward": True,
            "save_distributed_checkpoint": True}


def test_fsdp2_strategies_are_registered_by_name():
    assert {"fsdp2", "fsdp2_bf16", "fsdp2_offload"} <= set(StrategyRegistry.available_strategies())
    bf16 = StrategyRegistry.get("fsdp2_bf16")
    assert isinstance(bf16, FSDP2Strategy) and bf16.param_dtype == torch.bfloat16 and not bf16.cpu_offload
    offload = StrategyRegistry.get("fsdp2_offload")
    assert offload.cpu_offload and offload.param_dtype == offload.reduce_dtype == torch.float32


def test_fsdp2_refuses_a_dtype_it_cannot_train_in():
    with pytest.raises(ValueError, match="param_dtype='float16' is not supported; use 'float32' or 'bfloat16'"):
        FSDP2Strategy(param_dtype="float16")


def parse_failure(strategy: dict, capsys) -> str:
    """stderr of `fit --print_config` with ``trainer.strategy`` set to ``strategy`` in a YAML config (parsing
    only: no process group, no model; a JSON string on the command line would parse as a strategy name)."""
    with tempfile.TemporaryDirectory() as tmp:
        override = Path(tmp) / "strategy.yaml"
        override.write_text(yaml.safe_dump({"trainer": {"strategy": strategy}}))
        with pytest.raises(SystemExit) as exit_:
            OneForcingCLI(args=["fit", "--config", str(RECIPE), "--config", str(override), "--print_config"])
    assert exit_.value.code not in (0, None)
    return capsys.readouterr().err


WRONG_VALUES = {  # a value of the wrong type or outside the allowed set, for each setting
    "param_dtype": st.sampled_from(["float16", "fp32", "bf16", 3, True]),
    "reduce_dtype": st.sampled_from(["float64", "half", 1.5]),
    "cpu_offload": st.sampled_from(["maybe", 2, [True]]),
    "reshard_after_forward": st.sampled_from(["often", 0.5, {"a": 1}]),
    "save_distributed_checkpoint": st.sampled_from(["sometimes", [1]]),
}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_fsdp2_settings_end_in_an_error_naming_the_key(data, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["oneforcing"])
    if data.draw(st.booleans(), label="unknown key"):
        key = data.draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12).filter(
            lambda k: k not in SETTINGS and k not in ("timeout", "process_group_backend")), label="key")
        value = data.draw(st.one_of(st.integers(), st.text(max_size=5), st.booleans()), label="value")
    else:
        key = data.draw(st.sampled_from(sorted(WRONG_VALUES)), label="key")
        value = data.draw(WRONG_VALUES[key], label="value")
    error = parse_failure({"class_path": "oneforcing.engines.fsdp2.FSDP2Strategy", "init_args": {key: value}}, capsys)
    assert key in error and "Traceback" not in error, error


def test_an_unknown_engine_name_fails_before_training(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["oneforcing"])
    with pytest.raises(ValueError, match="invalid strategy name.*fsdp3"):
        OneForcingCLI(args=["--config", str(RECIPE), "--trainer.strategy", "fsdp3"], run=False)  # no subcommand


def test_shard_units_cover_every_trainable_parameter_of_every_role():
    module = DistillationModule([DMD(), GAN(feature_layers=[0, 1], num_registers=2, head_ffn_dim=16, head_num_heads=2)],
                                backbone=dict(TINY_BACKBONE, in_channels=12, out_channels=12, text_dim=46),
                                teacher_weights="unused", num_frames=4, frame_size=16, ema_start=0)
    # the roles as configure_model builds them, without reading weight files
    module.generator = CausalWanBackbone(module.backbone_config)
    module.generator_ema = CausalWanBackbone(module.backbone_config).requires_grad_(False)
    module.critic, module.teacher = WanBackbone(module.backbone_config), WanBackbone(module.teacher_config)
    for objective in module.objectives:
        objective.configure(module.critic)
    units = module.shard_units()
    covered = {id(p) for unit in units for p in unit.parameters()}
    assert all(id(p) in covered for p in module.parameters())
    roots = [unit for unit in units if not any(unit is not outer and any(unit is m for m in outer.modules())
                                                for outer in units)]
    assert roots == [module.generator.transformer, module.generator_ema.transformer, module.critic.transformer,
                     module.teacher.transformer, module.objectives[1].head]
    for role in (module.generator, module.critic):
        position = {id(u): i for i, u in enumerate(units)}
        assert all(position[id(block)] < position[id(role.transformer)] for block in role.transformer.blocks)
