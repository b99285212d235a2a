"""Webdataset shards and the ShardDataModule: round trip, reproducibility, clear errors, corrupt samples, ranks."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_FRAMES, TINY_SEED, TINY_SIZE, TINY_TRAIN_VIDEOS, TINY_VAL_VIDEOS, write_tiny_data

from oneforcing.commands.data import VAL_SEED_OFFSET
from oneforcing.data.datamodule import ShardDataModule
from oneforcing.data.shards import read_index
from oneforcing.toy.world import make_video


def expected_pixels(seed: int, key: str) -> torch.Tensor:
    video = make_video(seed, int(key), num_frames=TINY_FRAMES, size=TINY_SIZE)
    return torch.from_numpy(video.pixels).float() / 127.5 - 1.0


def fake_trainer(rank: int = 0, world: int = 1, consumed_batches: int = 0) -> SimpleNamespace:
    """All that the datamodule reads of a Trainer: its rank, and the batches consumed so far (for resuming)."""
    total = SimpleNamespace(completed=consumed_batches)
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(total=total)))
    return SimpleNamespace(global_rank=rank, world_size=world, fit_loop=loop)


def fit_datamodule(root: Path, rank: int = 0, world: int = 1, consumed_batches: int = 0,
                   **kwargs) -> ShardDataModule:
    dm = ShardDataModule(root=str(root), batch_size=4, num_workers=0, shuffle_buffer=8, val_samples=None, **kwargs)
    dm.trainer = fake_trainer(rank, world, consumed_batches)
    dm.setup("fit")
    return dm


def test_index_lists_every_sample(toy_data):
    train, val = read_index(toy_data / "train"), read_index(toy_data / "val")
    assert train["total"] == TINY_TRAIN_VIDEOS and [s["count"] for s in train["shards"]] == [16, 16]
    assert val["total"] == TINY_VAL_VIDEOS
    assert train["seed"] == TINY_SEED and val["seed"] == TINY_SEED + VAL_SEED_OFFSET
    assert train["num_frames"] == TINY_FRAMES and train["size"] == TINY_SIZE


def test_round_trip_gives_the_generated_videos(toy_data):
    dm = fit_datamodule(toy_data)
    keys = []
    for batch in dm.train_dataloader():
        assert batch["pixels"].shape == (4, TINY_FRAMES, 3, TINY_SIZE, TINY_SIZE)
        for key, pixels, caption, attributes in zip(batch["key"], batch["pixels"], batch["caption"],
                                                    batch["attributes"]):
            video = make_video(TINY_SEED, int(key), num_frames=TINY_FRAMES, size=TINY_SIZE)
            assert torch.equal(pixels, expected_pixels(TINY_SEED, key))
            assert caption == video.caption and attributes == json.loads(json.dumps(video.attributes))
            keys.append(key)
    assert len(keys) == dm.train_batches_per_rank() * 4 == TINY_TRAIN_VIDEOS
    assert len(set(keys)) > TINY_TRAIN_VIDEOS // 2  # resampled, but not one shard over and over

    val_batches = list(dm.val_dataloader())
    val_keys = [k for b in val_batches for k in b["key"]]
    assert val_keys == [f"{i:08d}" for i in range(TINY_VAL_VIDEOS)]  # val is read in order, whole
    for batch in val_batches:
        for key, pixels in zip(batch["key"], batch["pixels"]):
            assert torch.equal(pixels, expected_pixels(TINY_SEED + VAL_SEED_OFFSET, key))


def test_train_stream_is_reproducible(toy_data):
    def keys():
        return [k for b in fit_datamodule(toy_data).train_dataloader() for k in b["key"]]

    assert keys() == keys()
    other = [k for b in fit_datamodule(toy_data, seed=1).train_dataloader() for k in b["key"]]
    assert other != keys()


def test_train_stream_resumes_where_it_stopped(toy_data):
    def keys(consumed: int) -> list[list[str]]:
        return [b["key"] for b in fit_datamodule(toy_data, consumed_batches=consumed).train_dataloader()]

    epoch0, per_epoch = keys(0), fit_datamodule(toy_data).train_batches_per_rank()
    assert len(epoch0) == per_epoch
    assert keys(3) == epoch0[3:]  # a resumed run sees the batches an uninterrupted one would have
    epoch1 = keys(per_epoch)
    assert len(epoch1) == per_epoch and epoch1 != epoch0  # each epoch is a new draw
    assert keys(per_epoch + 2) == epoch1[2:]


def test_same_seed_gives_byte_identical_shards(tmp_path):
    a, b = write_tiny_data(tmp_path / "a"), write_tiny_data(tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 5  # 2 train shards + 1 val shard + 2 index files
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = write_tiny_data(tmp_path / "c", seed=TINY_SEED + 1)
    assert (a / "train/shard-000000.tar").read_bytes() != (c / "train/shard-000000.tar").read_bytes()


def test_missing_directory_is_a_clear_error(tmp_path):
    dm = ShardDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere/train does not exist.*oneforcing data toy --out"):
        dm.setup("fit")


def test_directory_without_index_is_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="has no index.json; it is empty"):
        ShardDataModule(root=str(tmp_path)).setup("fit")
    (tmp_path / "train" / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="has no index.json; it holds 1 .tar files"):
        ShardDataModule(root=str(tmp_path)).setup("fit")


def test_empty_index_is_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "index.json").write_text(json.dumps({"shards": [], "total": 0}))
    with pytest.raises(ValueError, match="has no samples"):
        ShardDataModule(root=str(tmp_path)).setup("fit")


def test_missing_shard_file_is_a_clear_error(tmp_path):
    root = write_tiny_data(tmp_path / "data")
    (root / "train" / "shard-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match="missing shards listed in index.json.*shard-000001.tar"):
        ShardDataModule(root=str(root)).setup("fit")


def test_too_little_data_for_one_batch_per_rank_is_a_clear_error(toy_data):
    dm = ShardDataModule(root=str(toy_data), batch_size=32, num_workers=0)
    dm.trainer = fake_trainer(rank=0, world=2)
    dm.setup("fit")
    with pytest.raises(ValueError, match="fewer than one batch per worker"):
        dm.train_batches_per_rank()


def corrupt_one_sample_per_shard(split_dir: Path) -> list[str]:
    """Rewrite each tar with one sample's pixels.safetensors replaced by garbage; returns the spoiled keys."""
    spoiled = []
    for shard in sorted(split_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        target = next(m.name for m, _ in members if m.name.endswith("pixels.safetensors"))
        spoiled.append(target.split(".")[0])
        with tarfile.open(shard, "w") as tar:
            for member, data in members:
                if member.name == target:
                    data = b"\x00garbage, not safetensors" * 8
                    member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    return spoiled


def test_corrupt_sample_is_skipped_counted_and_warned(tmp_path):
    root = write_tiny_data(tmp_path / "data")
    spoiled = corrupt_one_sample_per_shard(root / "train")
    dm = fit_datamodule(root)
    with pytest.warns(UserWarning, match=r"member pixels.safetensors is corrupt"):
        batches = list(dm.train_dataloader())
    assert len(batches) == dm.train_batches_per_rank()  # data keeps flowing: a full epoch of batches
    assert sum(int(b["num_skipped"]) for b in batches) > 0
    assert not {k for b in batches for k in b["key"]} & set(spoiled)


def test_truncated_shard_is_skipped_counted_and_warned(tmp_path):
    root = write_tiny_data(tmp_path / "data")
    shard = root / "train" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])  # cut mid-member
    dm = fit_datamodule(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(dm.train_dataloader())
    assert any("Skipping a corrupt" in str(w.message) for w in caught)
    assert len(batches) == dm.train_batches_per_rank()
    assert sum(int(b["num_skipped"]) for b in batches) > 0


def test_every_rank_gets_the_same_number_of_batches(toy_data, monkeypatch):
    counts, streams = [], []
    for rank in (0, 1):
        # webdataset seeds each rank's shard resampling from the process group (here: its env variables)
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = fit_datamodule(toy_data, rank=rank, world=2)
        batches = list(dm.train_dataloader())
        counts.append((dm.train_batches_per_rank(), len(batches)))
        streams.append([k for b in batches for k in b["key"]])
        val = list(dm.val_dataloader())
        assert sum(len(b["key"]) for b in val) == TINY_VAL_VIDEOS // 2
    assert counts[0] == counts[1] == (TINY_TRAIN_VIDEOS // (2 * 4), TINY_TRAIN_VIDEOS // (2 * 4))
    assert streams[0] != streams[1]  # the ranks read different samples
