"""Per-rank memory of a training iteration, predicted without running it (``oneforcing plan``).

Two parts, added:

* **Model states** follow from element counts and each engine's layout, for N ranks (``state_bytes``):

  ====== ================================ ======================================= ================================
  engine parameters (teacher, EMA)        gradients                               optimizer (AdamW, fp32)
  ====== ================================ ======================================= ================================
  ddp    whole                            the stepping role's, whole; plus DDP's  2 states × every trainable
                                          flat buckets of every trainable one     parameter
  fsdp2  1/N (teacher and EMA too); two   both roles', 1/N (FSDP2 computes the    2 states, 1/N
         units gathered at a time         other role's too and drops them)
  zero2  whole (teacher, EMA outside)     the stepping role's, 1/N; one reduce    2 states + an fp32 master copy,
                                          bucket per engine                       1/N
  zero3  1/N (a Wan teacher and the EMA   the trainable roles', 1/N (a flat       2 states + an fp32 master copy,
         too, in inference-only engines), buffer per engine); one reduce bucket   1/N
         except parameters of at most     per engine
         ``persistence_threshold``
         elements (whole on every rank);
         the roles and the teacher
         gathered while they compute (at
         most ``max_live_parameters``)
  ====== ================================ ======================================= ================================

  DeepSpeed's reduce buckets are ``reduce_bucket_size`` elements (5e8 by default: 2 GB in fp32 per engine, whatever
  the model's size) allocated whole; set ``config: {zero_optimization: {reduce_bucket_size: ...}}`` to shrink them.

* **Activations** are traced: each role's step (``DistillationModule.step_loss`` and its backward, on one
  micro-batch) runs on the meta device, where tensors have shapes but no storage and ops cost nothing, under a
  dispatch mode that sums the bytes of the storages alive at each op (``LiveBytes``). So every objective's roll-out,
  KV cache, extra passes (GAN, R1) and activation checkpointing count as they run. Attention is counted as a fused
  kernel (flash / memory-efficient on a GPU, the CPU's flash kernel) that keeps q, k, v, the output and a
  log-sum-exp per query for backward; on meta PyTorch would run the unfused maths and keep the L×L weights.
  Gradients are dropped as they accumulate (the states count them), so the trace's peak is the activations'.
  Under ``bf16-mixed`` the trace runs under ``MetaAutocast``, autocast's casting rules applied at the function
  level (autocast itself does not run on the meta device), so the activations have the dtypes they would have.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from oneforcing.models.compute_dtype import traced_autocast

ENGINES = ("ddp", "fsdp2", "zero2", "zero3")
FP32 = 4
DEEPSPEED_REDUCE_BUCKET = int(5e8)  # DeepSpeed's default reduce_bucket_size (elements)
DEEPSPEED_PERSISTENCE = int(1e5)  # DeepSpeed's default stage3_param_persistence_threshold (elements)
DEEPSPEED_MAX_LIVE = int(1e9)  # DeepSpeed's default stage3_max_live_parameters (elements kept gathered at most)


# --- activations: a trace on the meta device --------------------------------------------------------------
class LiveBytes(TorchDispatchMode):
    """Sums the bytes of the storages that ops create under it while they are alive, and their peak.

    A storage is counted once however many tensors view it, from the op that creates it until it is freed
    (its Python object is kept as long as C++ holds it, so a finalizer fires exactly then). Storages that exist
    before the mode (parameters, inputs) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._tracked:
            return
        size = storage.nbytes()
        self._tracked.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._tracked.discard(key)
        self.live -= size


class _FusedAttention(torch.autograd.Function):
    """Attention as a fused kernel keeps it for backward: q, k, v, the output and a float32 log-sum-exp per query."""

    @staticmethod
    def forward(ctx, q, k, v):  # (B, H, Lq, E), (B, H, Lk, E), (B, H, Lk, Ev)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # (B, H, Lq)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _FusedAttention.apply(query, key, value)


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` as ``_FusedAttention`` while the context lasts (its callers look it up
    on ``torch.nn.functional`` at each call: diffusers' Wan attention, our causal attention, the GAN head)."""
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention
    functional.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original


_F = torch.nn.functional
# autocast's op lists (CUDA), as the functions that reach them: those that run in the lower precision, and those
# that run in float32 whatever their inputs; every other op runs in its inputs' (promoted) dtype
_LOWER = {_F.linear, _F.conv1d, _F.conv2d, _F.conv3d, _F.conv_transpose1d, _F.conv_transpose2d, _F.conv_transpose3d,
          _F.scaled_dot_product_attention, _F.prelu, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
          torch.Tensor.__rmatmul__, torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.baddbmm,
          torch.Tensor.baddbmm, torch.addmm, torch.Tensor.addmm, torch.addbmm, torch.mv, torch.einsum}
_FLOAT32 = {_F.layer_norm, _F.group_norm, _F.softmax, _F.log_softmax, _F.softplus, _F.normalize, _F.mse_loss,
            _F.l1_loss, _F.smooth_l1_loss, _F.cross_entropy, _F.binary_cross_entropy_with_logits, _F.kl_div,
            torch.softmax, torch.Tensor.softmax, torch.log_softmax, torch.Tensor.log_softmax, torch.exp,
            torch.Tensor.exp, torch.log, torch.Tensor.log, torch.pow, torch.Tensor.pow, torch.Tensor.__pow__,
            torch.rsqrt, torch.Tensor.rsqrt, torch.reciprocal, torch.Tensor.reciprocal, torch.sum, torch.Tensor.sum,
            torch.cumsum, torch.Tensor.cumsum, torch.prod, torch.Tensor.prod, torch.norm, torch.Tensor.norm}


class MetaAutocast(TorchFunctionMode):
    """Autocast's rules where autocast does not run (the meta device): floating inputs of the lower-precision
    ops cast to ``dtype``, of the float32 ops to float32, above autograd so that backward keeps the cast copies as
    it would. As in autocast, the cast of a leaf that requires grad (a trainable parameter) is made once and kept
    while the mode lasts. Function modes do not reach activation checkpointing's recompute in backward (autocast's
    state does: checkpoint restores it), so while the mode lasts ``torch.utils.checkpoint.checkpoint`` re-enters it
    around each recompute."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.dtype = dtype
        self._weights: dict[int, torch.Tensor] = {}
        self._checkpoint = None
        self._depth = 0  # re-entered around each recompute: the patch is made and undone by the outermost entry

    def __enter__(self):
        if self._depth == 0:
            self._checkpoint = torch.utils.checkpoint.checkpoint
            torch.utils.checkpoint.checkpoint = self._recomputing_under_casts
            self._traced = traced_autocast(self.dtype)  # buffers sized in the compute dtype (the KV cache)
            self._traced.__enter__()
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            torch.utils.checkpoint.checkpoint = self._checkpoint
            self._traced.__exit__(*exc)
        return super().__exit__(*exc)

    def _recomputing_under_casts(self, function, *args, use_reentrant: bool | None = None,
                                 context_fn=torch.utils.checkpoint.noop_context_fn, **kwargs):
        if use_reentrant is not False:  # context_fn needs the non-reentrant checkpoint (the one used here)
            return self._checkpoint(function, *args, use_reentrant=use_reentrant, context_fn=context_fn, **kwargs)

        def contexts():
            forward, recompute = context_fn()

            @contextlib.contextmanager
            def recompute_under_casts():
                with recompute, self:
                    yield

            return forward, recompute_under_casts()

        return self._checkpoint(function, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    def _cast(self, x, dtype: torch.dtype):
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.float16, torch.bfloat16) \
                or x.dtype == dtype:
            return x
        if x.is_leaf and x.requires_grad:
            key = id(x)
            if key not in self._weights or self._weights[key].dtype != dtype:
                self._weights[key] = x.to(dtype)
            return self._weights[key]
        return x.to(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtype = self.dtype if func in _LOWER else torch.float32 if func in _FLOAT32 else None
        if dtype is not None:
            args = tuple(self._cast(a, dtype) if not isinstance(a, (list, tuple)) else type(a)(self._cast(b, dtype) for b in a)
                         for a in args)
            kwargs = {k: self._cast(v, dtype) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def traced_peak(step, parameters: list[nn.Parameter], autocast: torch.dtype | None = None) -> int:
    """Peak bytes of the storages alive while ``step()`` runs (on meta tensors), with fused attention and, given
    ``autocast``, autocast's casts to that dtype (``MetaAutocast``). The gradients that accumulate into
    ``parameters`` are dropped at once (the model states count them)."""
    hooks = [p.register_post_accumulate_grad_hook(_drop_grad) for p in parameters if p.requires_grad]
    meter = LiveBytes()
    casts = MetaAutocast(autocast) if autocast is not None else contextlib.nullcontext()
    try:
        with fused_attention(), meter, casts:
            step()
    finally:
        for hook in hooks:
            hook.remove()
    return meter.peak


def _drop_grad(parameter: nn.Parameter) -> None:
    parameter.grad = None


# --- model states --------------------------------------------------------------------------------------
@dataclass
class RoleSizes:
    """Element counts of one role: all its parameters, the trainable ones, the largest FSDP unit's own and the
    elements in tensors of at most the ZeRO-3 persistence threshold."""

    name: str
    params: int
    trainable: int
    largest_unit: int = 0
    persistent: int = 0

    @classmethod
    def of(cls, name: str, modules: list[nn.Module], units: list[nn.Module] = (),
           persistence_threshold: int = DEEPSPEED_PERSISTENCE) -> RoleSizes:
        params = [p for m in modules for p in m.parameters()]
        return cls(name, params=sum(p.numel() for p in params),
                   trainable=sum(p.numel() for p in params if p.requires_grad),
                   largest_unit=max((unit_size(u, units) for u in units), default=0),
                   persistent=sum(p.numel() for p in params if p.numel() <= persistence_threshold))


def unit_size(unit: nn.Module, units: list[nn.Module]) -> int:
    """Elements an FSDP unit gathers itself: its parameters less those of the units nested in it."""
    inner = {id(p) for u in units if u is not unit and any(u is m for m in unit.modules()) for p in u.parameters()}
    return sum(p.numel() for p in unit.parameters() if id(p) not in inner)


@dataclass
class EngineSettings:
    """What an engine does with the states: its kind, the ranks sharing them, the bytes of a compute parameter
    (4 fp32; 2 for FSDP2's bf16 parameter policy and DeepSpeed's bf16 mode) and DeepSpeed's bucket settings."""

    kind: str
    devices: int
    param_bytes: int = FP32
    reduce_bucket_size: int = DEEPSPEED_REDUCE_BUCKET
    persistence_threshold: int = DEEPSPEED_PERSISTENCE
    max_live_parameters: int = DEEPSPEED_MAX_LIVE
    overlap_comm: bool | None = None  # DeepSpeed's default: on for stage 3, off otherwise

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise ValueError(f"engine {self.kind!r} is not one of {', '.join(ENGINES)}")
        if self.devices < 1:
            raise ValueError(f"devices={self.devices} must be >= 1")


def state_bytes(trainable: list[RoleSizes], teacher_bytes: int, ema: int, engine: EngineSettings,
                teacher: RoleSizes | None = None, ema_persistent: int = 0) -> dict[str, int]:
    """Per-rank bytes of parameters, the frozen teacher, the EMA, gradients, optimizer state and engine buffers,
    for the trainable roles (generator; critic with its heads), a teacher of ``teacher_bytes`` whole and an EMA of
    ``ema`` elements (``ema_persistent`` of them in tensors ZeRO-3 keeps whole). ``teacher``: the sizes of a teacher
    with parameters (a Wan teacher), which ZeRO-3 partitions in the engines' precision; an exact teacher's tables
    (None) stay whole. The rules are the table of the module docstring."""
    n, kind, pb = engine.devices, engine.kind, engine.param_bytes
    params = sum(r.params for r in trainable)
    train = sum(r.trainable for r in trainable)
    stepping = max((r.trainable for r in trainable), default=0)  # one role's gradients at a time
    out = {"parameters": 0, "teacher": teacher_bytes, "ema": FP32 * ema, "gradients": 0, "optimizer": 0,
           "buffers": 0}
    if kind == "ddp":
        out.update(parameters=FP32 * params, gradients=FP32 * stepping, optimizer=2 * FP32 * train,
                   buffers=FP32 * train)  # DDP's flat gradient buckets hold every trainable parameter
    elif kind == "fsdp2":
        largest = max((r.largest_unit for r in trainable), default=0)
        out.update(parameters=FP32 * params / n, teacher=teacher_bytes / n, ema=FP32 * ema / n,
                   gradients=FP32 * train / n, optimizer=2 * FP32 * train / n,
                   buffers=2 * pb * largest + FP32 * largest)  # two gathered units, one unsharded gradient
    else:
        overlap = engine.overlap_comm if engine.overlap_comm is not None else kind == "zero3"
        buckets = (2 if overlap and kind == "zero2" else 1) * FP32 * engine.reduce_bucket_size * len(trainable)
        out["optimizer"] = 3 * FP32 * train / n  # fp32 master partition + AdamW's two states
        if kind == "zero2":
            out.update(parameters=pb * params, gradients=FP32 * stepping / n, buffers=buckets)
        else:
            persistent = sum(r.persistent for r in trainable)
            partitioned = pb * ((params - persistent) / n + persistent)
            gathered = params - persistent  # the roles gathered while they compute
            out.update(parameters=partitioned, gradients=FP32 * train / n,
                       ema=FP32 * ((ema - ema_persistent) / n + ema_persistent))
            if teacher is not None:
                out["teacher"] = pb * ((teacher.params - teacher.persistent) / n + teacher.persistent)
                gathered += teacher.params - teacher.persistent
            out["buffers"] = buckets + pb * min(gathered, engine.max_live_parameters)
    return {k: int(math.ceil(v)) for k, v in out.items()}


@dataclass
class Plan:
    """A per-rank prediction: each category's bytes, each role step's activation peak with the config's activation
    checkpointing and with the other setting (every trainable role checkpointed vs none), the total (model states
    and the larger step's activations) and the device memory it is checked against."""

    states: dict[str, int]
    activations: dict[str, int]  # "generator" / "critic" step -> peak bytes
    activations_other: dict[str, int]
    checkpointing: bool
    device_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def peak_activations(self) -> int:
        return max(self.activations.values(), default=0)

    @property
    def total(self) -> int:
        return sum(self.states.values()) + self.peak_activations

    @property
    def fits(self) -> bool | None:
        return None if self.device_bytes is None else self.total <= self.device_bytes
