"""LoRA on the generator and critic through peft: only adapters train, the causal processors run them, and the
merged export reproduces the adapted model."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import TINY_TOY, require_real_extra
from safetensors import safe_open
from safetensors.torch import save_file

from oneforcing.callbacks.export import export_weights
from oneforcing.lightning_modules.checkpoints import causal_generator_from, load_trained_module
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.models.causal_attention import CausalSelfAttnProcessor
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.lora import LoRAConfig, apply_lora, merged_state_dict
from oneforcing.models.wan import WanBackbone, WanConfig
from oneforcing.objectives.dmd import DMD

require_real_extra("peft")

TINY = dict(TINY_TOY)
CAPTIONS = ["a large red circle moving left quickly", "a small blue square moving up slowly"]


def lora_generator(seed: int = 0) -> CausalWanBackbone:
    torch.manual_seed(seed)
    model = apply_lora(CausalWanBackbone(WanConfig(**TINY)), LoRAConfig(rank=2, alpha=4.0))
    with torch.no_grad():  # peft starts B at zero (the adapted model = the base); give the adapters an effect
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model.eval()


def test_the_causal_processors_call_the_adapted_projections_and_the_merge_reproduces_them():
    from peft.tuners.lora import LoraLayer

    model = lora_generator()
    attn = model.transformer.blocks[0].attn1
    assert isinstance(attn.to_q, LoraLayer) and isinstance(attn.to_out[0], LoraLayer)
    assert isinstance(model.transformer.blocks[0].attn2.to_k, LoraLayer)
    assert isinstance(attn.processor, CausalSelfAttnProcessor)  # still ours, now calling the LoRA layers
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n, _ in model.named_parameters()
                                                                          if "lora_" in n}
    merged = CausalWanBackbone(WanConfig(**TINY))
    merged.load_state_dict(merged_state_dict(model), strict=True)  # plain names, no peft needed to load
    base = CausalWanBackbone(WanConfig(**TINY))
    base.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k})
    g = torch.Generator().manual_seed(1)
    x, sigma, context = torch.randn(2, 3, 12, 8, 8, generator=g), torch.rand(2, 3, generator=g), torch.randn(2, 5, 46, generator=g)
    with torch.no_grad():
        adapted = model(x, sigma, context)
        assert (adapted - base(x, sigma, context)).abs().max() > 1e-2  # the adapters change the output ...
        torch.testing.assert_close(merged(x, sigma, context), adapted, rtol=1e-5, atol=1e-5)  # ... and merge exactly
        for path in (model, merged):  # the block-by-block KV-cache path too
            cache = path.new_cache(2, 8, 8, 3)
            out = path.forward_cached(x[:, :1], sigma[:, :1], context, cache, 0)
            torch.testing.assert_close(out, adapted[:, :1], rtol=1e-5, atol=1e-5)


def test_bad_target_modules_name_the_wan_linear_layers():
    with pytest.raises(ValueError, match="match no layer of the Wan backbone .*'to_q', 'to_k'"):
        apply_lora(CausalWanBackbone(WanConfig(**TINY)), LoRAConfig(rank=2, target_modules=["q_proj"]))


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lora_teacher") / "teacher.safetensors"
    save_file({f"model.transformer.{k}": v for k, v in WanBackbone(WanConfig(**TINY)).transformer.state_dict().items()},
              path)
    return str(path)


def test_only_adapters_train_and_the_export_is_merged_plain_weights(teacher_file, tmp_path):
    module = DistillationModule(
        objectives=[DMD(guidance_scale=2.0)], backbone=TINY, teacher_weights=teacher_file, num_frames=2, frame_size=16,
        generator_update_every=1, ema_start=None, generator_lr=1e-2, critic_lr=1e-2, seed=0,
        generator_lora={"rank": 2, "alpha": 2.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]},
        critic_lora=LoRAConfig(rank=2, target_modules=["attn1.to_q", "attn1.to_v"]))
    module.configure_model()
    before = {role: {k: v.clone() for k, v in getattr(module, role).state_dict().items()} for role in ("generator", "critic")}
    g = torch.Generator().manual_seed(0)
    batches = [{"caption": CAPTIONS, "pixels": torch.rand(2, 2, 3, 16, 16, generator=g) * 2 - 1} for _ in range(2)]
    L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
              default_root_dir=tmp_path).fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    for role in ("generator", "critic"):
        after = getattr(module, role).state_dict()
        moved = {k for k in after if not torch.equal(after[k], before[role][k])}
        assert moved and all("lora_" in k for k in moved), (role, sorted(moved)[:5])  # base weights unchanged
        assert any("lora_B" in k for k in moved)
    assert not any("attn2" in k and "lora_" in k for k in module.critic.state_dict())  # critic: its targets only

    plain = module.generator_weights()
    assert plain.keys() == CausalWanBackbone(WanConfig(**TINY)).state_dict().keys()
    path = export_weights(module, tmp_path / "weights.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert not any("lora_" in k or "base_layer" in k for k in f.keys())
        assert json.loads(f.metadata()["hparams"])["generator_lora"] is None
    loaded = load_trained_module(path)
    generator = causal_generator_from(loaded, use_ema=False)
    ckpt = tmp_path / "last.ckpt"  # a Lightning checkpoint keeps the adapters unmerged and rebuilds them
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "oneforcing_module": "DistillationModule"}, ckpt)
    resumed = causal_generator_from(load_trained_module(ckpt), use_ema=False)
    g = torch.Generator().manual_seed(2)
    x, sigma, context = torch.randn(1, 2, 12, 8, 8, generator=g), torch.rand(1, 2, generator=g), module.encode_prompts(CAPTIONS[:1])
    with torch.no_grad():
        adapted = module.generator(x, sigma, context)
        torch.testing.assert_close(generator(x, sigma, context), adapted, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(resumed(x, sigma, context), adapted, rtol=1e-5, atol=1e-5)


def test_lora_is_configured_in_yaml(tmp_path):
    from oneforcing.lightning_modules.checkpoints import module_from_config

    config = tmp_path / "lora.yaml"
    config.write_text("model:\n  class_path: oneforcing.lightning_modules.distillation.DistillationModule\n"
                      "  init_args:\n    objectives: []\n    backbone: " + json.dumps(TINY) + "\n"
                      "    generator_lora: {rank: 4, alpha: 8, target_modules: [attn1.to_q, to_out.0]}\n")
    module = module_from_config(config)
    assert module.generator_lora == LoRAConfig(rank=4, alpha=8.0, target_modules=["attn1.to_q", "to_out.0"])
    assert module.hparams.generator_lora == {"rank": 4, "alpha": 8.0, "target_modules": ["attn1.to_q", "to_out.0"],
                                             "dropout": 0.0}  # plain types: checkpoints load with weights_only
    module.configure_model()
    adapted = {n.split(".lora_A")[0] for n, _ in module.generator.named_parameters() if "lora_A" in n}
    assert adapted == {f"transformer.blocks.{i}.{m}" for i in range(2)
                       for m in ("attn1.to_q", "attn1.to_out.0", "attn2.to_out.0")}
