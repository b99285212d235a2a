"""σ draws for score, critic and GAN losses (docs/algorithms.md §7): pure functions of a torch.Generator."""

from __future__ import annotations

import torch

from oneforcing.models.flow_matching import shift_sigma


def sample_score_sigma(batch_size: int, rng: torch.Generator, shift: float = 5.0, min_t: float = 20.0,
                       max_t: float = 980.0) -> torch.Tensor:
    """u ~ U{0..999}/1000 per sample, σ = clamp(shift(u), min_t/1000, max_t/1000); one σ per video (B,).

    At s=5 the median is ≈0.833 and ≈9 % of the mass sits at the 0.98 clamp.
    """
    u = torch.randint(0, 1000, (batch_size,), generator=rng, device=rng.device).double() / 1000.0
    return shift_sigma(u, shift).clamp(min_t / 1000.0, max_t / 1000.0).float()
