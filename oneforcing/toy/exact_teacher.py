"""The exact teacher: closed-form E[x0 | x_σ, caption] over a bank of clean latents (docs/algorithms.md §15).

If the data are a bank of clean videos x0⁽ⁱ⁾ (uniform over the caption's entries), the flow-matching
posterior over the entry i given x_σ = (1 − σ)·x0 + σ·ε is

    w_i ∝ exp(−Σ_f ‖x_σ,f − (1 − σ_f)·x0_f⁽ⁱ⁾‖² / (2σ_f²)),     x̂0 = Σ_i w_i·x0⁽ⁱ⁾,     v = (x_σ − x̂0) / σ,

with one σ per video (B,) or per frame (B, F) (the Gaussian likelihood factorises over frames). The
entries are those of the sample's caption, or all of them for the unconditional context, so classifier-free
guidance works as with a neural teacher. ``ExactTeacher`` has the backbone's call signature
``model(x, sigma, context) -> velocity`` and fills the ``teacher`` role of any recipe.

Numerics: logits and their log-sum-exp are float64. They are −d²/(2σ²) with d² in the thousands, so at small
σ float32 would lose the differences between entries; the term ‖x_σ,f‖² is the same for every entry and
is dropped, which leaves Σ_f (2(1 − σ_f)·x_σ,f·b_f − (1 − σ_f)²‖b_f‖²) / (2σ_f²). The bank is streamed in
chunks of ``chunk_size`` entries (an online log-sum-exp), so working memory is about
chunk_size × F×C×H×W × 8 bytes whatever the bank's size. σ is floored at ``min_sigma``: a frame at σ = 0
pins the posterior to the entries nearest to it, and v stays finite (x_σ − σ·v is x_σ there anyway).

Memory: the bank is float16, N × F×C×H×W × 2 bytes (``bank_bytes``); plus per-entry, per-frame squared
norms (N × F float64) and the caption embeddings (K × L × D float32). They are plain tensor attributes, not
parameters or buffers: they move with ``.to(device)``, keep their dtypes under casts (``.half()``,
Lightning's ``*-true`` precisions), never enter a checkpoint's state dict, and DDP does not broadcast them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_MIN_SIGMA = 1e-4  # t = 0.1; below it a frame is treated as (almost) clean
DEFAULT_CHUNK_SIZE = 32  # bank entries per step (9.4 MB of float64 at 12×12×16×16): small chunks stay in cache
# between their float16 → float64 conversion and the two matrix products (2× faster than 256 entries on one core)


class ExactTeacher(nn.Module):
    """Velocity model of the bank's posterior mean; ``model(x (B,F,C,H,W), sigma (B,)|(B,F), context (B,L,D))``.

    Args:
        latents: the bank's clean latents (N, F, C, H, W); stored as float16.
        caption_index: (N,) the caption (row of ``caption_embeddings``) of each entry.
        caption_embeddings: (K, L, D) the text encoder's context of each caption; a sample's context must
            equal one of them (or ``uncond_embedding``) exactly.
        uncond_embedding: (L, D) the unconditional context (CFG's negative prompt); it selects the whole bank.
        captions: the K captions' text, for messages and per-caption look-ups (optional).
        missing_caption_hint: how to fix a context that matches no caption (ends the error message).
        min_sigma: floor of σ (see the module docstring).
        chunk_size: bank entries processed at once (bounds the working memory).
    """

    def __init__(self, latents: torch.Tensor, caption_index: torch.Tensor, caption_embeddings: torch.Tensor,
                 uncond_embedding: torch.Tensor, captions: Sequence[str] | None = None,
                 missing_caption_hint: str = "add videos of that caption to the bank",
                 min_sigma: float = DEFAULT_MIN_SIGMA, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        K = caption_embeddings.shape[0]
        uncond_embedding = uncond_embedding.reshape(caption_embeddings.shape[1:])
        problems = _input_problems(latents, caption_index, caption_embeddings, uncond_embedding, captions,
                                   min_sigma, chunk_size)
        if problems:
            raise ValueError("Invalid ExactTeacher bank:\n  - " + "\n  - ".join(problems))
        caption_index = caption_index.long()
        if bool((caption_index[1:] < caption_index[:-1]).any()):  # group each caption's entries (a copy)
            order = torch.argsort(caption_index, stable=True)
            latents, caption_index = latents[order], caption_index[order]
        bank = latents.to(torch.float16).contiguous()  # no copy when already float16 and grouped
        counts = torch.bincount(caption_index, minlength=K)
        self.offsets: list[int] = [0, *torch.cumsum(counts, 0).tolist()]  # caption k: bank[offsets[k]:offsets[k+1]]
        self.captions = list(captions) if captions is not None else None
        self.missing_caption_hint = missing_caption_hint
        self.min_sigma, self.chunk_size = float(min_sigma), int(chunk_size)
        # plain tensor attributes, not buffers: no state dict, no DDP buffer broadcast, no dtype casts (``_apply``)
        self.bank = bank  # (N, F, C, H, W) float16
        self.bank_sq_norms = _frame_sq_norms(bank, self.chunk_size)  # (N, F) float64
        self.caption_embeddings = caption_embeddings.float().contiguous()  # (K, L, D)
        self.uncond_embedding = uncond_embedding.float().contiguous()  # (L, D)

    def _apply(self, fn, recurse: bool = True):
        """``.to(device)`` and friends move the bank; dtype casts leave it (a float16 bank rounded to bfloat16
        would be another bank, and its float64 norms would no longer match it)."""
        super()._apply(fn, recurse)
        device = fn(torch.zeros((), device=self.bank.device)).device
        self.bank, self.bank_sq_norms = self.bank.to(device), self.bank_sq_norms.to(device)
        self.caption_embeddings = self.caption_embeddings.to(device)
        self.uncond_embedding = self.uncond_embedding.to(device)
        return self

    # --- facts about the bank -------------------------------------------------------------------------
    @property
    def bank_bytes(self) -> int:
        """Bytes of the float16 bank: N × F×C×H×W × 2."""
        return self.bank.numel() * self.bank.element_size()

    def entries_of(self, caption: int) -> torch.Tensor:
        """Caption ``caption``'s clean latents (n_k, F, C, H, W), float16 (a view of the bank)."""
        return self.bank[self.offsets[caption]: self.offsets[caption + 1]]

    def io_problems(self, num_frames: int, latent_shape: Sequence[int], context_shape: Sequence[int]) -> list[str]:
        """Mismatches between the bank and the latents (F, C, H, W) / contexts (L, D) of the module it serves."""
        problems = []
        want, have = (num_frames, *latent_shape), tuple(self.bank.shape[1:])
        if tuple(want) != have:
            problems.append(f"the exact teacher's bank holds latents of shape (F, C, H, W) = {have} but the module "
                            f"makes {tuple(want)}; build the bank with the module's num_frames and frame_size")
        if tuple(context_shape) != tuple(self.caption_embeddings.shape[1:]):
            problems.append(f"the exact teacher's caption embeddings are {tuple(self.caption_embeddings.shape[1:])} "
                            f"(L, D) but the text encoder gives {tuple(context_shape)}; use the same text encoder")
        return problems

    # --- captions -------------------------------------------------------------------------------------
    def describe_context(self, context: torch.Tensor) -> str:
        """A readable name of one context (L, D) for error messages; subclasses that can decode it do."""
        return f"a context of norm {float(context.float().norm()):.4g}"

    def caption_index(self, context: torch.Tensor) -> torch.Tensor:
        """(B,) long: the caption each context (B, L, D) equals exactly, −1 for the unconditional context."""
        if tuple(context.shape[1:]) != tuple(self.caption_embeddings.shape[1:]):
            L, D = self.caption_embeddings.shape[1:]
            raise ValueError(f"context {tuple(context.shape)} is not (B, L, D) = (B, {L}, {D}); "
                             "use the bank's text encoder.")
        flat = context.float().flatten(1)  # (B, L·D)
        index = torch.full((flat.shape[0],), -2, dtype=torch.long, device=context.device)
        index[(flat == self.uncond_embedding.flatten()).all(1)] = -1
        matches = (flat[:, None] == self.caption_embeddings.flatten(1)[None]).all(2)  # (B, K)
        found = matches.any(1)
        index[found] = matches[found].float().argmax(1)
        missing = (index == -2).nonzero().flatten().tolist()
        if missing:
            names = sorted({self.describe_context(context[i]) for i in missing})
            raise ValueError(f"The exact teacher's bank has no videos of {', '.join(names)} (samples {missing}); "
                             f"{self.missing_caption_hint}.")
        return index

    # --- the posterior --------------------------------------------------------------------------------
    def posterior_mean(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x̂0 = E[x0 | x_σ, caption] (B, F, C, H, W), float64, over the caption's entries (all for uncond)."""
        B, F = x.shape[:2]
        sigma = self._sigma(sigma, B, F)  # (B, F) float64, floored
        groups = self.caption_index(context)
        x64 = x.double().flatten(2)  # (B, F, D)
        x0 = torch.zeros_like(x64)
        for group in groups.unique().tolist():
            rows = (groups == group).nonzero().flatten()
            lo, hi = (0, self.bank.shape[0]) if group < 0 else (self.offsets[group], self.offsets[group + 1])
            x0 = x0.index_put((rows,), self._mean_over(x64[rows], sigma[rows], lo, hi))
        return x0.reshape(x.shape)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """v = (x_σ − x̂0) / max(σ, min_sigma), in x's dtype and shape."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x0 = self.posterior_mean(x, sigma, context)
            s = self._sigma(sigma, *x.shape[:2]).reshape(*x.shape[:2], *([1] * (x.ndim - 2)))
            return ((x.double() - x0) / s).to(x.dtype)

    def forward_teacher_forcing(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                                clean: torch.Tensor) -> torch.Tensor:
        """The causal posterior's velocity: frame f's v from E[x0_f | clean frames < f, x_σ,f, caption].

        The exact counterpart of a causal teacher in teacher-forcing mode (Causal Forcing): frame f sees the
        clean frames before it (σ = 0, which pins the posterior to the entries they match), its own noisy
        frame, and nothing after it (σ = 1 carries no information). One pass of F stacked copies, (B, F, C, H, W).
        """
        B, F = x.shape[:2]
        if clean.shape != x.shape:
            raise ValueError(f"teacher forcing: clean context {tuple(clean.shape)} must match x {tuple(x.shape)}.")
        s = self._sigma(sigma, B, F).to(x.dtype)  # (B, F)
        frames = torch.arange(F, device=x.device)
        before = frames[None, :] < frames[:, None]  # (F copies, F frames): frame j before copy f's frame
        at = torch.eye(F, dtype=torch.bool, device=x.device)
        shape = (1, F, F, *([1] * (x.ndim - 2)))
        x_copies = torch.where(before.view(shape), clean[:, None], x[:, None])  # (B, F, F, C, H, W)
        s_copies = torch.where(before, 0.0, torch.where(at, s[:, None].expand(B, F, F), 1.0))  # clean, σ_f, noise
        v = self(x_copies.flatten(0, 1), s_copies.flatten(0, 1), context.repeat_interleave(F, 0))
        return v.view(B, F, F, *x.shape[2:])[:, frames, frames]  # copy f's frame f: (B, F, C, H, W)

    def _sigma(self, sigma: torch.Tensor, B: int, F: int) -> torch.Tensor:
        if sigma.shape not in ((B,), (B, F)):
            raise ValueError(f"sigma {tuple(sigma.shape)} is neither per video ({B},) nor per frame ({B}, {F}).")
        sigma = sigma.double().clamp_min(self.min_sigma)
        return (sigma[:, None] if sigma.ndim == 1 else sigma).expand(B, F)

    def _mean_over(self, x: torch.Tensor, sigma: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Σ_i w_i b_i over bank[lo:hi] for x (b, F, D), σ (b, F); one online log-sum-exp over chunks.

        logit_i = Σ_f (2(1 − σ_f)·x_f·b_if − (1 − σ_f)²‖b_if‖²) / (2σ_f²): the per-frame factors are folded into
        x, so that each chunk takes two plain matrix products over its flat (n, F·D) entries.
        """
        b, F, D = x.shape
        keep = 1.0 - sigma  # (b, F)
        scale = 0.5 / sigma.square()  # (b, F): 1 / (2σ²)
        weighted_x = (x * (2 * keep * scale)[..., None]).reshape(b, F * D)  # (b, F·D)
        norm_weights = keep.square() * scale  # (b, F)
        best = x.new_full((b,), -torch.inf)  # running max logit (b,)
        total = x.new_zeros(b)  # Σ exp(logit − best) (b,)
        acc = x.new_zeros(b, F * D)  # Σ exp(logit − best)·b_i (b, F·D)
        for start in range(lo, hi, self.chunk_size):
            end = min(start + self.chunk_size, hi)
            entries = self.bank[start:end].reshape(end - start, F * D).double()  # (n, F·D)
            logits = weighted_x @ entries.T - norm_weights @ self.bank_sq_norms[start:end].T  # (b, n)
            new_best = torch.maximum(best, logits.amax(1))
            decay = torch.exp(best - new_best)  # (b,); exp(−inf) = 0 at the first chunk
            weights = torch.exp(logits - new_best[:, None])  # (b, n)
            total = total * decay + weights.sum(1)
            acc = torch.addmm(acc * decay[:, None], weights, entries)
            best = new_best
        return (acc / total[:, None]).reshape(b, F, D)


def _frame_sq_norms(bank: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """‖b_f‖² per entry and frame (N, F), float64, of the float16 values the teacher uses."""
    return torch.cat([chunk.double().flatten(2).square().sum(2) for chunk in bank.split(chunk_size)]) \
        if len(bank) else torch.zeros(0, bank.shape[1], dtype=torch.float64)


def _input_problems(latents, caption_index, caption_embeddings, uncond_embedding, captions, min_sigma,
                    chunk_size) -> list[str]:
    problems = []
    if latents.ndim != 5 or len(latents) == 0:
        problems.append(f"latents {tuple(latents.shape)} must be a non-empty (N, F, C, H, W) bank")
    if caption_index.shape != latents.shape[:1]:
        problems.append(f"caption_index {tuple(caption_index.shape)} must give one caption per entry "
                        f"({len(latents)},)")
    if caption_embeddings.ndim != 3:
        problems.append(f"caption_embeddings {tuple(caption_embeddings.shape)} must be (K, L, D)")
    K = caption_embeddings.shape[0]
    if not problems:
        if caption_index.numel() and not (0 <= int(caption_index.min()) and int(caption_index.max()) < K):
            problems.append(f"caption_index must lie in [0, {K}) (one row of caption_embeddings each)")
        elif bool((torch.bincount(caption_index.long(), minlength=K) == 0).any()):
            problems.append("some captions have no entries in the bank; give each caption at least one video")
        flat = caption_embeddings.float().flatten(1)
        if bool((flat == uncond_embedding.float().flatten()[None]).all(1).any()):
            problems.append("a caption's embedding equals the unconditional one; they must differ")
        if len(torch.unique(flat, dim=0)) != K:
            problems.append("two captions have the same embedding; list each caption once")
    if captions is not None and len(captions) != K:
        problems.append(f"{len(captions)} caption names for {K} caption embeddings")
    if not 0 < min_sigma < 1:
        problems.append(f"min_sigma={min_sigma} must be in (0, 1)")
    if chunk_size < 1:
        problems.append(f"chunk_size={chunk_size} must be >= 1")
    return problems
