"""DistillationModule: one LightningModule for every distillation recipe, composed of objective plugins.

Roles: ``generator`` (the causal student, trainable), ``teacher`` (frozen bidirectional real score),
``critic`` (trainable bidirectional fake score). The module builds the roles its objectives need in
``configure_model``, one AdamW per trainable role, and runs manual optimisation (docs/algorithms.md §14):

    every iteration i:
        if i % generator_update_every == 0 and i >= critic_warmup:
            generator step on Σ w·L_G (critic frozen), clip, step, EMA
        critic step on Σ w·L_critic (fresh no-grad roll-out), clip, step

Step budget: ``trainer.max_steps`` counts *iterations*, as the papers do. Lightning counts optimizer steps, so
exactly one optimizer step per iteration goes through Lightning (the critic's when there is a critic, else
the generator's); the other role's optimizer steps directly. Randomness: a rank-shared generator draws what
ranks must agree on (exit steps), a per-rank generator draws noise and σ; both are checkpointed, with the
iteration and the EMA, so a resumed run continues exactly.

This file is the method. Around it, each in its own module: the config and data checks (``distillation_checks``),
the roles and how the engines see them (``roles``), the EMA (``ema``), the micro-batch split (``micro_batches``),
the random streams (``randomness``), and what differs between engines in a role's step (``oneforcing.engines.steps``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Sequence

import lightning as L
import torch
from torch import nn

from oneforcing.data.datamodule import ShardDataModule
from oneforcing.data.prompt_cache import PROMPT_MEMBER, pad_contexts
from oneforcing.engines.deepspeed import EngineRole, FrozenRole
from oneforcing.engines.steps import role_steps_of
from oneforcing.lightning_modules import roles as role_building
from oneforcing.lightning_modules.components import LatentCodec, TextEncoder
from oneforcing.lightning_modules.distillation_checks import cached_prompt_problems, config_problems
from oneforcing.lightning_modules.ema import update_ema
from oneforcing.lightning_modules.micro_batches import split_batch
from oneforcing.lightning_modules.nonfinite import NonFiniteGuard
from oneforcing.lightning_modules.randomness import StepRandomness
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.flow_matching import warped_step_sigmas
from oneforcing.models.lora import LoRAConfig, as_lora_config, has_lora, merged_state_dict
from oneforcing.models.sharded import full_state_dict, is_fsdp2
from oneforcing.models.wan import WanBackbone, WanConfig
from oneforcing.models.wan_components import wan_components
from oneforcing.objectives.base import ModuleView, Objective, StepContext
from oneforcing.objectives.rollout import gradient_window, self_forcing_rollout
from oneforcing.sampling.streaming import StreamingSampler, per_prompt_generators
from oneforcing.toy.codec import SpaceToDepthCodec
from oneforcing.toy.text_encoder import ToyTextEncoder


def _config(value: WanConfig | dict | None, default: WanConfig) -> WanConfig:
    return WanConfig(**value) if isinstance(value, dict) else (value or default)


class DistillationModule(L.LightningModule):
    """Distils a causal few-step student from a teacher with the given objectives.

    Args:
        objectives: the objective plugins (e.g. ``[DMD]``, ``[DMD, GAN]``, ``[TrajectoryDistillation]``).
        backbone: shapes of the generator and the critic (toy defaults).
        teacher_backbone: shapes of the teacher (default: ``backbone``).
        teacher_weights: teacher weights (exported safetensors, Lightning ckpt or diffusers folder).
        teacher: a ready teacher module with the backbone's call signature instead of ``teacher_weights``, e.g.
            the toy world's exact teacher (``oneforcing.toy.exact_bank.ExactToyTeacher``). Objectives with the
            teacher role need exactly one of the two. It is used frozen and is neither a hyper-parameter nor
            in checkpoints (its bank is rebuilt from its config). With it, the generator starts from
            ``generator_weights`` (random without) and a critic from ``critic_weights``, which is then
            required: a random critic's fake score makes DMD's first updates meaningless.
        generator_weights: generator initialisation (default: the teacher's weights, same shapes needed).
        critic_weights: critic initialisation (default: the teacher's weights).
        codec, text_encoder: as for the teacher (toy defaults; with ``model_dir``, its Wan VAE and umT5).
        model_dir: a Wan2.1 diffusers folder (``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``), the one
            setting that points the module at a model: the generator, critic and teacher start from its
            ``transformer/`` unless ``generator_weights`` / ``critic_weights`` / ``teacher_weights`` say otherwise,
            and the codec and text encoder read its ``vae/``, ``text_encoder/`` and ``tokenizer/`` unless given.
            When the folder exists its layout and configs are checked against the backbone when the module is
            built; a missing folder fails when the weights load (``configure_model``).
        generator_lora, critic_lora: LoRA adapters (``oneforcing.models.lora.LoRAConfig``: rank, alpha,
            target_modules) on the generator / critic after their weights load; only the adapters train, and
            ``generator_weights()`` and the export merge them into plain weights. Needs peft (the ``real`` extra).
        num_frames, frame_size: latent frames per roll-out and pixel frame size (side, or (height, width)).
        block_size, first_block_size: the generator's block layout (first-frame enhancement: e.g. 4 then 1).
        denoising_steps: nominal steps per block, warped with ``warp_shift`` (e.g. [1000] or [1000, 750, 500, 250]).
        first_block_steps: nominal steps of the first block (default: ``denoising_steps``).
        gradient_window_frames: frames (at the tail) whose exit step carries gradient (None: all).
        context_sigma: σ of the roll-out's context pass.
        cache_gradient: let a later block's gradient reach earlier blocks through the cached keys and values
            (straight through to their exit-step K/V projections), as the official Self-Forcing / One-Forcing
            roll-out does (docs/algorithms.md §4); off by default: the cache is detached between blocks.
        negative_prompt: the text whose embedding is the unconditional CFG branch (DMD's real score, the
            consistency teacher). The Wan references use Wan's standard negative prompt
            (``oneforcing.models.text_encoders.WAN_NEGATIVE_PROMPT``); the toy uses "" (all-zero context).
        generator_lr, critic_lr, betas, weight_decay: AdamW of each trainable role.
        generator_update_every: one generator step per this many iterations (critic every iteration).
        critic_warmup: iterations of critic steps only before the first generator step (0: none, as the references).
            A critic initialised from a teacher models the data, not the generator's samples, so the first DMD
            gradients carry its own error; the warm-up fits it to the generator's samples first.
        generator_grad_clip, critic_grad_clip: max gradient norms.
        ema_decay, ema_start: EMA of the generator, created at iteration ``ema_start`` (None: no EMA).
        seed: seeds the module's random generators.
        nonfinite_patience: consecutive non-finite losses skipped before the run stops with an error.
        micro_batches: gradient accumulation: each role's step accumulates the gradients of this many equal parts
            of the batch (one part's activations alive at a time), so the data's ``batch_size`` per rank is the
            effective batch and must be a multiple. The step's exit steps are drawn once and shared by its
            micro-batches (as by the ranks); noise and σ are drawn per micro-batch. ``max_steps`` still counts
            iterations.
        activation_checkpointing: the trainable roles ("generator", "critic") whose Wan blocks recompute their
            activations in backward instead of keeping them (off by default): the full-sequence passes and the
            roll-out's gradient-carrying KV-cached calls (recomputed over the cache as their forward saw it; not
            with ``cache_gradient``, whose K/V leave the block).
        solver: the streaming sampler's update for ``generate`` and the commands: "renoise" (few-step students)
            or "euler" (a diffusion model's ODE); None: the objectives decide (AR diffusion: "euler"). The resolved
            value is recorded, so an export samples the same way without its objectives.
    """

    def __init__(
        self,
        objectives: list[Objective],
        backbone: WanConfig | dict | None = None,
        teacher_backbone: WanConfig | dict | None = None,
        teacher_weights: str | None = None,
        generator_weights: str | None = None,
        critic_weights: str | None = None,
        model_dir: str | None = None,
        teacher: nn.Module | None = None,
        codec: LatentCodec | None = None,
        text_encoder: TextEncoder | None = None,
        num_frames: int = 12,
        frame_size: int | tuple[int, int] = 32,
        block_size: int = 1,
        first_block_size: int | None = None,
        denoising_steps: Sequence[float] = (1000.0,),
        first_block_steps: Sequence[float] | None = None,
        warp_shift: float = 5.0,
        gradient_window_frames: int | None = None,
        context_sigma: float = 0.0,
        cache_gradient: bool = False,
        negative_prompt: str = "",
        generator_lr: float = 1e-5,
        critic_lr: float = 1e-5,
        betas: tuple[float, float] = (0.0, 0.999),
        weight_decay: float = 0.01,
        generator_update_every: int = 5,
        critic_warmup: int = 0,
        generator_grad_clip: float = 10.0,
        critic_grad_clip: float = 10.0,
        ema_decay: float = 0.99,
        ema_start: int | None = 50,
        seed: int = 0,
        nonfinite_patience: int = 20,
        micro_batches: int = 1,
        activation_checkpointing: Sequence[str] = (),
        generator_lora: LoRAConfig | dict | None = None,
        critic_lora: LoRAConfig | dict | None = None,
        solver: str | None = None,
    ) -> None:  # pragma: no mutate block (save_hyperparameters reads this frame; mutmut's trampoline hides it)
        super().__init__()
        self.automatic_optimization = False
        self.backbone_config = _config(backbone, WanConfig())
        self.teacher_config = _config(teacher_backbone, self.backbone_config)
        self.save_hyperparameters(ignore=["objectives", "codec", "text_encoder", "teacher"])
        self.hparams["backbone"] = dataclasses.asdict(self.backbone_config)  # plain types: loads with weights_only
        self.hparams["teacher_backbone"] = dataclasses.asdict(self.teacher_config)
        self.hparams["denoising_steps"] = list(denoising_steps)
        self.hparams["first_block_steps"] = list(first_block_steps) if first_block_steps else None
        self.hparams["activation_checkpointing"] = list(activation_checkpointing)
        self.hparams["solver"] = solver or next((o.solver for o in objectives if o.solver is not None), "renoise")
        self.generator_lora, self.critic_lora = as_lora_config(generator_lora), as_lora_config(critic_lora)
        for name, lora in (("generator_lora", self.generator_lora), ("critic_lora", self.critic_lora)):
            self.hparams[name] = dataclasses.asdict(lora) if lora else None  # plain types: loads with weights_only
        if model_dir:
            wan_codec, wan_text = wan_components(model_dir)
            codec, text_encoder = codec or wan_codec, text_encoder or wan_text
        self.objectives = nn.ModuleList(objectives)
        self.codec = codec or SpaceToDepthCodec.matching(self.backbone_config.in_channels)  # the toy codec
        self.text_encoder = text_encoder or ToyTextEncoder()
        self.step_sigmas = warped_step_sigmas(denoising_steps, warp_shift)
        self.first_block_sigmas = warped_step_sigmas(first_block_steps, warp_shift) if first_block_steps else None
        self.roles = {"generator"} | {role for o in objectives for role in o.roles}
        self.teacher: nn.Module | None = teacher  # a given teacher (no persistent state), or built in configure_model
        self._check_config()
        self.generator: CausalWanBackbone | None = None
        self.critic: WanBackbone | None = None
        self.generator_ema: CausalWanBackbone | None = None
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema_initialised", torch.zeros((), dtype=torch.bool))
        self.randomness = StepRandomness(seed)
        self.shared_rng, self.rank_rng = self.randomness.shared, self.randomness.rank
        self.nonfinite = NonFiniteGuard(nonfinite_patience)

    # --- configuration ----------------------------------------------------------------------------------
    def _check_config(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ValueError("Invalid DistillationModule config:\n  - " + "\n  - ".join(problems))

    def configure_model(self) -> None:
        if self.generator is None:
            self.build_roles()

    def build_roles(self, load_weights: bool = True) -> None:
        """The roles the objectives need (``oneforcing.lightning_modules.roles``); weights unless ``load_weights`` is
        False (the meta-device plan)."""
        role_building.build_roles(self, load_weights)

    def shard_units(self) -> list[nn.Module]:
        """FSDP2's units of every role (``oneforcing.engines.fsdp2``)."""
        return role_building.shard_units(self)

    def engine_roles(self) -> list[EngineRole]:
        """DeepSpeed's engines, one per trainable role (``oneforcing.engines.deepspeed``)."""
        return role_building.engine_roles(self)

    def frozen_roles(self) -> list[FrozenRole]:
        """The frozen roles ZeRO-3 partitions beside the engines."""
        return role_building.frozen_roles(self)

    def view(self) -> ModuleView:
        """What the objectives' checks read of this module."""
        return ModuleView(objectives=tuple(self.objectives), num_layers=self.backbone_config.num_layers,
                          step_sigmas=tuple(self.step_sigmas), first_block_sigmas=self.first_block_sigmas,
                          has_ema=self.hparams.ema_start is not None)

    @property
    def generator_objectives(self) -> list[Objective]:
        return [o for o in self.objectives if o.has_generator_loss]

    @property
    def critic_objectives(self) -> list[Objective]:
        return [o for o in self.objectives if o.has_critic_loss]

    def configure_optimizers(self):
        hp = self.hparams
        optimizers = [torch.optim.AdamW(self.generator.parameters(), lr=hp.generator_lr, betas=hp.betas,
                                        weight_decay=hp.weight_decay)]
        if self.critic_objectives:
            shared = [p for o in self.objectives if o.optimizer_settings() is None for p in o.parameters()]
            optimizers.append(torch.optim.AdamW(list(self.critic.parameters()) + shared, lr=hp.critic_lr,
                                                betas=hp.betas, weight_decay=hp.weight_decay))
            for objective in self.objectives:  # heads with their own optimizer step together with the critic's
                settings = objective.optimizer_settings()
                if settings is not None:
                    optimizers.append(torch.optim.AdamW(objective.parameters(), weight_decay=hp.weight_decay,
                                                        **settings))
        return optimizers

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        index = getattr(datamodule, "train_index", None) if datamodule is not None else None
        view = self.view()
        problems = [p for o in self.objectives for p in o.check_data(index, view)]
        if isinstance(datamodule, ShardDataModule) and index is not None:
            problems += self._adopt_cached_prompts(datamodule, index)
        if problems:
            raise ValueError("The training data do not fit the objectives:\n  - " + "\n  - ".join(problems))

    def on_train_start(self) -> None:
        # after any checkpoint is restored: strategies that restore after setup (FSDP2) do so after on_fit_start
        self.randomness.seed(self.global_rank)

    def _adopt_cached_prompts(self, datamodule: ShardDataModule, index: dict) -> list[str]:
        """The split's cached prompt embeddings checked against the text encoder, and its cached negative prompt
        taken as the unconditional context when it is this module's (no text encoder call)."""
        problems, embedding = cached_prompt_problems(self, datamodule, index)
        if embedding is not None:
            self._negative_embedding = embedding.to(self.device)
        return problems

    # --- one iteration ----------------------------------------------------------------------------------
    def latents_of(self, batch: dict) -> torch.Tensor | None:
        if "latents" in batch:
            return batch["latents"]
        return self.codec.encode(batch["pixels"]) if "pixels" in batch else None

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder(prompts).to(self.device)

    def batch_context(self, batch: dict) -> torch.Tensor:
        """(B, L, D) contexts of the batch's captions: its cached ``prompt_embedding`` (padded back to the text
        encoder's length) when the data carry one, else the text encoder's."""
        if PROMPT_MEMBER in batch:
            return pad_contexts(batch[PROMPT_MEMBER], self.text_encoder.context_length).to(self.device)
        return self.encode_prompts(batch["caption"])

    def uncond_context(self, batch_size: int) -> torch.Tensor:
        """(B, L, D) embedding of ``negative_prompt``, encoded once and repeated (the references cache it too)."""
        if self._negative_embedding is None:  # or cached by the data (on_fit_start)
            self._negative_embedding = self.encode_prompts([self.hparams.negative_prompt]).detach()
        self._negative_embedding = self._negative_embedding.to(self.device)
        return self._negative_embedding.expand(batch_size, *self._negative_embedding.shape[1:])

    _negative_embedding: torch.Tensor | None = None

    def latent_shape(self) -> tuple[int, int, int]:
        size = self.hparams.frame_size
        height, width = (size, size) if isinstance(size, int) else size
        f = self.codec.spatial_factor
        return self.codec.latent_channels, height // f, width // f

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.rank_rng).to(self.device)

    def _step_context(self, batch: dict, context: torch.Tensor, uncond_context: torch.Tensor,
                      draws: list[tuple[int, int | None]] | None = None) -> StepContext:
        """The objectives' view of one (micro-)batch. ``draws``: the step's exit steps, shared by its micro-batches:
        the k-th roll-out of each micro-batch uses the k-th draw (made by the first micro-batch that needs it)."""
        hp = self.hparams
        window = gradient_window(hp.num_frames, hp.gradient_window_frames)
        draws = [] if draws is None else draws
        calls = itertools.count()

        def rollout(grad: bool):
            call = next(calls)
            if call == len(draws):
                draws.append((int(torch.randint(len(self.step_sigmas), (), generator=self.shared_rng)),
                              int(torch.randint(len(self.first_block_sigmas), (), generator=self.shared_rng))
                              if self.first_block_sigmas else None))
            exit_index, first_exit = draws[call]
            with torch.set_grad_enabled(grad):
                return self_forcing_rollout(self.generator, context, self._noise, hp.num_frames, self.latent_shape(),
                                            self.step_sigmas, exit_index, self.first_block_sigmas, first_exit,
                                            window, grad=grad, context_sigma=hp.context_sigma,
                                            cache_gradient=hp.cache_gradient)

        return StepContext(
            batch=batch, context=context, uncond_context=uncond_context,
            real_latents=self.latents_of(batch),
            models={"generator": self.generator, "teacher": self.teacher, "critic": self.critic,
                    "generator_ema": self.generator_ema},
            rng=self.rank_rng, iteration=int(self.iteration), rollout_fn=rollout,
        )

    def step_loss(self, side: str, batch: dict, context: torch.Tensor, uncond_context: torch.Tensor | None,
                  draws: list[tuple[int, int | None]] | None = None) -> tuple[torch.Tensor, dict]:
        """Σ weight · term of the ``side`` ("generator" or "critic") objectives on one (micro-)batch (``Objective.weighted``),
        and their logs."""
        objectives = self.generator_objectives if side == "generator" else self.critic_objectives
        return self._sum_losses(objectives, self._step_context(batch, context, uncond_context, draws), side)

    def _sum_losses(self, objectives: list[Objective], ctx: StepContext, side: str) -> tuple[torch.Tensor, dict]:
        total, logs = 0.0, {}
        for objective in objectives:
            loss, metrics = getattr(objective, f"{side}_loss")(ctx)
            total = total + objective.weighted(loss)
            logs.update({f"{side}/{k}": v for k, v in metrics.items()})
        logs[f"{side}/loss"] = total.detach()
        return total, logs

    def _accumulate(self, micro_batches: list[tuple[dict, torch.Tensor, torch.Tensor]], side: str) -> tuple[bool, dict]:
        """Backward of Σ_k L(micro-batch k) / K, one micro-batch (batch, context, unconditional context) at a time
        (its graph freed before the next), with the step's exit steps shared by the micro-batches. A micro-batch
        with a non-finite loss is skipped (counted by the guard). Returns whether any backward ran, and the logs
        averaged over the micro-batches."""
        draws, logs, backward, synced = [], {}, False, False
        steps = None  # the engine's role steps, looked up once, when a backward needs them
        for k, (batch, context, uncond) in enumerate(micro_batches):
            loss, step_logs = self.step_loss(side, batch, context, uncond, draws)
            for key, value in step_logs.items():
                logs[key] = logs.get(key, 0.0) + value.detach() / len(micro_batches)
            if self.nonfinite.is_finite(self, loss, side) and loss.requires_grad:
                last = k == len(micro_batches) - 1
                if not last:
                    steps = steps or self._steps()
                with contextlib.nullcontext() if last else steps.no_gradient_sync():
                    self.manual_backward(loss / len(micro_batches))
                backward, synced = True, last
        if backward and not synced:
            (steps or self._steps()).sync_accumulated_gradients(self)
        return backward, logs

    def _steps(self):
        """What differs between engines in a role's step (``oneforcing.engines.steps``)."""
        return role_steps_of(self.trainer.strategy)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        hp = self.hparams
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        generator_opt, critic_opt = optimizers[0], (optimizers[1] if len(optimizers) > 1 else None)
        head_opts = optimizers[2:]  # objectives' own optimizers (e.g. a GAN head), stepped with the critic's
        iteration = int(self.iteration)
        logs = {}
        # the unconditional context is the teacher's CFG branch: without a teacher it is never encoded
        micro_batches = [(part, self.batch_context(part),
                          self.uncond_context(len(part["caption"])) if "teacher" in self.roles else None)
                         for part in split_batch(batch, hp.micro_batches)]
        steps, fsdp2 = self._steps(), is_fsdp2(self.generator)
        self._reshard_roles()
        generator_due = self.generator_objectives and (
            critic_opt is None or iteration % hp.generator_update_every == 0 and iteration >= hp.critic_warmup)
        if generator_due:
            role_building.freeze(self.critic, self.objectives, fsdp2=fsdp2)  # the critic (and its heads) stays
            generator_opt.zero_grad(set_to_none=True)
            finite, step_logs = self._accumulate(micro_batches, "generator")
            # counted by Lightning only when no critic steps every iteration; without gradients it changes nothing
            norm = steps.clip_and_step(generator_opt, hp.generator_grad_clip, counted=critic_opt is None, clip=finite)
            if finite:
                logs["generator/grad_norm"] = norm
            generator_opt.zero_grad(set_to_none=True)
            role_building.unfreeze(self.critic, self.objectives, fsdp2=fsdp2)
            if finite and self.generator_ema is not None and iteration >= hp.ema_start:
                update_ema(self.generator_ema, self.generator, self.ema_initialised, hp.ema_decay)
            logs.update(step_logs)
        if critic_opt is not None:
            self._reshard_roles()
            role_building.freeze(self.generator, fsdp2=fsdp2)  # the critic step never updates the generator
            for opt in (critic_opt, *head_opts):
                opt.zero_grad(set_to_none=True)
            backward, step_logs = self._accumulate(micro_batches, "critic")
            # the critic's step is counted by Lightning, its heads' are not (one counted step per iteration);
            # without gradients (a skipped step) they change nothing
            for name, opt in (("critic", critic_opt), *((f"head{i}", o) for i, o in enumerate(head_opts))):
                norm = steps.clip_and_step(opt, hp.critic_grad_clip, counted=opt is critic_opt, clip=backward)
                if backward:
                    logs[f"{name}/grad_norm"] = norm
            for opt in (critic_opt, *head_opts):
                opt.zero_grad(set_to_none=True)
            role_building.unfreeze(self.generator, fsdp2=fsdp2)
            logs.update(step_logs)
        self.iteration += 1
        if batch.get("num_skipped") is not None:
            logs["data/skipped_samples"] = batch["num_skipped"].float()
        logs["train/nonfinite_skipped"] = torch.tensor(float(self.nonfinite.skipped))
        self.log_dict({k: v.float() for k, v in logs.items()}, on_step=True, batch_size=len(batch["caption"]))
        self.log("iteration", self.iteration.float(), prog_bar=True, batch_size=len(batch["caption"]))

    def _reshard_roles(self) -> None:
        role_building.reshard_all(self.generator, self.generator_ema, self.critic, self.teacher)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Sampling happens in the SampleVideoLogger callback; nothing to compute per batch."""

    # --- checkpoints ------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["oneforcing_module"] = type(self).__name__
        checkpoint["oneforcing_rng"] = self.randomness.state(self.trainer.world_size if self._trainer is not None else 1)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.randomness.restore(checkpoint.get("oneforcing_rng"))

    # --- sampling ---------------------------------------------------------------------------------------
    @property
    def generator_config(self) -> WanConfig:
        return self.backbone_config

    @property
    def has_ema(self) -> bool:
        """Whether an EMA of the generator exists and has been initialised (``ema_start`` reached)."""
        return self.generator_ema is not None and bool(self.ema_initialised)

    def generator_weights(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The generator's (or its EMA's) whole state dict; LoRA adapters are merged into plain weights. A
        collective when the roles are sharded (FSDP2): every rank must call it."""
        source = self.generator_ema if use_ema and self.has_ema else self.generator
        state = full_state_dict(source)
        return merged_state_dict(source, state) if has_lora(source) else state

    @property
    def solver(self) -> str:
        """The sampler update of this generator ("euler": a diffusion model's ODE; "renoise": few-step students)."""
        return self.hparams.solver

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, num_steps: int | None = None,
                 guidance_scale: float | None = None, use_ema: bool = True) -> torch.Tensor:
        """Pixel videos (B, F, 3, H, W) from the streaming sampler with the training schedule."""
        source = self.generator_ema if use_ema and self.has_ema else self.generator
        sampler = StreamingSampler(source, self.step_sigmas, first_block_sigmas=self.first_block_sigmas,
                                   solver=self.solver)
        latents = sampler.sample(self.encode_prompts(prompts), self.hparams.num_frames, self.latent_shape(),
                                 per_prompt_generators(seed, len(prompts)))
        return self.codec.decode(latents)
