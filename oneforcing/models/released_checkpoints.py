"""Checkpoints released by the reference trainers (Self-Forcing, Causal Forcing, One-Forcing) and Wan's own naming.

Those trainers save one ``torch.save`` dict per checkpoint (docs/real_wan_path.md): ``generator``,
``generator_ema`` and/or ``critic`` (One-Forcing's critic includes its GAN head), each the state dict of a
wrapper around Wan's original ``WanModel``: keys like ``model.blocks.0.self_attn.q.weight``, sometimes with
wrapper prefixes (``model._fsdp_wrapped_module.``, ``module.``, ``_checkpoint_wrapped_module.``,
``_orig_mod.``). This module maps Wan's original names to diffusers' ``WanTransformer3DModel`` names and back.

The map is a pure renaming (no tensor changes shape or layout): the modulation tables are (1, 6, dim) per block
and (1, 2, dim) in the head in both namings, in the same shift/scale/gate order. The one subtlety is the norms:
Wan's blocks apply ``norm1`` (self-attention), ``norm3`` (cross-attention; the only one with weights, when
``cross_attn_norm``) and ``norm2`` (FFN); diffusers numbers them in call order, so Wan's ``norm3`` is diffusers'
``norm2``. Every name was checked against the installed diffusers' ``WanTransformer3DModel.state_dict()`` and
against diffusers' own original-to-diffusers converter (``convert_wan_transformer_to_diffusers``; the test
compares the two).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# per-module renames (the parameter leaf, weight or bias, is kept)
_MODULES = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
_PARAMETERS = {"head.modulation": "scale_shift_table"}
_BLOCK_MODULES = {
    **{f"{wan}.{p}": f"{ours}.{q}" for wan, ours in (("self_attn", "attn1"), ("cross_attn", "attn2"))
       for p, q in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"), ("norm_q", "norm_q"),
                    ("norm_k", "norm_k"))},
    "norm3": "norm2",  # the cross-attention LayerNorm (see the module docstring)
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_BLOCK_PARAMETERS = {"modulation": "scale_shift_table"}
_LEAVES = ("weight", "bias")
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")

WRAPPER_INFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
WRAPPER_PREFIXES = ("module.", "model.")
ROLES = ("generator", "generator_ema", "critic", "model")
# One-Forcing's GAN head inside its critic (docs/algorithms.md §11): no counterpart in our backbone
DISCRIMINATOR_MARKERS = ("_cls_pred_branch", "_conv3d_cls_branch", "_gan_ca_blocks", "_register_tokens")
_ORIGINAL_ONLY = ("self_attn.", "cross_attn.", "head.head.", "time_projection.", "text_embedding.", "time_embedding.")


def _rename(key: str, modules: dict, parameters: dict, block_modules: dict, block_parameters: dict) -> str | None:
    match = _BLOCK.fullmatch(key)
    prefix, rest = (f"blocks.{match.group(1)}.", match.group(2)) if match else ("", key)
    table_modules, table_parameters = (block_modules, block_parameters) if match else (modules, parameters)
    if rest in table_parameters:
        return prefix + table_parameters[rest]
    module, _, leaf = rest.rpartition(".")
    if leaf in _LEAVES and module in table_modules:
        return f"{prefix}{table_modules[module]}.{leaf}"
    return None


def _inverse(table: dict) -> dict:
    return {v: k for k, v in table.items()}


def original_to_diffusers_key(key: str) -> str | None:
    """Wan's original name -> diffusers' (None when the key has no counterpart)."""
    return _rename(key, _MODULES, _PARAMETERS, _BLOCK_MODULES, _BLOCK_PARAMETERS)


def diffusers_to_original_key(key: str) -> str | None:
    """diffusers' name -> Wan's original (None when the key has no counterpart)."""
    return _rename(key, _inverse(_MODULES), _inverse(_PARAMETERS), _inverse(_BLOCK_MODULES), _inverse(_BLOCK_PARAMETERS))


def strip_leading(key: str, prefixes: tuple[str, ...]) -> str:
    """``key`` without any run of leading ``prefixes`` ('model.transformer.blocks.0' -> 'blocks.0')."""
    while (prefix := next((p for p in prefixes if key.startswith(p)), None)) is not None:
        key = key[len(prefix):]
    return key


def strip_wrappers(key: str) -> str:
    """'model._fsdp_wrapped_module.blocks.0...' / 'module.model.blocks.0...' -> 'blocks.0...'."""
    for infix in WRAPPER_INFIXES:
        key = key.replace(infix, "")
    return strip_leading(key, WRAPPER_PREFIXES)


def is_original_naming(state: dict) -> bool:
    """Whether a (wrapper-stripped) state dict uses Wan's original names."""
    return any(any(marker in key for marker in _ORIGINAL_ONLY) for key in state)


def to_diffusers(state: dict[str, torch.Tensor], source: str = "the checkpoint",
                 drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """An original-naming state dict (wrapper prefixes allowed) -> diffusers names. Keys containing one of
    ``drop`` are left out; any other key without a counterpart is an error listing them (first 10)."""
    out, unknown = {}, []
    for key, value in state.items():
        stripped = strip_wrappers(key)
        if any(marker in stripped for marker in drop):
            continue
        new = original_to_diffusers_key(stripped)
        if new is None:
            unknown.append(key)
        elif new in out:
            raise ValueError(f"{source}: two keys map to {new} (e.g. {key}); it holds more than one model.")
        else:
            out[new] = value
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} of {len(state)} keys have no counterpart in diffusers' WanTransformer3DModel "
            f"(first 10: {unknown[:10]}). The loader maps Wan2.1 text-to-video transformers in Wan's original naming "
            "(blocks.N.self_attn.q.weight, head.head.weight, ...) with wrapper prefixes model./module./"
            "_fsdp_wrapped_module.; other models (image-to-video, VACE, an extra head) are not supported."
        )
    return out


def to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers-named WanTransformer3DModel state dict -> Wan's original names (for tests and exports)."""
    out, unknown = {}, []
    for key, value in state.items():
        new = diffusers_to_original_key(key)
        (unknown.append(key) if new is None else out.__setitem__(new, value))
    if unknown:
        raise ValueError(f"{len(unknown)} keys have no original Wan name (first 10: {unknown[:10]}).")
    return out


def is_released_checkpoint(checkpoint) -> bool:
    """A reference trainer's dict of role state dicts (not a Lightning checkpoint, not a bare state dict)."""
    return (isinstance(checkpoint, dict) and "state_dict" not in checkpoint
            and any(isinstance(checkpoint.get(role), dict) for role in ROLES))


def load_released(path: str | Path) -> dict:
    """The raw dict of a released ``.pt`` file, read with ``weights_only=True`` (no arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Released checkpoint {path} does not exist.")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not is_released_checkpoint(checkpoint):
        raise ValueError(f"{path} is not a released reference checkpoint: it holds none of {list(ROLES)} as a state "
                         "dict (Lightning .ckpt and exported .safetensors files load without --released-config).")
    return checkpoint


def released_state(checkpoint: dict, role: str | None = None, source: str = "the checkpoint") -> tuple[str, dict]:
    """(role, diffusers-named state dict) of a released checkpoint's ``role`` (None: ``generator``, else
    ``generator_ema``, else ``model``). A critic's GAN-head keys are dropped (no counterpart here); any other key
    without a counterpart is an error."""
    present = [r for r in ROLES if isinstance(checkpoint.get(r), dict)]
    if role is None:
        role = next((r for r in ("generator", "generator_ema", "model") if r in present), None)
    if role not in present:
        raise ValueError(f"{source} holds no '{role}' weights; its state dicts are {present}.")
    drop = DISCRIMINATOR_MARKERS if role == "critic" else ()
    return role, to_diffusers(checkpoint[role], f"{source} [{role}]", drop=drop)
