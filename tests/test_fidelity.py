"""Fidelity to the reference recipes: consistency guidance, the negative prompt, the cache-gradient option."""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import TINY_TOY
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.text_encoders import WAN_NEGATIVE_PROMPT
from oneforcing.models.wan import WanBackbone, WanConfig
from oneforcing.objectives.dmd import DMD
from oneforcing.toy.text_encoder import ToyTextEncoder

REPO = Path(__file__).resolve().parents[1]
TINY = dict(TINY_TOY)


def model_args(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["model"]["init_args"]


def objective_args(path: Path, name: str) -> list[dict]:
    return [o.get("init_args", {}) for o in model_args(path)["objectives"] if o["class_path"].endswith("." + name)]


@pytest.mark.parametrize("path", [REPO / "configs/toy/consistency_1step.yaml",
                                  REPO / "configs/wan2.1/consistency_framewise.yaml"], ids=lambda p: p.name)
def test_consistency_recipes_guide_the_teacher_with_w_3(path):
    (args,) = objective_args(path, "ConsistencyDistillation")
    assert args["guidance_scale"] == 3.0  # Causal Forcing: uncond + 3·(cond − uncond)


def objective_class(class_path: str) -> type:
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def uses_a_teacher(path: Path) -> bool:
    """Whether one of the recipe's objectives declares the teacher role (read from the class, not a kept list)."""
    return any("teacher" in objective_class(o["class_path"]).roles for o in model_args(path)["objectives"])


@pytest.mark.parametrize("path", sorted((REPO / "configs/wan2.1").glob("*.yaml")), ids=lambda p: p.name)
def test_wan_recipes_guide_against_wans_standard_negative_prompt(path):
    if not uses_a_teacher(path):
        assert "negative_prompt" not in model_args(path), "a recipe without a guided teacher has no use for it"
        return
    assert model_args(path)["negative_prompt"] == WAN_NEGATIVE_PROMPT


def test_toy_recipes_keep_the_empty_unconditional_prompt():
    for path in (REPO / "configs/toy").glob("*.yaml"):
        args = yaml.safe_load(path.read_text())["model"]["init_args"]
        assert args.get("negative_prompt", "") == "", path.name


class RecordingToyEncoder(ToyTextEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def forward(self, prompts):
        self.seen.append(list(prompts))
        return super().forward(prompts)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_file({f"model.transformer.{k}": v for k, v in WanBackbone(WanConfig(**TINY)).transformer.state_dict().items()},
              path)
    return str(path)


def test_the_negative_prompt_is_the_unconditional_context_of_every_step(teacher_file):
    encoder = RecordingToyEncoder()
    module = DistillationModule([DMD(guidance_scale=3.0)], backbone=TINY, teacher_weights=teacher_file,
                                text_encoder=encoder, negative_prompt="a small blue square", num_frames=2,
                                frame_size=16, generator_update_every=1, ema_start=None)
    seen = []
    original = module._step_context

    def spy(batch, context, uncond_context, draws=None):
        seen.append(uncond_context.clone())
        return original(batch, context, uncond_context, draws)

    module._step_context = spy
    captions = ["a large red circle moving left quickly"] * 2
    batch = {"caption": captions, "pixels": torch.rand(2, 2, 3, 16, 16) * 2 - 1, "num_skipped": torch.tensor(0)}
    L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(
        module, train_dataloaders=torch.utils.data.DataLoader([batch] * 2, batch_size=None))
    expected = ToyTextEncoder()(["a small blue square"]).expand(2, -1, -1)
    assert len(seen) == 4 and all(torch.equal(u, expected) for u in seen), "generator and critic steps, 2 iterations"
    assert ["a small blue square"] in encoder.seen and [""] * 2 not in encoder.seen
    assert sum(p == ["a small blue square"] for p in encoder.seen) == 1, "encoded once, then reused"


def test_a_negative_prompt_outside_the_toy_vocabulary_fails_before_training():
    with pytest.raises(ValueError, match="negative_prompt.*outside the toy vocabulary"):
        DistillationModule([DMD()], backbone=TINY, teacher_weights="t", negative_prompt=WAN_NEGATIVE_PROMPT)


@pytest.mark.parametrize("cache_gradient", [False, True])
def test_cache_gradient_reaches_the_training_rollout(monkeypatch, cache_gradient):
    from oneforcing.lightning_modules import distillation

    seen = []
    monkeypatch.setattr(distillation, "self_forcing_rollout", lambda *a, **kw: seen.append(kw["cache_gradient"]))
    module = DistillationModule([DMD()], backbone=TINY, teacher_weights="t", cache_gradient=cache_gradient)
    module._step_context({}, torch.zeros(1, 2, 46), torch.zeros(1, 2, 46)).rollout(True)
    assert seen == [cache_gradient]


def test_ema_or_raw_weights_are_one_flag_and_reports_say_which(teacher_file, tmp_path, capsys):
    from oneforcing.callbacks.export import export_weights
    from oneforcing.commands.evaluate import sample
    from oneforcing.commands.sample import sample_command
    from oneforcing.lightning_modules.checkpoints import load_trained_module, weights_choice

    module = DistillationModule([DMD()], backbone=TINY, teacher_weights=teacher_file, num_frames=2, frame_size=16,
                                ema_start=0)
    module.configure_model()
    assert weights_choice(module, None) == "raw", "no EMA before ema_start: the raw generator, and said so"
    with pytest.raises(ValueError, match="no EMA.*--ema false"):
        weights_choice(module, True)
    with torch.no_grad():
        for p in module.generator_ema.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.ema_initialised.fill_(True)
    path = export_weights(module, tmp_path / "student.safetensors")
    loaded = load_trained_module(path)
    assert [weights_choice(loaded, e) for e in (None, True, False)] == ["ema", "ema", "raw"]
    prompts = ["a large red circle moving left quickly"]
    ema, raw = (sample(loaded, prompts, 0, 1, 1, use_ema=flag) for flag in (True, False))
    assert not torch.allclose(ema, raw), "the flag chooses other weights"
    assert torch.equal(sample(loaded, prompts, 0, None, 1), loaded.generate(prompts, seed=0)), \
        "evaluation samples what the module itself generates (its schedule, its EMA)"
    sample_command(["--checkpoint", str(path), "--prompt", prompts[0], "--out", str(tmp_path / "s"), "--ema", "false"])
    assert "raw weights" in capsys.readouterr().out
    assert weights_choice(torch.nn.Module(), None) == "teacher", "a bidirectional teacher has no generator"
