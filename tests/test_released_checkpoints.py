"""Released reference checkpoints (Wan's original naming): the key map, its round trip, and sampling one."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO_ROOT, require_real_extra

from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.released_checkpoints import (original_to_diffusers_key, released_state, to_diffusers,
                                                    to_original)
from oneforcing.models.wan import WanBackbone, WanConfig

# text_dim 16 and 3 layers: every kind of key, at a size that runs in milliseconds
CONFIG = WanConfig(num_layers=3, num_attention_heads=2, attention_head_dim=12, ffn_dim=32, in_channels=4,
                   out_channels=4, text_dim=16, freq_dim=32)


def random_backbone(seed: int = 0, cls=WanBackbone) -> WanBackbone:
    torch.manual_seed(seed)
    model = cls(CONFIG)
    with torch.no_grad():  # diffusers zero-initialises some tensors; make every one of them matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 4, 8, 8, generator=g), torch.rand(2, generator=g), torch.randn(2, 5, 16, generator=g)


def test_every_name_is_checked_against_the_installed_diffusers():
    state = random_backbone().transformer.state_dict()
    original = to_original(state)
    assert len(original) == len(state) == 27 * CONFIG.num_layers + 15  # Wan2.1-T2V-1.3B: 27·30 + 15 = 825 keys
    for wan, ours in [("blocks.1.self_attn.q.weight", "blocks.1.attn1.to_q.weight"),
                      ("blocks.1.cross_attn.o.bias", "blocks.1.attn2.to_out.0.bias"),
                      ("blocks.0.norm3.weight", "blocks.0.norm2.weight"),  # the cross-attention LayerNorm
                      ("blocks.2.ffn.0.weight", "blocks.2.ffn.net.0.proj.weight"),
                      ("blocks.2.modulation", "blocks.2.scale_shift_table"), ("head.modulation", "scale_shift_table"),
                      ("head.head.weight", "proj_out.weight"), ("time_projection.1.bias", "condition_embedder.time_proj.bias"),
                      ("text_embedding.2.weight", "condition_embedder.text_embedder.linear_2.weight")]:
        assert original_to_diffusers_key(wan) == ours and torch.equal(original[wan], state[ours])
    assert to_diffusers(original).keys() == state.keys()


def test_the_map_agrees_with_diffusers_own_converter():
    convert = pytest.importorskip("diffusers.loaders.single_file_utils").convert_wan_transformer_to_diffusers
    state = random_backbone().transformer.state_dict()
    original = to_original(state)
    theirs = convert({f"model.diffusion_model.{k}": v for k, v in original.items()})
    assert theirs.keys() == to_diffusers(original).keys()
    assert all(torch.equal(theirs[k], state[k]) for k in state)


@pytest.mark.parametrize("prefix", ["model.", "model._fsdp_wrapped_module.", "module.model._fsdp_wrapped_module."])
def test_a_released_generator_loads_and_gives_identical_outputs(tmp_path, prefix):
    source = random_backbone(cls=CausalWanBackbone)
    ema = random_backbone(seed=5)
    path = tmp_path / "model.pt"
    torch.save({"step": 200, "generator": {prefix + k: v for k, v in to_original(source.transformer.state_dict()).items()},
                "generator_ema": {prefix + k: v for k, v in to_original(ema.transformer.state_dict()).items()}}, path)
    loaded = CausalWanBackbone(CONFIG)
    loaded.load_weights(path)  # a released .pt as generator_weights: its `generator`
    x, sigma, context = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, context), source(x, sigma, context))
    checkpoint = torch.load(path, weights_only=True)
    role, state = released_state(checkpoint, "generator_ema")
    assert role == "generator_ema" and all(torch.equal(v, ema.transformer.state_dict()[k]) for k, v in state.items())


def test_unknown_keys_are_reported_with_their_count_and_the_first_ten(tmp_path):
    original = to_original(random_backbone().transformer.state_dict())
    extra = {f"model.img_emb.proj.{i}.weight": torch.zeros(1) for i in range(12)}
    path = tmp_path / "i2v.pt"
    torch.save({"generator": {**{f"model.{k}": v for k, v in original.items()}, **extra}}, path)
    with pytest.raises(ValueError) as error:
        WanBackbone(CONFIG).load_weights(path)
    message = str(error.value)
    assert f"12 of {len(original) + 12} keys have no counterpart in diffusers' WanTransformer3DModel" in message
    assert "model.img_emb.proj.9.weight" in message and "model.img_emb.proj.10.weight" not in message
    assert "image-to-video" in message


def test_a_critic_keeps_its_backbone_and_drops_the_one_forcing_gan_head():
    original = to_original(random_backbone().transformer.state_dict())
    head = {"model._fsdp_wrapped_module._cls_pred_branch.0.weight": torch.zeros(3),
            "model._fsdp_wrapped_module._register_tokens": torch.zeros(2, 3)}
    checkpoint = {"critic": {**{f"model._fsdp_wrapped_module.{k}": v for k, v in original.items()}, **head}}
    role, state = released_state(checkpoint, "critic")
    assert role == "critic" and len(state) == len(original)
    with pytest.raises(ValueError, match="holds no 'generator_ema' weights; its state dicts are \\['critic'\\]"):
        released_state(checkpoint, "generator_ema")


def test_sample_and_vbench_run_a_released_generator_in_the_streaming_sampler(tmp_path):
    require_real_extra()
    from oneforcing.commands.sample import sample_command
    from oneforcing.commands.tiny_wan import tiny_wan_command
    from oneforcing.commands.vbench import export_vbench
    from oneforcing.lightning_modules.checkpoints import load_released_module, load_trained_module

    out = tmp_path / "tiny-wan"
    tiny_wan_command(["--out", str(out)])  # the README's command: the folder, released.pt and recipe.yaml
    released, recipe = out / "released.pt", out / "recipe.yaml"
    module = load_released_module(released, recipe)
    checkpoint = torch.load(released, weights_only=True)
    for role in ("generator", "generator_ema"):
        expected = released_state(checkpoint, role)[1]
        own = getattr(module, role).transformer.state_dict()
        assert all(torch.equal(own[k], v) for k, v in expected.items()) and own.keys() == expected.keys()
    assert module.has_ema and module.released_roles == ["generator", "generator_ema"]
    assert module.codec.path == str(out / "vae") and module.hparams.block_size == 1

    sample_command(["--checkpoint", str(released), "--released-config", str(recipe), "--prompt", "a red circle",
                    "--prompt", "a cat", "--out", str(tmp_path / "samples"), "--ema", "false"])
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["0000_a_red_circle.gif", "0001_a_cat.gif"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    written = export_vbench(str(released), str(prompts), tmp_path / "vbench", samples_per_prompt=1,
                            released_config=str(recipe), model_dir=str(out))
    assert [p.name for p in written] == ["a cat-0.mp4"] and written[0].stat().st_size > 0
    with pytest.raises(ValueError, match="reference trainer .* --released-config .* evaluate. measures toy-world"):
        load_trained_module(released)
    with pytest.raises(ValueError, match="does not configure a DistillationModule"):
        load_released_module(released, REPO_ROOT / "configs" / "toy" / "teacher.yaml")
