"""The shared Wan backbone: real-model sizes on the meta device, the (B, F, C, H, W) wrapper, weight loading."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TINY_BACKBONE
from safetensors.torch import save_file

from oneforcing.callbacks.export import export_weights
from oneforcing.lightning_modules.teacher import TeacherModule
from oneforcing.models.wan import (
    WAN21_T2V_1_3B,
    WAN21_T2V_14B,
    WanBackbone,
    WanConfig,
    build_on_meta,
    count_parameters,
)

TINY = WanConfig(**TINY_BACKBONE)


def tiny_backbone(seed: int = 0, **overrides) -> WanBackbone:
    torch.manual_seed(seed)
    return WanBackbone(dataclasses.replace(TINY, **overrides))


def test_wan21_1_3b_size_on_meta():
    model = build_on_meta(WAN21_T2V_1_3B)
    n = count_parameters(model)
    assert 1.3e9 < n < 1.45e9, n  # 1.419 B in diffusers, with the 4096-dim text projection
    assert next(model.parameters()).is_meta
    assert WAN21_T2V_1_3B.dim == 1536


def test_wan21_14b_size_on_meta():
    n = count_parameters(build_on_meta(WAN21_T2V_14B))
    assert 13e9 < n < 15e9, n  # 14.29 B in diffusers
    assert WAN21_T2V_14B.dim == 5120


def test_toy_default_is_a_few_million_parameters():
    assert 1e6 < count_parameters(build_on_meta(WanConfig())) < 3e6


@pytest.mark.parametrize("per_frame", [False, True])
def test_forward_keeps_the_project_layout(per_frame):
    model = tiny_backbone().eval()
    B, F, C, H, W = 2, 3, 12, 8, 8
    x = torch.randn(B, F, C, H, W)
    sigma = torch.rand(B, F) if per_frame else torch.rand(B)
    context = torch.randn(B, 5, TINY.text_dim)
    with torch.no_grad():
        out = model(x, sigma, context)
    assert out.shape == (B, F, C, H, W)
    assert torch.isfinite(out).all()


def test_per_frame_sigma_equal_to_per_video_sigma_gives_the_same_output():
    model = tiny_backbone().eval()
    x, context = torch.randn(2, 3, 12, 8, 8), torch.randn(2, 5, TINY.text_dim)
    sigma = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        per_video = model(x, sigma, context)
        per_frame = model(x, sigma[:, None].expand(2, 3), context)
        other = model(x, torch.tensor([[0.3, 0.3, 0.9], [0.8, 0.8, 0.8]]), context)
    assert torch.allclose(per_video, per_frame, atol=1e-5)
    assert not torch.allclose(per_video[0], other[0], atol=1e-5)  # the per-frame timestep reaches the model
    assert torch.allclose(per_video[1], other[1], atol=1e-5)


def test_load_weights_round_trip(tmp_path):
    source, target = tiny_backbone(seed=0), tiny_backbone(seed=1)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.transformer.state_dict().items()}, path)
    target.load_weights(path)
    for (name, a), b in zip(source.transformer.state_dict().items(), target.transformer.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_weights_with_wrong_shapes_names_the_mismatch(tmp_path):
    other = tiny_backbone(ffn_dim=64)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.transformer.state_dict().items()}, path)
    with pytest.raises(ValueError, match=r"shape mismatches.*ffn") as error:
        tiny_backbone().load_weights(path)
    assert "(64, 24) vs model (48, 24)" in str(error.value)


def test_load_weights_with_missing_keys_fails_when_strict(tmp_path):
    state = dict(tiny_backbone().transformer.state_dict())
    state.pop("proj_out.weight")
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(ValueError, match=r"1 missing keys.*proj_out.weight"):
        tiny_backbone().load_weights(path)
    tiny_backbone().load_weights(path, strict=False)


def test_load_weights_rejects_an_export_with_another_head_split(tmp_path):
    # 2 heads of 2·d and 4 heads of d have identical tensor shapes; only the recorded config tells them apart
    split = dict(num_attention_heads=TINY.num_attention_heads // 2, attention_head_dim=TINY.attention_head_dim * 2)
    export = tmp_path / "teacher.safetensors"
    teacher = TeacherModule(backbone=dataclasses.replace(TINY, **split))
    teacher.configure_model()
    export_weights(teacher, export)
    heads, head_dim = TINY.num_attention_heads, TINY.attention_head_dim
    with pytest.raises(ValueError, match=rf"another WanConfig \(num_attention_heads: file {heads // 2} vs model "
                                         rf"{heads}; attention_head_dim: file {head_dim * 2} vs model {head_dim}\)"):
        tiny_backbone().load_weights(export)
    same = tiny_backbone(seed=1, **split)
    same.load_weights(export)
    assert torch.equal(same.transformer.proj_out.weight, teacher.model.transformer.proj_out.weight)


def test_load_weights_from_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="do not exist"):
        tiny_backbone().load_weights(tmp_path / "none.safetensors")


def test_teacher_rejects_a_text_dim_that_does_not_fit_the_encoder():
    with pytest.raises(ValueError, match=r"backbone.text_dim=32 .* set backbone.text_dim: 46"):
        TeacherModule(backbone={**TINY_BACKBONE, "text_dim": 32})


def test_teacher_reports_every_config_problem_at_once():
    with pytest.raises(ValueError) as error:
        TeacherModule(backbone={**TINY_BACKBONE, "text_dim": 32, "in_channels": 16}, caption_dropout=1.5)
    message = str(error.value)
    assert "text_dim" in message and "in_channels" in message and "caption_dropout" in message


def test_adaln_zero_starts_at_v_zero_and_training_moves_the_zeroed_tensors():
    model = tiny_backbone()
    model.adaln_zero_init_()
    x = torch.randn(2, 3, 12, 8, 8)
    sigma = torch.rand(2)
    context = torch.randn(2, 5, TINY.text_dim)
    target = torch.randn_like(x)
    out = model(x, sigma, context)
    assert torch.equal(out, torch.zeros_like(out))  # proj_out is zero
    out.sub(target).square().mean().backward()
    params = dict(model.transformer.named_parameters())
    # the zero output layer blocks every other gradient on the first step, as in DiT ...
    assert params["proj_out.weight"].grad.abs().sum() > 0
    assert params["blocks.0.scale_shift_table"].grad.abs().sum() == 0
    # ... and a few steps later the gates have opened
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.step()
        optimizer.zero_grad()
        model(x, sigma, context).sub(target).square().mean().backward()
    for name in ("proj_out.weight", "blocks.0.scale_shift_table", "blocks.1.scale_shift_table",
                 "condition_embedder.time_proj.weight"):
        assert params[name].abs().sum() > 0, name
    assert params["blocks.0.attn1.to_q.weight"].grad.abs().sum() > 0  # attention learns once its gate is open
