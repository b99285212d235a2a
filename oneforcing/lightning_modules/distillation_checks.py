"""The checks of a ``DistillationModule``'s configuration and of its training data: every problem found and reported
at once, with its fix, before any role is built or any weight read (the data's when fitting starts)."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn

from oneforcing.data.prompt_cache import PROMPT_MEMBER, pad_contexts
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan_folder import WanModelFolder
from oneforcing.objectives.base import ROLES
from oneforcing.sampling.schedules import check_sigmas
from oneforcing.sampling.streaming import SOLVERS
from oneforcing.toy.exact_teacher import ExactTeacher
from oneforcing.toy.text_encoder import ToyTextEncoder


def config_problems(module) -> list[str]:
    """Everything wrong with a DistillationModule's configuration, reported together before anything is built."""
    hp, problems = module.hparams, []
    if hp.solver not in SOLVERS:
        problems.append(f"solver={hp.solver!r} is not a sampler update; use one of {SOLVERS} (or null: the "
                        "objectives decide)")
    view = module.view()
    for o in module.objectives:
        unknown = set(o.roles) - set(ROLES)
        if unknown:
            problems.append(f"{type(o).__name__} declares unknown roles {sorted(unknown)}")
        if "teacher" in o.roles and not (hp.teacher_weights or hp.model_dir) and module.teacher is None:
            problems.append(f"{type(o).__name__} needs a teacher: set model.init_args.teacher_weights "
                            "(e.g. assets/toy_teacher.safetensors) or model.init_args.teacher (e.g. "
                            "oneforcing.toy.exact_bank.ExactToyTeacher)")
        problems += o.check(view)
    problems += given_teacher_problems(module)
    unknown = sorted(set(hp.activation_checkpointing) - {"generator", "critic"})
    if unknown:
        problems.append(f"activation_checkpointing names {unknown}; it takes the trainable roles 'generator' and "
                        "'critic' (the teacher runs without gradients)")
    elif "critic" in hp.activation_checkpointing and "critic" not in module.roles:
        problems.append("activation_checkpointing names 'critic', but no objective uses a critic")
    if hp.micro_batches < 1:
        problems.append(f"micro_batches={hp.micro_batches} must be >= 1 (1: no gradient accumulation)")
    if hp.critic_warmup < 0:
        problems.append(f"critic_warmup={hp.critic_warmup} must be >= 0 (critic-only iterations before the first "
                        "generator step)")
    if hp.generator_update_every < 1:
        problems.append(f"generator_update_every={hp.generator_update_every} must be >= 1 "
                        "(one generator step per that many critic steps)")
    problems += module.backbone_config.io_problems(module.codec, module.text_encoder)
    if hp.model_dir and WanModelFolder(hp.model_dir).root.exists():  # a missing folder fails when weights load
        problems += WanModelFolder(hp.model_dir).problems(
            backbone=module.backbone_config, latent_channels=module.codec.latent_channels,
            spatial_factor=module.codec.spatial_factor, text_dim=module.backbone_config.text_dim)
    if isinstance(module.text_encoder, ToyTextEncoder):
        try:
            module.text_encoder.tokenize(hp.negative_prompt)
        except ValueError as error:
            problems.append(f"negative_prompt: {error} (the toy's unconditional context is \"\")")
    if hp.gradient_window_frames is not None and not 0 < hp.gradient_window_frames <= hp.num_frames:
        problems.append(f"gradient_window_frames={hp.gradient_window_frames} must be in [1, num_frames={hp.num_frames}]")
    try:
        check_sigmas(module.step_sigmas, "denoising_steps (warped)")
        if module.first_block_sigmas:
            check_sigmas(module.first_block_sigmas, "first_block_steps (warped)")
        CausalWanBackbone.layout_for(hp.num_frames, hp.block_size, hp.first_block_size)
    except ValueError as error:
        problems.append(str(error))
    return problems


def given_teacher_problems(module) -> list[str]:
    """A teacher given as a module: not beside teacher_weights, a critic initialisation, and for an exact
    teacher a bank that fits the module's latents, contexts and negative prompt."""
    hp, problems = module.hparams, []
    if module.teacher is None:
        return problems
    if hp.teacher_weights:
        problems.append("both teacher and teacher_weights are set; give one (the critic and generator start "
                        "from critic_weights / generator_weights, e.g. assets/toy_teacher.safetensors)")
    if "critic" in module.roles and not (hp.critic_weights or hp.model_dir):
        problems.append("the critic has no initialisation: with model.init_args.teacher set, set "
                        "model.init_args.critic_weights (e.g. assets/toy_teacher.safetensors, the neural teacher)")
    if isinstance(module.teacher, ExactTeacher):
        context_shape = (module.text_encoder.max_tokens, module.text_encoder.dim) \
            if isinstance(module.text_encoder, ToyTextEncoder) else module.teacher.caption_embeddings.shape[1:]
        problems += module.teacher.io_problems(hp.num_frames, module.latent_shape(), context_shape)
        if not problems and isinstance(module.text_encoder, ToyTextEncoder):
            try:
                unconditional = int(module.teacher.caption_index(module.text_encoder([hp.negative_prompt]))[0]) == -1
            except ValueError:
                unconditional = False
            if not unconditional:
                problems.append(f"negative_prompt={hp.negative_prompt!r} is not the exact teacher's unconditional "
                                "prompt; set the teacher's unconditional_prompt to the same text")
    return problems


def cached_prompt_problems(module, datamodule, index: dict) -> tuple[list[str], torch.Tensor | None]:
    """The split's cached prompt embeddings (``oneforcing data prompts`` / ``encode``) against the text encoder's shape,
    and its cached negative prompt's (1, L, D) embedding when it is the module's ``negative_prompt`` and fits (None:
    the text encoder encodes it). A different cached negative prompt is a warning when a teacher's CFG reads it."""
    hp, problems = module.hparams, []
    length, dim = module.text_encoder.context_length, module.backbone_config.text_dim
    if PROMPT_MEMBER in {m.split(".")[0] for m in index.get("members", [])}:
        if (index.get("context_length"), index.get("context_dim")) != (length, dim):
            problems.append(f"the cached prompt embeddings are {index.get('context_length')} tokens of "
                            f"{index.get('context_dim')} (index.json) but the text encoder gives {length} of {dim}; "
                            "re-encode the data with this model's text encoder (oneforcing data prompts / encode "
                            "--model-dir)")
    cached = datamodule.cached_negative_prompt()
    if cached is None:
        return problems, None
    text, embedding = cached
    if text != hp.negative_prompt:
        if "teacher" in module.roles:  # only the teacher's CFG reads the negative prompt
            rank_zero_warn(f"The training data cache the negative prompt {text[:40]!r}... but "
                           f"model.init_args.negative_prompt is {hp.negative_prompt[:40]!r}...: the text "
                           "encoder encodes it for the teacher's CFG. Set negative_prompt to the cached text, or "
                           "re-run `oneforcing data prompts / encode --negative-prompt`.")
        return problems, None
    if embedding.shape[-1] == dim and embedding.shape[0] <= length:
        return problems, pad_contexts([embedding], length)  # (1, L, D)
    return problems, None
