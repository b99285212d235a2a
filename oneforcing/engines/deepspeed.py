"""DeepSpeed ZeRO with one engine per trainable role (docs/engines.md).

Lightning's own ``DeepSpeedStrategy`` holds one engine and one optimizer and refuses the CPU, so it cannot train a
generator and a critic. This strategy builds one ``deepspeed.initialize`` engine per optimizer the module
configures (the generator's; the critic's with the objectives' parameters that train beside it), from the same
ZeRO settings. The frozen roles (a Wan teacher, the generator's EMA: ``frozen_roles()``) are replicated under
ZeRO-1/2; under ZeRO-3 each is partitioned too, by an inference-only engine (no optimizer: DeepSpeed's parameter
partitioning and its gather-on-forward hooks), the teacher in the engines' precision, the EMA in fp32 (its
average would round away in bf16) and partitioned exactly as the generator is, so that its update is local.

The module's code is that of DDP: its forward calls go to the role modules (their ZeRO hooks gather partitioned
parameters), ``manual_backward`` runs the backward of the engine whose role trains in that step (the other role
is frozen, so no engine but one sees gradients: DeepSpeed issue 4923, a GAN's generator loss flowing through
the critic's ZeRO-2 gradient hooks, breaks otherwise), and the optimizer step is that engine's ``step()``, which
clips to the role's gradient norm and reduces gradients in fp32.

Checkpoints are folders: one DeepSpeed checkpoint per engine (``<path>/<role>/``, every rank its own partition)
and ``<path>/trainer.pt`` (rank 0: Lightning's loops and callbacks, the module's state outside the engines),
written into ``<path>.partial`` and swapped in once every rank has finished, so a killed save leaves the
previous checkpoint. ``oneforcing export`` / ``sample`` / ``evaluate`` read such a folder back whole.

The first ``deepspeed.initialize`` on a CPU JIT-compiles DeepSpeed's shared-memory communication op (ninja and a
C++ compiler; about 2 minutes on 2 cores, then cached in ``TORCH_EXTENSIONS_DIR``): ``make`` builds it with the
environment (docs/engines.md).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from oneforcing.engines.fsdp2 import remove_path, swap_in, write_failure
from oneforcing.engines.steps import RoleSteps
from oneforcing.models.sharded import full_state_dict, load_full_state_dict

ENGINE_TAG = "state"  # each engine saves into its own folder under this tag (no shared `latest` file)
TRAINER_FILE = "trainer.pt"


@dataclass
class EngineRole:
    """A trainable role as an engine sees it: its name, the module holding exactly its optimizer's parameters and
    the gradient norm it is clipped to, and the backwards it accumulates per step. ``prefixes`` name the module's parameters in the LightningModule: one
    prefix for a plain role, one per child when ``module`` is a ``ModuleList`` of several modules."""

    name: str
    module: nn.Module
    max_grad_norm: float
    prefixes: tuple[str, ...]
    micro_batches: int = 1  # backwards accumulated before each step (the module's gradient accumulation)


@dataclass
class FrozenRole:
    """A frozen role with parameters (no optimizer), as ZeRO-3 partitions it: its state-dict prefix in the
    LightningModule, the module, and whether it stays fp32 under DeepSpeed's bf16 mode (an EMA's average)."""

    prefix: str
    module: nn.Module
    fp32: bool = False


class DeepSpeedStrategy(DDPStrategy):
    """ZeRO-2 or ZeRO-3 for every trainable role, one DeepSpeed engine each.

    Args:
        stage: ZeRO stage (1: optimizer state partitioned; 2: and gradients; 3: and parameters).
        offload_optimizer: keep the optimizer state (and its step) in CPU memory.
        offload_params: stage 3 only: keep the partitioned parameters in CPU memory between uses.
        bf16: DeepSpeed's bf16 mode: bf16 parameters and gradients, fp32 master weights in the optimizer (needs
            ``trainer.precision: bf16-mixed`` for the fp32 inputs of the Wan embedders).
        config: further DeepSpeed config entries, merged over the ones built from these settings (e.g.
            ``{"zero_optimization": {"reduce_bucket_size": 5e7}}``).
        process_group_backend, timeout: as for Lightning's DDP (gloo on CPU, nccl on GPU).
    """

    strategy_name = "zero2"

    def __init__(self, stage: Literal[1, 2, 3] = 2, offload_optimizer: bool = False, offload_params: bool = False,
                 bf16: bool = False, config: dict | None = None, process_group_backend: str | None = None,
                 timeout: timedelta | None = default_pg_timeout) -> None:
        problems = []
        if stage not in (1, 2, 3):
            problems.append(f"stage={stage!r} must be 1, 2 or 3")
        if offload_params and stage != 3:
            problems.append(f"offload_params needs stage 3 (got stage {stage}): only ZeRO-3 partitions the parameters")
        if config is not None and not isinstance(config, dict):
            problems.append(f"config must be a mapping of DeepSpeed settings, got {type(config).__name__}")
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                    "gradient_clipping", "optimizer", "scheduler"):
            if isinstance(config, dict) and key in config:
                problems.append(f"config[{key!r}] is set by the module (batch size from the data, clipping from its "
                                "*_grad_clip, AdamW from its *_lr settings); remove it")
        zero = (config or {}).get("zero_optimization", {}) if isinstance(config, dict) else {}
        # the frozen roles' ZeRO-3 engines must hold plain partitions laid out as the generator's (the EMA update)
        for key, bad in (("zero_hpz_partition_size", lambda v: v > 1), ("zero_quantized_weights", bool),
                         ("zero_quantized_nontrainable_weights", bool)):
            if key in zero and bad(zero[key]):
                problems.append(f"config['zero_optimization'][{key!r}] = {zero[key]!r} is not supported: the EMA's "
                                "partitions are updated in place from the generator's, which needs plain, unquantized "
                                "partitions over all ranks; remove it")
        if isinstance(zero.get("offload_param"), dict) and zero["offload_param"].get("device") == "nvme":
            problems.append("config['zero_optimization']['offload_param'] on nvme is not supported (the EMA's partitions "
                            "are updated in place); use offload_params: true (CPU memory)")
        if problems:
            raise ValueError("Invalid DeepSpeedStrategy settings:\n  - " + "\n  - ".join(problems))
        super().__init__(process_group_backend=process_group_backend, timeout=timeout)
        self.stage, self.offload_optimizer, self.offload_params = stage, offload_optimizer, offload_params
        self.bf16, self.extra_config = bf16, dict(config or {})
        self.engines: dict[str, Any] = {}  # role name -> DeepSpeedEngine
        self.frozen_engines: dict[str, Any] = {}  # state-dict prefix of a ZeRO-3 partitioned frozen role -> engine
        self._roles: list[EngineRole] = []
        self._pending: set[str] = set()  # engines with a backward since their last step

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        for stage in (2, 3):
            strategy_registry.register(f"zero{stage}", cls, description=f"DeepSpeed ZeRO-{stage}, an engine per role",
                                       stage=stage)
            strategy_registry.register(f"zero{stage}_offload", cls, stage=stage, offload_optimizer=True,
                                       offload_params=stage == 3,
                                       description=f"DeepSpeed ZeRO-{stage}, optimizer state in CPU memory")
            strategy_registry.register(f"zero{stage}_bf16", cls, stage=stage, bf16=True,
                                       description=f"DeepSpeed ZeRO-{stage}, bf16 parameters, fp32 master weights")

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True  # the engines restore their own state: they must exist first

    def setup_environment(self) -> None:
        precision = self.precision_plugin.precision
        if self.bf16 and precision not in ("bf16-mixed", "bf16-true"):
            raise ValueError(f"DeepSpeed bf16 needs trainer.precision bf16-mixed (got {precision!r}): diffusers' Wan "
                             "embedders feed fp32 inputs to the bf16 weights, which autocast reconciles. Set "
                             "--trainer.precision bf16-mixed or use strategy zero2 / zero3 (fp32).")
        super().setup_environment()

    def setup(self, trainer) -> None:
        module = self.lightning_module
        if not hasattr(module, "engine_roles"):
            raise TypeError(f"DeepSpeedStrategy builds an engine per role a LightningModule lists in engine_roles(); "
                            f"{type(module).__name__} has none. Use strategy 'ddp' for it.")
        self.accelerator.setup(trainer)
        self.model_to_device()
        if trainer.state.fn != TrainerFn.FITTING:
            return
        self.setup_optimizers(trainer)
        roles = module.engine_roles()
        if len(roles) != len(self.optimizers):
            raise RuntimeError(f"{type(module).__name__}.engine_roles() lists {len(roles)} roles for "
                               f"{len(self.optimizers)} optimizers; DeepSpeed needs one engine per optimizer.")
        import deepspeed

        engines, optimizers = {}, []
        for role, optimizer in zip(roles, self.optimizers):
            engine, ds_optimizer, _, _ = deepspeed.initialize(
                model=role.module, optimizer=optimizer, config=self.engine_config(role), dist_init_required=False)
            engines[role.name] = engine
            optimizers.append(ds_optimizer)
        self.engines, self._roles, self.optimizers = engines, roles, optimizers
        if self.stage == 3 and hasattr(module, "frozen_roles"):
            for frozen in module.frozen_roles():  # partitioned, no optimizer
                engine, *_ = deepspeed.initialize(model=frozen.module, dist_init_required=False,
                                                  config=self.frozen_config(bf16=self.bf16 and not frozen.fp32))
                self.frozen_engines[frozen.prefix] = engine

    def _base_config(self, bf16: bool) -> dict:
        zero: dict[str, Any] = {"stage": self.stage}
        if self.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if self.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        return {
            "train_micro_batch_size_per_gpu": 1,  # only reported: DeepSpeed's data loader is not used
            "gradient_accumulation_steps": 1,
            "zero_optimization": zero,
            "bf16": {"enabled": bf16},
            "steps_per_print": 2**62,
            "wall_clock_breakdown": False,
        }

    def _merged(self, config: dict) -> dict:
        for key, value in self.extra_config.items():
            config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) \
                else value
        return config

    def frozen_config(self, bf16: bool) -> dict:
        """The DeepSpeed config of a frozen role's inference-only ZeRO-3 engine (the trainable engines' ZeRO
        settings, so that an EMA is partitioned as its generator is)."""
        config = self._base_config(bf16)
        config["zero_optimization"].pop("offload_optimizer", None)
        return self._merged(config)

    def engine_config(self, role: EngineRole) -> dict:
        """The DeepSpeed config of one role's engine."""
        config = self._base_config(self.bf16)
        zero = config["zero_optimization"]
        config.update({
            "gradient_clipping": role.max_grad_norm,
            "zero_allow_untested_optimizer": True,  # the module's torch AdamW (DeepSpeed's own needs a compiled op)
        })
        if role.micro_batches > 1:
            # several backwards, then one step: the caller owns the boundary (DeepSpeed's managed accumulation
            # counts micro-steps through step() and, with gradient_accumulation_steps 1, keeps only the last
            # backward's gradients); ZeRO-3 then reduces without overlap_comm
            config["managed_gradient_accumulation"] = False
            if self.stage == 3:
                zero["overlap_comm"] = False
        return self._merged(config)

    # --- backward and step ------------------------------------------------------------------------------
    def engine_of(self, optimizer) -> Any:
        """The engine of a DeepSpeed optimizer or of the LightningOptimizer that wraps it."""
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer.optimizer
        for role, ds_optimizer in zip(self._roles, self.optimizers):
            if optimizer is ds_optimizer:
                return self.engines[role.name]
        raise KeyError(f"this optimizer ({type(optimizer).__name__}) belongs to no DeepSpeed engine "
                       f"({[type(o).__name__ for o in self.optimizers]})")

    def _training_role(self) -> str:
        """The one role whose parameters train now (the module freezes the others for each step)."""
        training = [role.name for role in self._roles
                    if any(p.requires_grad for p in role.module.parameters())]
        if len(training) != 1:
            raise RuntimeError(f"DeepSpeed runs the backward of one engine at a time, but roles {training or 'none'} "
                               "are trainable now; the module must freeze every other role before its backward.")
        return training[0]

    def backward(self, closure_loss: torch.Tensor, optimizer, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self._training_role()
        closure_loss = self.precision_plugin.pre_backward(closure_loss, self.lightning_module)
        engine = self.engines[name]
        # what engine.forward() starts with (the roles are called directly, not through their engine): ZeRO-3
        # counts this step's backwards there, and accumulates a micro-batch's gradient partitions only after the first
        engine.optimizer.clear_backward_seen_flag()
        engine.backward(closure_loss, *args, **kwargs)
        self._pending.add(name)
        return self.precision_plugin.post_backward(closure_loss, self.lightning_module)

    def optimizer_step(self, optimizer, closure, model=None, **kwargs: Any) -> Any:
        """The engine's step (reduce, clip, AdamW, zero the gradients); nothing without a backward since the last."""
        closure()
        self.step_engine(optimizer)

    def step_engine(self, optimizer) -> None:
        """Step the engine of ``optimizer`` outside Lightning's step count (the module counts one step per iteration)."""
        engine = self.engine_of(optimizer)
        name = next(n for n, e in self.engines.items() if e is engine)
        if name in self._pending:
            engine.step()
            self._pending.discard(name)

    def grad_norm(self, optimizer) -> torch.Tensor:
        """The role's global gradient norm before clipping, from its engine's last step."""
        norm = self.engine_of(optimizer).get_global_grad_norm()
        return torch.as_tensor(float(norm) if norm is not None else float("nan"))

    def optimizer_state(self, optimizer) -> dict:
        return {}  # each engine writes its own (partitioned) optimizer state

    def role_steps(self) -> "DeepSpeedRoleSteps":
        return DeepSpeedRoleSteps(self)

    # --- checkpoints ------------------------------------------------------------------------------------
    def _engine_parameter_names(self) -> set[str]:
        owned = {id(p) for role in self._roles for p in role.module.parameters()}
        return {name for name, p in self.lightning_module.named_parameters(remove_duplicate=False) if id(p) in owned}

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The module's state outside the trainable engines (the EMA, the teacher, buffers), whole: a partitioned
        frozen role is gathered one submodule at a time onto rank 0, which writes it (a collective: every rank calls
        this); the trainable engines save their own."""
        owned = self._engine_parameter_names()
        state = {k: v for k, v in self.lightning_module.state_dict().items() if k not in owned}
        for prefix, engine in self.frozen_engines.items():
            state.update({prefix + k: v for k, v in full_state_dict(engine.module, rank0_only=True).items()})
        return state

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        """Every engine into ``<path>.partial/<role>``, rank 0 the rest into ``trainer.pt``, then the swap."""
        path = Path(self.broadcast(str(filepath)))
        partial = path.with_name(path.name + ".partial")
        if self.global_rank == 0 and partial.exists():
            remove_path(partial)  # the leftover of a killed save
        self.barrier("oneforcing_checkpoint_clean")
        failure = None
        try:
            for name, engine in self.engines.items():
                engine.save_checkpoint(str(partial / name), tag=ENGINE_TAG, client_state={}, save_latest=False)
            if self.global_rank == 0:
                checkpoint = dict(checkpoint, oneforcing_engines={r.name: list(r.prefixes) for r in self._roles})
                torch.save(checkpoint, partial / TRAINER_FILE)
        except OSError as error:  # a full disk, on any rank
            failure = error
        failures = self._gather_failures(failure)
        if failures:
            if self.global_rank == 0:
                remove_path(partial)
            raise OSError(write_failure(path, "; ".join(failures))) from failure
        if self.global_rank == 0:
            swap_in(partial, path)
        self.barrier("oneforcing_checkpoint_swapped")

    def _gather_failures(self, failure: BaseException | None) -> list[str]:
        """Every rank's write error (each rank learns whether any rank failed)."""
        messages = [None] * self.world_size
        torch.distributed.all_gather_object(messages, None if failure is None else str(failure))
        return [f"rank {rank}: {message}" for rank, message in enumerate(messages) if message]

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(checkpoint_path)
        previous = path.with_name(path.name + ".previous")
        if not path.exists() and previous.exists():  # killed between the two renames of a save
            path = previous
        if not (path / TRAINER_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a checkpoint of the DeepSpeed strategy (no {TRAINER_FILE}); "
                                    "resume a run under the engine that wrote the checkpoint.")
        checkpoint = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=weights_only)
        missing = sorted(set(self.engines) - set(checkpoint.get("oneforcing_engines", {})))
        if missing:
            raise ValueError(f"{path} holds no state for the engines {missing}: it was written by another recipe.")
        for name, engine in self.engines.items():
            load_path, _ = engine.load_checkpoint(str(path / name), tag=ENGINE_TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False, load_module_strict=True)
            if load_path is None:
                raise FileNotFoundError(f"The DeepSpeed checkpoint {path / name} could not be read.")
        return checkpoint

    def load_model_state_dict(self, checkpoint, strict: bool = True) -> None:
        """The module's state outside the engines (the engines loaded theirs in ``load_checkpoint``); a partitioned
        frozen role is loaded a submodule at a time, partitioned from rank 0's values (a collective)."""
        state = dict(checkpoint["state_dict"])
        for prefix, engine in self.frozen_engines.items():
            own = {k[len(prefix):]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
            load_full_state_dict(engine.module, own, strict=strict)
        result = self.lightning_module.load_state_dict(state, strict=False)
        frozen = {k for k in result.missing_keys if any(k.startswith(prefix) for prefix in self.frozen_engines)}
        missing = set(result.missing_keys) - self._engine_parameter_names() - frozen
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"The checkpoint does not fit the module: missing {sorted(missing)[:5]}, unexpected "
                               f"{sorted(result.unexpected_keys)[:5]}.")

    def load_optimizer_state_dict(self, checkpoint) -> None:
        """Nothing: the engines restored their optimizer states."""

    def remove_checkpoint(self, filepath) -> None:
        if self.is_global_zero:
            remove_path(Path(filepath))


class DeepSpeedRoleSteps(RoleSteps):
    """Role steps under DeepSpeed: each engine accumulates its micro-batches until its step, then reduces, clips
    (to the role's ``gradient_clipping``) and steps; nothing without a backward since its last step."""

    def no_gradient_sync(self):
        return contextlib.nullcontext()

    def sync_accumulated_gradients(self, module) -> None:
        pass

    def clip_and_step(self, optimizer, max_norm: float, counted: bool, clip: bool) -> torch.Tensor | None:
        optimizer.step() if counted else self.strategy.step_engine(optimizer)
        return self.strategy.grad_norm(optimizer) if clip else None


def build_communication_op() -> None:
    """Compile DeepSpeed's shared-memory communication op for the CPU (cached in ``TORCH_EXTENSIONS_DIR``) now,
    rather than inside the first ``deepspeed.initialize`` of every rank; nothing to do on an accelerator."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        get_accelerator().create_op_builder("ShareMemCommBuilder").load(verbose=False)


def read_deepspeed_checkpoint(path: str | Path) -> dict[str, Any]:
    """A DeepSpeed checkpoint folder as one Lightning checkpoint dict with the whole fp32 state dict (one process)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    path = Path(path)
    checkpoint = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True)
    state = dict(checkpoint["state_dict"])
    for name, prefixes in checkpoint["oneforcing_engines"].items():
        engine_state = get_fp32_state_dict_from_zero_checkpoint(str(path / name), tag=ENGINE_TAG)
        for key, value in engine_state.items():
            if len(prefixes) == 1:
                state[prefixes[0] + key] = value
            else:  # a ModuleList of several modules: "<child>.<key>"
                child, rest = key.split(".", 1)
                state[prefixes[int(child)] + rest] = value
    return dict(checkpoint, state_dict=state)


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    return (Path(path) / TRAINER_FILE).is_file()


if "zero2" not in StrategyRegistry:  # `trainer.strategy: zero2` (zero3, *_offload, *_bf16) in any config
    DeepSpeedStrategy.register_strategies(StrategyRegistry)
