"""The train stream resumes exactly: after k consumed batches it yields what an uninterrupted stream yields next."""

from types import SimpleNamespace

import torch

from oneforcing.data.datamodule import ResumableStream, ShardDataModule


def fake_trainer(consumed: int):
    progress = SimpleNamespace(total=SimpleNamespace(completed=consumed))
    return SimpleNamespace(global_rank=0, world_size=1,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))


def stream(root, consumed: int):
    dm = ShardDataModule(root=str(root), batch_size=4, num_workers=0, shuffle_buffer=8, seed=5)
    dm.trainer = fake_trainer(consumed)
    dm.setup("fit")
    return dm, ResumableStream(dm)


def test_resumed_stream_continues_where_it_stopped_across_epochs(toy_data):
    dm, s = stream(toy_data, 0)
    per_epoch = len(s)  # 32 videos at batch 4 -> 8
    uninterrupted = [b["key"] for b in s]
    dm.trainer = fake_trainer(per_epoch)  # the next epoch is a different, epoch-seeded order
    uninterrupted += [b["key"] for b in s]
    assert uninterrupted[:per_epoch] != uninterrupted[per_epoch:]
    for k in (3, per_epoch + 2):
        _, resumed = stream(toy_data, k)
        epoch_end = (k // per_epoch + 1) * per_epoch
        assert [b["key"] for b in resumed] == uninterrupted[k:epoch_end]


def test_same_epoch_same_batches_on_replay(toy_data):
    _, a = stream(toy_data, 0)
    _, b = stream(toy_data, 0)
    for x, y in zip(a, b):
        assert x["key"] == y["key"] and torch.equal(x["pixels"], y["pixels"])
