"""The held-out toy sets and their scoring, shared by ``oneforcing evaluate`` and the ``ToyEvaluation`` callback.

Two sets (docs/evaluation.md):
- the **real set**: ``num_videos`` held-out videos of the default world (``REAL_SEED``, disjoint from the
  training streams) with their captions; the model makes one video per caption and every metric of
  ``oneforcing.evaluation.metrics`` compares them;
- the **bank set** (``bank_set``): coverage needs several samples of one caption, so the first
  ``num_videos // samples_per_caption`` distinct one-object captions of the real set are each prompted
  ``samples_per_caption`` times (different noise), and scored by ``oneforcing.toy.bank_metrics``
  against ``bank_size`` clean videos per caption from ``oneforcing.toy.exact_bank.caption_videos`` — the
  videos the exact teacher with the same seed and bank size holds, so a student of that teacher is measured
  against its teacher's own modes (ideal: precision 0, coverage ``ideal_coverage``). A student of the world
  itself (a neural teacher) cannot copy bank videos: as its reference, fresh videos of the same captions
  (``REAL_SEED``) are scored too (``world_precision`` / ``world_coverage`` in ``BankSet.describe``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from oneforcing.toy.attributes import attribute_accuracy
from oneforcing.toy.bank_metrics import bank_scores, ideal_coverage
from oneforcing.toy.exact_bank import BANK_SEED, caption_videos
from oneforcing.toy.world import make_video, parse_caption

if TYPE_CHECKING:
    from oneforcing.toy.feature_net import VideoFeatureNet

REAL_SEED = 424242  # held-out toy stream: the training data use seeds 0.. and 0 + 1_000_003 (val)
SAMPLES_PER_CAPTION = 4  # bank-set samples per caption (coverage is at most S/N: 0.25 at N = 16)
BANK_SIZE = 16  # bank videos per caption: the exact teacher's default

Generate = Callable[[list[str], int], torch.Tensor]  # (prompts, seed) -> pixel videos (B, F, 3, H, W)


def real_toy_set(num_videos: int, seed: int, num_frames: int = 12, size: int = 32, max_objects: int = 1,
                 background: str = "flat") -> tuple[torch.Tensor, list[str]]:
    """Held-out real toy videos (N, F, 3, H, W) in [-1, 1] and their captions (the default world's)."""
    videos = [make_video(seed, i, num_frames=num_frames, size=size, max_objects=max_objects, background=background)
              for i in range(num_videos)]
    pixels = torch.from_numpy(np.stack([v.pixels for v in videos])).float() / 127.5 - 1.0
    return pixels, [v.caption for v in videos]


@dataclass(frozen=True)
class BankSet:
    """Prompts for the bank metrics (each caption ``samples_per_caption`` times, caption by caption) and the
    clean bank videos of each caption (N, F, 3, H, W) in [-1, 1]."""

    prompts: list[str]
    banks: dict[str, torch.Tensor]
    samples_per_caption: int
    bank_size: int
    seed: int
    world: dict[str, float]  # the bank metrics of fresh world videos of the prompts (a reference)

    def describe(self) -> dict:
        """Provenance and references for reports (plain types)."""
        return {"captions": len(self.banks), "samples_per_caption": self.samples_per_caption,
                "bank_size": self.bank_size, "bank_seed": self.seed,
                "ideal_coverage": ideal_coverage(self.samples_per_caption, self.bank_size),
                "world_precision": self.world["bank_precision"], "world_coverage": self.world["bank_coverage"]}


def bank_set(captions: list[str], num_videos: int, samples_per_caption: int = SAMPLES_PER_CAPTION,
             bank_size: int = BANK_SIZE, seed: int = BANK_SEED, num_frames: int = 12,
             size: int = 32) -> BankSet | None:
    """The bank set of the real set's ``captions`` (None when ``samples_per_caption`` is 0 or no caption has
    one object): max(1, num_videos // samples_per_caption) captions × samples_per_caption prompts."""
    if samples_per_caption < 0 or bank_size < 1:
        raise ValueError(f"samples_per_caption={samples_per_caption} must be >= 0 (0: no bank metrics) and "
                         f"bank_size={bank_size} >= 1.")
    one_object = [c for c in dict.fromkeys(captions) if len(parse_caption(c)) == 1]
    if samples_per_caption == 0 or not one_object:
        return None
    chosen = one_object[: max(1, num_videos // samples_per_caption)]
    banks = {c: caption_videos(c, bank_size, seed, num_frames, size) for c in chosen}
    prompts = [c for c in chosen for _ in range(samples_per_caption)]
    fresh = torch.cat([caption_videos(c, samples_per_caption, REAL_SEED, num_frames, size) for c in chosen])
    return BankSet(prompts, banks, samples_per_caption, bank_size, seed, bank_scores(fresh, prompts, banks))


def sample_in_batches(generate: Generate, prompts: list[str], seed: int, batch_size: int) -> torch.Tensor:
    """Pixel videos (N, F, 3, H, W) of ``prompts``, ``batch_size`` at a time; the chunk at ``start`` gets
    seed + start (the samplers give prompt i of a chunk seed + i: results do not depend on batching)."""
    return torch.cat([generate(prompts[start: start + batch_size], seed + start).float().cpu()
                      for start in range(0, len(prompts), batch_size)])


def score_bank(generate: Generate, bank: BankSet, seed: int, batch_size: int) -> dict[str, float]:
    """``bank_precision`` and ``bank_coverage`` of ``generate`` on the bank set."""
    return bank_scores(sample_in_batches(generate, bank.prompts, seed, batch_size), bank.prompts, bank.banks)


def toy_metrics(generate: Generate, real: torch.Tensor, prompts: list[str], net: VideoFeatureNet, seed: int,
                batch_size: int, bank: BankSet | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """Every toy metric of ``generate`` on the real set (and the bank metrics on the bank set when given);
    returns the metrics and the real set's samples (N, F, 3, H, W)."""
    fake = sample_in_batches(generate, prompts, seed, batch_size)
    metrics = evaluate_videos(fake, real, prompts, net)
    if bank is not None:
        metrics.update(score_bank(generate, bank, seed, batch_size))
    return metrics, fake


def evaluate_videos(
    fake: torch.Tensor, real: torch.Tensor, captions: list[str], net: VideoFeatureNet,
    long_fake: torch.Tensor | None = None, window: int = 12,
) -> dict[str, float]:
    """All toy metrics of fake videos against real ones: fd, kid, kid_std, sharpness_ratio, dynamics_ratio,
    flicker_excess, attr_{colour,direction,shape,found} (and attr_videos scored), and drift when
    ``long_fake`` (B', F ≥ 4·window, 3, H, W) is given. ``captions`` are the prompts of ``fake``."""
    from oneforcing.evaluation.metrics import (  # torchmetrics: imported when used
        check_pair, drift, dynamics_ratio, frechet_and_kid, sharpness_ratio, temporal_consistency)

    check_pair(fake, real)
    results = frechet_and_kid(fake, real, net)
    results["sharpness_ratio"] = sharpness_ratio(fake, real)
    results["dynamics_ratio"] = dynamics_ratio(fake, real)
    results["flicker_excess"] = temporal_consistency(fake, real)
    results.update({f"attr_{name}": value for name, value in attribute_accuracy(fake, captions).items()})
    if long_fake is not None:
        results["drift"] = drift(long_fake, window)
    return results
