"""Exact mode metrics against a bank of clean videos per caption (docs/evaluation.md): precision and coverage.

Videos are float tensors (…, F, 3, H, W) in [-1, 1]. The **distance** between two videos is the RMS pixel
difference, sqrt(mean over F·3·H·W of (a − b)²), in [-1, 1] units (0: identical; two toy videos of one
caption are 0.25–0.5 apart (10–90 %), and a video's nearest neighbour among 15 others is ≈ 0.23 away).

- **bank_precision**: per sample, the distance to its nearest bank video *of its caption*; the mean over
  samples. Ideal 0 (every sample is a bank video, as an exact teacher's samples are); higher is worse. An
  average of modes is far from all of them: the mean of two videos is exactly half their distance from each.
- **bank_coverage**: per caption, the share of its bank videos that are the nearest (among that caption's bank)
  of at least one sample of that caption; the mean over captions. Higher is better; a collapsed generator
  (one video per caption) covers 1/N. With S samples per caption and N bank videos it is at most min(S, N)/N,
  and a sampler that draws bank videos uniformly reaches 1 − (1 − 1/N)^S in expectation (``ideal_coverage``).

Pure functions on tensors; ``oneforcing.toy.evaluation`` builds the banks and the sample sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def rms_distances(samples: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(S, N) float64 RMS pixel distances between samples (S, F, 3, H, W) and bank videos (N, F, 3, H, W)."""
    if samples.shape[1:] != bank.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape)} and bank {tuple(bank.shape)} differ in (F, 3, H, W); "
                         "generate at the bank's length and frame size.")
    a, b = samples.double().flatten(1), bank.double().flatten(1)  # (S, D), (N, D)
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") / a.shape[1] ** 0.5


def nearest_bank_videos(samples: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the distance to its nearest bank video and that video's index: (S,) float64, (S,) long."""
    distances, index = rms_distances(samples, bank).min(dim=1)
    return distances, index


def ideal_coverage(samples_per_caption: int, bank_size: int) -> float:
    """Expected coverage of a sampler that draws each sample uniformly from the bank: 1 − (1 − 1/N)^S."""
    return 1.0 - (1.0 - 1.0 / bank_size) ** samples_per_caption


def bank_scores(samples: torch.Tensor, captions: Sequence[str],
                banks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``bank_precision`` (mean nearest distance) and ``bank_coverage`` (mean share of bank videos hit).

    samples (B, F, 3, H, W) with their captions (B,); banks: caption -> that caption's bank (N_c, F, 3, H, W).
    Every caption of a sample needs a bank; see the module docstring for the definitions.
    """
    if len(captions) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(captions)} captions; pass one caption per sample.")
    missing = sorted(set(captions) - set(banks))
    if missing:
        raise ValueError(f"no bank videos of {missing}; give a bank for every sample's caption.")
    if not len(samples):
        raise ValueError("no samples to score; pass at least one sample.")
    distances, coverage = [], []
    for caption in dict.fromkeys(captions):
        rows = [i for i, c in enumerate(captions) if c == caption]
        bank = banks[caption]
        nearest, index = nearest_bank_videos(samples[rows], bank.to(samples.device))
        distances.append(nearest)
        coverage.append(len(set(index.tolist())) / len(bank))
    return {"bank_precision": float(torch.cat(distances).mean()), "bank_coverage": sum(coverage) / len(coverage)}
