"""The causality guard: every shipped recipe's training forward is causal, as the recipe runs it.

Each recipe (toy and Wan2.1) is built through the CLI with tiny widths (its layers, layout and objectives kept) and
one generator step runs on random inputs while a spy records every call of the causal backbone. Each recorded call
is then replayed twice: with a later block perturbed, every earlier frame's output must be unchanged (bit for bit);
with the first block perturbed, later outputs must change (the context is really read). Full-sequence calls, teacher
forcing and the KV-cached roll-out (with and without ``cache_gradient``) are all covered by what the recipes call;
the test also asserts which path each recipe uses, so a recipe that stops calling the backbone fails too. Another
open framework shipped a causal trainer whose mask argument was never passed; the last test shows the guard catches
exactly that.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field

import pytest
import torch
import yaml
from conftest import REPO_ROOT

from oneforcing.cli import OneForcingCLI
from oneforcing.commands.plan import fake_batch
from oneforcing.models.causal_wan import CausalWanBackbone

RECIPES = sorted(c for c in (REPO_ROOT / "configs").rglob("*.yaml") if c.stem not in ("teacher", "feature_net"))
PATHS = ("forward", "forward_teacher_forcing", "forward_cached")


@dataclass
class Call:
    path: str
    model: CausalWanBackbone
    arguments: dict  # by parameter name: x, sigma, context (, clean, clean_sigma) (, cache, frame_offset)
    grad: bool


@dataclass
class Spy:
    calls: list[Call] = field(default_factory=list)


@pytest.fixture
def spy(monkeypatch) -> Spy:
    record = Spy()
    for path in PATHS:
        original = getattr(CausalWanBackbone, path)

        def recorded(self, *args, _path=path, _original=original, **kwargs):
            arguments = inspect.signature(_original).bind(self, *args, **kwargs).arguments
            arguments.pop("self")
            record.calls.append(Call(_path, self, dict(arguments), torch.is_grad_enabled()))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(CausalWanBackbone, path, recorded)
    return record


def tiny_recipe(config, cache_gradient: bool = False):
    """The recipe's module with 1 head of 12 channels and FFN 16 (its layer counts, layout and objectives kept),
    three blocks of frames, 32-pixel frames, random weights."""
    model = yaml.safe_load(config.read_text())["model"]["init_args"]
    block = model.get("block_size", 1)
    frames = (model.get("first_block_size") or block) + 2 * block

    def shrink(backbone: dict) -> str:
        return json.dumps(dict(backbone, num_attention_heads=1, attention_head_dim=12, ffn_dim=16))

    args = ["--config", str(config), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.strategy", "auto", "--trainer.precision", "32-true", "--trainer.logger", "false",
            "--model.init_args.num_frames", str(frames), "--model.init_args.backbone", shrink(model["backbone"]),
            "--model.init_args.frame_size", "[32, 32]", "--model.init_args.cache_gradient", str(cache_gradient)]
    if "teacher_backbone" in model:
        args += ["--model.init_args.teacher_backbone", shrink(model["teacher_backbone"])]
    if model.get("gradient_window_frames"):
        args += ["--model.init_args.gradient_window_frames", str(min(frames, model["gradient_window_frames"]))]
    module = OneForcingCLI(args=args, run=False).model
    torch.manual_seed(0)
    module.build_roles(load_weights=False)
    return module


def generator_step(module) -> None:
    g = torch.Generator().manual_seed(0)
    batch = {k: torch.randn(v.shape, generator=g) if isinstance(v, torch.Tensor) else v
             for k, v in fake_batch(module, 2).items()}
    if "trajectory_sigmas" in batch:
        batch["trajectory_sigmas"] = torch.linspace(1.0, 0.1, batch["trajectory_sigmas"].shape[1]).expand(2, -1)
    context = torch.randn(2, module.text_encoder.context_length, module.backbone_config.text_dim, generator=g)
    uncond = torch.zeros_like(context) if "teacher" in module.roles else None
    module.step_loss("generator", batch, context, uncond)


def _perturbed(x: torch.Tensor, frames: slice) -> torch.Tensor:
    x = x.detach().clone()
    x[:, frames] += 1.0
    return x


def check_full_sequence(call: Call) -> None:
    """forward(x, σ, context) or forward_teacher_forcing(x, σ, context, clean): outputs per frame."""
    model, arguments = call.model, call.arguments
    blocks = model.layout(arguments["x"].shape[1]).blocks
    last, first = slice(blocks[-1][0], None), slice(0, blocks[0][1])
    run = getattr(CausalWanBackbone, call.path)
    forcing = call.path == "forward_teacher_forcing"
    with torch.no_grad():
        base = run(model, **arguments)
        later = dict(arguments, x=_perturbed(arguments["x"], last))
        if forcing:
            later["clean"] = _perturbed(arguments["clean"], last)  # the last clean block is visible to no noisy frame
        moved = run(model, **later)
        assert torch.equal(moved[:, :last.start], base[:, :last.start]), (
            f"{call.path}: perturbing the last block changed an earlier frame's output (the mask is not causal)")
        name = "clean" if forcing else "x"  # teacher forcing: later blocks read the clean ones
        moved = run(model, **dict(arguments, **{name: _perturbed(arguments[name], first)}))
        assert (moved[:, first.stop:] - base[:, first.stop:]).abs().max() > 1e-6, (
            f"{call.path}: perturbing the first block left every later frame unchanged (the context is not read)")


def check_rollout(calls: list[Call]) -> None:
    """One roll-out's cached calls replayed over a fresh cache: as recorded, with the last block's inputs
    perturbed, and with the first block's context pass perturbed."""
    model, cache = calls[0].model, calls[0].arguments["cache"]
    offsets = [c.arguments["frame_offset"] for c in calls]
    first_context = max(i for i, offset in enumerate(offsets) if offset == 0)  # the first block's context pass

    def replay(change: str) -> list[torch.Tensor]:
        B, _, _, H, W = calls[0].arguments["x"].shape
        fresh = model.new_cache(B, H, W, cache.capacity_frames, keep_gradient=cache.keep_gradient)
        outs = []
        for i, c in enumerate(calls):
            x = c.arguments["x"]
            if change == "last" and offsets[i] == max(offsets) or change == "first" and i == first_context:
                x = _perturbed(x, slice(None))
            with torch.set_grad_enabled(c.grad):
                outs.append(CausalWanBackbone.forward_cached(
                    model, **dict(c.arguments, x=x, cache=fresh)).detach())
        return outs

    base, later, earlier = replay("none"), replay("last"), replay("first")
    for i, offset in enumerate(offsets):
        if offset < max(offsets):
            assert torch.equal(later[i], base[i]), "perturbing the last block changed an earlier block's output"
    changed = [(earlier[i] - base[i]).abs().max() > 1e-6 for i, offset in enumerate(offsets) if offset > 0]
    assert changed and all(changed), "a later block's output ignored the first block in the cache"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("config", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_recipes_training_forward_is_causal(config, spy):
    module = tiny_recipe(config)
    generator_step(module)
    paths = {c.path for c in spy.calls if c.model is module.generator}
    objectives = {type(o).__name__ for o in module.generator_objectives}
    expected = {"forward_cached"} if objectives & {"DMD", "OneForcing", "SiD", "GAN"} else {
        "forward", "forward_teacher_forcing"}
    assert paths and paths <= expected | {"forward_cached"}, paths
    generator_calls = [c for c in spy.calls if c.model is module.generator]
    for call in generator_calls:
        if call.path != "forward_cached":
            check_full_sequence(call)
    rollouts: dict[int, list[Call]] = {}
    for call in generator_calls:
        if call.path == "forward_cached":
            rollouts.setdefault(id(call.arguments["cache"]), []).append(call)
    for calls in rollouts.values():
        check_rollout(calls)


ROLLOUT_RECIPES = [c for c in RECIPES if any(k in c.stem for k in ("dmd", "one_forcing"))]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("config", ROLLOUT_RECIPES[:2], ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_rollout_with_cache_gradient_is_causal(config, spy):
    module = tiny_recipe(config, cache_gradient=True)
    generator_step(module)
    calls = [c for c in spy.calls if c.path == "forward_cached" and c.model is module.generator]
    assert calls and calls[0].arguments["cache"].keep_gradient
    check_rollout(calls)


@pytest.mark.filterwarnings("ignore")
def test_the_guard_catches_a_mask_that_is_never_passed(spy, monkeypatch):
    """The hand-made breakage: the full-sequence paths attend without their mask."""
    by_path = {}
    for stem in ("ode_init_framewise", "causal_forcing_ar_diffusion"):
        module = tiny_recipe(REPO_ROOT / "configs" / "toy" / f"{stem}.yaml")
        spy.calls.clear()
        generator_step(module)
        by_path[spy.calls[0].path] = spy.calls[0]
    assert set(by_path) == {"forward", "forward_teacher_forcing"}
    for call in by_path.values():
        check_full_sequence(call)  # intact: passes
    monkeypatch.setattr(CausalWanBackbone, "_token_mask", lambda self, *args: None)
    for call in by_path.values():
        with pytest.raises(AssertionError, match="not causal"):
            check_full_sequence(call)
