"""Streams (caption, video) batches from webdataset shards for every training stage.

Train: ``ResampledShards(deterministic=True)`` per rank and worker (reproducible), a
deterministic shuffle buffer, and a fixed number of batches per rank per epoch, so every rank takes the
same number of steps under DDP/FSDP. Val: every rank reads the whole (small) val split and keeps its
rank's slice, truncated to the same length on all ranks.

Corrupt members are skipped, never fatal and never silent: each skip logs a warning naming the sample,
and the count rides on the next batch (``batch["num_skipped"]``) so the module can log a running total
from the main process even when workers are separate processes.
"""

from __future__ import annotations

import warnings
from itertools import islice
from pathlib import Path

import lightning as L
import torch
import webdataset as wds

from oneforcing.data.prompt_cache import PROMPT_MEMBER, load_negative, pad_contexts
from oneforcing.data.shards import decode_sample, read_index

_skipped_in_this_worker = 0  # per process: each dataloader worker has its own


def _skip_and_count(error: Exception) -> bool:
    """webdataset handler: warn, count, continue."""
    global _skipped_in_this_worker
    _skipped_in_this_worker += 1
    warnings.warn(f"Skipping a corrupt sample or shard member: {error}", stacklevel=2)
    return True


def _decode_skipping_corrupt(samples):
    """Pipeline stage: decode each sample; corrupt ones are skipped and counted on the next good one."""
    global _skipped_in_this_worker
    for raw in samples:
        try:
            sample = decode_sample(raw)
        except ValueError as error:
            _skip_and_count(error)
            continue
        sample["num_skipped"], _skipped_in_this_worker = _skipped_in_this_worker, 0
        yield sample


def collate(samples: list[dict]) -> dict:
    """Stack tensors; pixels become float in [-1, 1], (B, F, 3, H, W)."""
    batch = {
        "key": [s["key"] for s in samples],
        "caption": [s["caption"] for s in samples],
        "attributes": [s["attributes"] for s in samples],
        "num_skipped": torch.tensor(sum(s["num_skipped"] for s in samples)),
    }
    if "pixels" in samples[0]:
        batch["pixels"] = torch.stack([s["pixels"] for s in samples]).float() / 127.5 - 1.0
    if PROMPT_MEMBER in samples[0]:  # cached contexts without padding rows: padded to the batch's longest
        rows = [s[PROMPT_MEMBER] for s in samples]
        batch[PROMPT_MEMBER] = pad_contexts(rows, max(r.shape[0] for r in rows)).float()  # (B, n, D)
    for name in samples[0]:
        if name not in batch and name not in ("url", "pixels") and torch.is_tensor(samples[0][name]):
            batch[name] = torch.stack([s[name] for s in samples]).float()  # latents, trajectories, ...
    return batch


class ResumableStream:
    """Iterable over train batches that continues where a checkpointed run stopped.

    Each epoch is a fresh, epoch-seeded pipeline; at the start of iteration the number of batches the
    trainer has consumed so far (restored from a checkpoint on resume) gives the epoch and the batches to
    skip, so a resumed run sees exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, datamodule: "ShardDataModule") -> None:
        self.datamodule = datamodule

    def __len__(self) -> int:
        return self.datamodule.train_batches_per_rank()

    def state_dict(self) -> dict:
        return {"consumed_batches": self.consumed_batches()}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to load: the position is re-derived from the trainer's restored batch count."""

    def consumed_batches(self) -> int:
        trainer = self.datamodule.trainer
        return 0 if trainer is None else trainer.fit_loop.epoch_loop.batch_progress.total.completed

    def __iter__(self):
        per_epoch = len(self)
        epoch, skip = divmod(self.consumed_batches(), per_epoch)
        for i, batch in enumerate(self.datamodule.epoch_loader(epoch)):
            if i >= skip:
                yield batch


class ShardDataModule(L.LightningDataModule):
    """Caption/video shards from ``root/train`` and ``root/val`` (each written by ``oneforcing data``).

    Args:
        root: directory holding the ``train`` and ``val`` split directories.
        batch_size: samples per batch per rank.
        num_workers: dataloader worker processes per rank.
        shuffle_buffer: samples held by the shuffle buffer in each worker.
        seed: drives shard resampling and the shuffle; identical seeds give identical streams.
        val_samples: cap on validation samples in total (None: the whole val split).
    """

    def __init__(
        self,
        root: str = "data/toy",
        batch_size: int = 8,
        num_workers: int = 1,
        shuffle_buffer: int = 512,
        seed: int = 0,
        val_samples: int | None = 64,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or shuffle_buffer < 1:
            raise ValueError(
                f"batch_size={batch_size}, num_workers={num_workers}, shuffle_buffer={shuffle_buffer}: "
                "need batch_size >= 1, num_workers >= 0, shuffle_buffer >= 1."
            )
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.val_samples = val_samples
        self.train_index: dict | None = None
        self.val_index: dict | None = None

    def setup(self, stage: str) -> None:
        # fail before training starts, naming the directory and the fix
        if stage == "fit":
            self.train_index = read_index(self.root / "train")
        if stage in ("fit", "validate"):
            self.val_index = read_index(self.root / "val")

    def cached_negative_prompt(self) -> tuple[str, torch.Tensor] | None:
        """(text, (n, D) embedding) of the train split's cached negative prompt (``oneforcing data prompts`` /
        ``encode``), or None when the split caches none."""
        embedding = load_negative(self.root / "train")
        if embedding is None or self.train_index is None or "negative_prompt" not in self.train_index:
            return None
        return self.train_index["negative_prompt"], embedding

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _urls(self, split: str, index: dict) -> list[str]:
        return [str(self.root / split / s["name"]) for s in index["shards"]]

    def train_batches_per_rank(self) -> int:
        assert self.train_index is not None, "call setup('fit') first"
        _, world = self._ranks()
        workers = max(self.num_workers, 1)
        per_worker = self.train_index["total"] // (world * self.batch_size * workers)
        if per_worker < 1:
            raise ValueError(
                f"The train split has {self.train_index['total']} samples, fewer than one batch per worker "
                f"({world} ranks × {workers} workers × batch {self.batch_size}). Write more videos or lower batch_size."
            )
        return per_worker * workers

    def epoch_loader(self, epoch: int) -> wds.WebLoader:
        """The train stream of one epoch: a pure function of (seed, epoch, rank, worker)."""
        assert self.train_index is not None, "call setup('fit') first"
        workers = max(self.num_workers, 1)
        seed = self.seed + 1_000_003 * epoch
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self._urls("train", self.train_index), seed=seed, deterministic=True),
            wds.tarfile_to_samples(handler=_skip_and_count),
            wds.detshuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, seed=seed),
            _decode_skipping_corrupt,
            wds.batched(self.batch_size, collation_fn=collate, partial=False),
        ).with_epoch(self.train_batches_per_rank() // workers)  # per worker; equal on every rank
        return wds.WebLoader(pipeline, batch_size=None, num_workers=self.num_workers)

    def train_dataloader(self) -> "ResumableStream":
        return ResumableStream(self)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        assert self.val_index is not None, "call setup('validate') first"
        rank, world = self._ranks()
        total = self.val_index["total"] if self.val_samples is None else min(self.val_samples, self.val_index["total"])
        per_rank = (total // world) // self.batch_size * self.batch_size
        if per_rank < 1:
            raise ValueError(
                f"Validation needs at least one batch per rank: {total} val samples over {world} ranks at batch "
                f"{self.batch_size}. Raise val_samples or write a larger val split."
            )
        stream = wds.DataPipeline(
            wds.SimpleShardList(self._urls("val", self.val_index)),
            wds.tarfile_to_samples(handler=_skip_and_count),
            _decode_skipping_corrupt,
        )
        samples = list(islice(islice(stream, rank, None, world), per_rank))
        return torch.utils.data.DataLoader(samples, batch_size=self.batch_size, collate_fn=collate)
