"""The engines' settings fail early and clearly, FSDP2's units cover every trainable parameter, and DeepSpeed's
engines are the module's optimizers' roles (one process)."""

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
from oneforcing.engines.deepspeed import DeepSpeedStrategy, EngineRole
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


DEEPSPEED_WRONG_VALUES = {
    "stage": st.sampled_from([0, 4, "two", 2.5]),
    "offload_optimizer": st.sampled_from(["cpu", 3, [True]]),
    "offload_params": st.sampled_from(["nvme", 1.5]),
    "bf16": st.sampled_from(["maybe", 2, {"enabled": True}]),
    "config": st.sampled_from([3, "zero", [1, 2]]),
}
DEEPSPEED_SETTINGS = {"stage", "offload_optimizer", "offload_params", "bf16", "config", "timeout",
                      "process_group_backend"}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_deepspeed_settings_end_in_an_error_naming_the_key(data, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["oneforcing"])
    if data.draw(st.booleans(), label="unknown key"):
        key = data.draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12).filter(
            lambda k: k not in DEEPSPEED_SETTINGS), label="key")
        value = data.draw(st.one_of(st.integers(), st.text(max_size=5), st.booleans()), label="value")
    else:
        key = data.draw(st.sampled_from(sorted(DEEPSPEED_WRONG_VALUES)), label="key")
        value = data.draw(DEEPSPEED_WRONG_VALUES[key], label="value")
    error = parse_failure({"class_path": "oneforcing.engines.deepspeed.DeepSpeedStrategy", "init_args": {key: value}},
                          capsys)
    assert key in error and "Traceback" not in error, error


def test_an_unknown_engine_name_fails_before_training(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["oneforcing"])
    with pytest.raises(ValueError, match="invalid strategy name.*fsdp3"):
        OneForcingCLI(args=["--config", str(RECIPE), "--trainer.strategy", "fsdp3"], run=False)  # no subcommand


def one_forcing_module(**gan) -> DistillationModule:
    """DMD + GAN with every role built as configure_model builds them, without reading weight files."""
    module = DistillationModule([DMD(), GAN(feature_layers=[0, 1], num_registers=2, head_ffn_dim=16, head_num_heads=2,
                                            **gan)],
                                backbone=dict(TINY_BACKBONE, in_channels=12, out_channels=12, text_dim=46),
                                teacher_weights="unused", num_frames=4, frame_size=16, ema_start=0)
    module.generator = CausalWanBackbone(module.backbone_config)
    module.generator_ema = CausalWanBackbone(module.backbone_config).requires_grad_(False)
    module.critic, module.teacher = WanBackbone(module.backbone_config), WanBackbone(module.teacher_config)
    for objective in module.objectives:
        objective.configure(module.critic)
    return module


def test_shard_units_cover_every_trainable_parameter_of_every_role():
    module = one_forcing_module()
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


def test_deepspeed_strategies_are_registered_by_name():
    names = {"zero2", "zero3", "zero2_offload", "zero3_offload", "zero2_bf16", "zero3_bf16"}
    assert names <= set(StrategyRegistry.available_strategies())
    zero3 = StrategyRegistry.get("zero3_offload")
    assert isinstance(zero3, DeepSpeedStrategy) and zero3.stage == 3 and zero3.offload_optimizer and zero3.offload_params
    zero2 = StrategyRegistry.get("zero2_offload")
    assert zero2.stage == 2 and zero2.offload_optimizer and not zero2.offload_params and not zero2.bf16
    assert StrategyRegistry.get("zero2_bf16").bf16 and StrategyRegistry.get("zero3").stage == 3


@pytest.mark.parametrize("settings, message", [
    (dict(stage=4), "stage=4 must be 1, 2 or 3"),
    (dict(stage=2, offload_params=True), "offload_params needs stage 3"),
    (dict(config={"gradient_clipping": 1.0}), r"config\['gradient_clipping'\] is set by the module"),
    (dict(config={"train_batch_size": 8}), r"config\['train_batch_size'\] is set by the module"),
    (dict(config=[1]), "config must be a mapping"),
    (dict(stage=3, config={"zero_optimization": {"zero_hpz_partition_size": 2}}),
     r"config\['zero_optimization'\]\['zero_hpz_partition_size'\] = 2 is not supported: the EMA's partitions"),
    (dict(stage=3, config={"zero_optimization": {"zero_quantized_nontrainable_weights": True}}),
     r"\['zero_quantized_nontrainable_weights'\] = True is not supported.*unquantized partitions over all ranks"),
    (dict(stage=3, config={"zero_optimization": {"zero_quantized_weights": True}}),
     r"\['zero_quantized_weights'\] = True is not supported"),
    (dict(stage=3, config={"zero_optimization": {"offload_param": {"device": "nvme"}}}),
     r"offload_param'\] on nvme is not supported .*use offload_params: true \(CPU memory\)"),
])
def test_deepspeed_refuses_settings_it_cannot_honour(settings, message):
    with pytest.raises(ValueError, match=message):
        DeepSpeedStrategy(**settings)


def test_a_deepspeed_engine_config_carries_the_role_clip_and_the_zero_settings():
    role = EngineRole("critic", torch.nn.Linear(2, 2), 7.5, ("critic.",))
    config = DeepSpeedStrategy(stage=3, offload_optimizer=True, offload_params=True, bf16=True,
                               config={"zero_optimization": {"reduce_bucket_size": 1000}}).engine_config(role)
    assert config["gradient_clipping"] == 7.5 and config["bf16"] == {"enabled": True}
    assert config["gradient_accumulation_steps"] == 1 and config["zero_allow_untested_optimizer"]
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["reduce_bucket_size"] == 1000  # merged over, not replacing
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert "offload_param" not in DeepSpeedStrategy(stage=2).engine_config(role)["zero_optimization"]


def test_a_frozen_role_engine_has_the_zero_settings_and_no_optimizer_entries():
    strategy = DeepSpeedStrategy(stage=3, offload_optimizer=True, offload_params=True, bf16=True,
                                 config={"zero_optimization": {"stage3_param_persistence_threshold": 0}})
    config = strategy.frozen_config(bf16=False)  # the EMA's: fp32 under bf16 engines
    assert config["bf16"] == {"enabled": False} and strategy.frozen_config(bf16=True)["bf16"] == {"enabled": True}
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0  # partitioned as the generator
    assert zero["offload_param"]["device"] == "cpu" and "offload_optimizer" not in zero
    assert "gradient_clipping" not in config and "zero_allow_untested_optimizer" not in config


def test_frozen_roles_are_the_wan_teacher_and_the_fp32_ema():
    module = one_forcing_module()
    roles = {role.prefix: role for role in module.frozen_roles()}
    assert sorted(roles) == ["generator_ema.", "teacher."]
    assert roles["teacher."].module is module.teacher and not roles["teacher."].fp32
    assert roles["generator_ema."].module is module.generator_ema and roles["generator_ema."].fp32
    names = dict(module.named_parameters())
    for prefix, role in roles.items():
        assert all(names[prefix + key] is p for key, p in role.module.named_parameters())


def test_engine_roles_are_the_optimizers_roles_in_their_order():
    module = one_forcing_module()
    generator, critic = module.engine_roles()
    optimizers = module.configure_optimizers()
    assert (generator.name, critic.name) == ("generator", "critic") and len(optimizers) == 2
    for role, optimizer in zip((generator, critic), optimizers):
        assert {id(p) for p in role.module.parameters()} == {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert generator.max_grad_norm == module.hparams.generator_grad_clip
    assert critic.max_grad_norm == module.hparams.critic_grad_clip
    assert critic.prefixes == ("critic.", "objectives.1.")  # the GAN head trains with the critic
    names = dict(module.named_parameters())
    for prefix, child in zip(critic.prefixes, critic.module):
        assert all(names[prefix + key] is p for key, p in child.named_parameters())


def test_deepspeed_refuses_a_head_with_its_own_optimizer():
    with pytest.raises(ValueError) as error:
        one_forcing_module(head_lr=1e-4).engine_roles()
    assert str(error.value) == ("['GAN'] train their parameters with their own optimizer settings, which DeepSpeed's "
                                "one engine per role cannot step beside the critic's; unset them (e.g. the GAN's "
                                "head_lr) so that they train with the critic's optimizer, or use strategy ddp / fsdp2.")


def test_the_deepspeed_strategy_needs_a_module_with_engine_roles():
    import lightning as L

    strategy = DeepSpeedStrategy()
    strategy._lightning_module = L.LightningModule()
    with pytest.raises(TypeError, match="engine_roles\\(\\); LightningModule has none. Use strategy 'ddp'"):
        strategy.setup(trainer=None)


def test_every_engine_role_carries_its_prefix_and_the_module_s_micro_batches():
    module = DistillationModule([DMD()], backbone=dict(TINY_BACKBONE, in_channels=12, out_channels=12, text_dim=46),
                                teacher_weights="unused", num_frames=4, frame_size=16, micro_batches=2)
    module.generator = CausalWanBackbone(module.backbone_config)
    module.critic, module.teacher = WanBackbone(module.backbone_config), WanBackbone(module.teacher_config)
    generator, critic = module.engine_roles()
    assert generator.prefixes == ("generator.",) and generator.micro_batches == 2
    # DMD alone: no head beside the critic, so the critic's engine holds the critic itself
    assert critic.module is module.critic and critic.prefixes == ("critic.",) and critic.micro_batches == 2
    roles = one_forcing_module().engine_roles()
    assert [r.micro_batches for r in roles] == [1, 1]


def test_an_exact_teacher_is_neither_sharded_nor_partitioned():
    """Its bank and tables are buffers, not parameters: no FSDP unit, no ZeRO-3 engine; the EMA still is one."""
    from oneforcing.toy.exact_teacher import ExactTeacher

    module = one_forcing_module()
    wan_units = len(module.shard_units())
    embeddings = torch.zeros(2, 2, 3)
    embeddings[0, 0, 0] = embeddings[1, 1, 2] = 1.0  # two distinct captions, neither the unconditional zeros
    module.teacher = ExactTeacher(torch.zeros(3, 3, 2, 2, 2), torch.tensor([1, 0, 0]), embeddings, torch.zeros(2, 3))
    assert len(module.shard_units()) == wan_units - len(WanBackbone(module.teacher_config).shard_units())
    assert [role.prefix for role in module.frozen_roles()] == ["generator_ema."]
