"""Is the data loader fast enough? Loader throughput vs the toy teacher's training throughput, in one run.

Side by side, in samples per second:
  (a) the ``ShardDataModule`` train loader (resampled shards, shuffle buffer, decode, collate) iterating
      ``--batches`` batches of 8 from ``--data`` (read only) with ``num_workers`` 0 and 1; the first batch
      (worker start-up, the first half of the shuffle buffer) is not timed;
  (b) one training step of the toy teacher (``configs/toy/teacher.yaml``'s backbone: 6 layers, 4 heads of
      32, ffn 512, 12 latent channels, text dim 46): encode pixels, flow-matching forward and backward,
      gradient clipping at 1.0, AdamW step, on batches of 8 from the same loader; ``--warmup-steps``
      untimed, then ``--steps`` timed; once per ``--precisions`` entry (``32-true``; ``bf16-mixed`` is the
      teacher config's: the forward inside Lightning's own ``MixedPrecision`` plugin context).
The loader must be at least 10× faster than training consumes, so that data never stalls a step. The
machine may be shared (a training may be running), so absolute figures move; the ratio is what matters.
Both sides run with the same ``--threads``.

    python benchmarks/data_vs_train_throughput.py [--data data/toy20k] [--batches 60] [--steps 6] \\
        [--threads N] [--precisions 32-true bf16-mixed]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from oneforcing.data.datamodule import ShardDataModule
from oneforcing.lightning_modules.teacher import TeacherModule

TOY_BACKBONE = dict(num_layers=6, num_attention_heads=4, attention_head_dim=32, ffn_dim=512,
                    in_channels=12, out_channels=12, text_dim=46)  # configs/toy/teacher.yaml
REQUIRED_RATIO = 10.0
PRECISIONS = ("32-true", "bf16-mixed")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/toy20k",
                   help="root holding train/ shards written by `oneforcing data toy` (read only)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=60, help="timed loader batches per num_workers setting")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="num_workers settings to measure")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed training steps")
    p.add_argument("--steps", type=int, default=6, help="timed training steps")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                   help="training precisions to time; the loader is compared with the fastest")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads, 0 for torch's default. 1 by default: on a shared 2-core "
                        "machine two threads contend with the other processes (measured here: 7-17 s instead "
                        "of 2 s per training step, and 125 instead of 5 ms per loader batch)")
    return p


def loader_throughput(root: str, batch_size: int, num_workers: int, batches: int) -> tuple[float, int]:
    """(samples/s over ``batches`` batches after the first, samples skipped as corrupt)."""
    data = ShardDataModule(root=root, batch_size=batch_size, num_workers=num_workers)
    data.setup("fit")
    iterator = iter(data.train_dataloader())
    skipped = int(next(iterator)["num_skipped"])  # worker start-up, first half of the shuffle buffer: untimed
    start = time.perf_counter()
    for batch in itertools.islice(iterator, batches):
        skipped += int(batch["num_skipped"])
    seconds = time.perf_counter() - start
    del iterator  # ends the worker process
    return batches * batch_size / seconds, skipped


def training_throughput(batches: list[dict], warmup: int, steps: int, precision: str = "32-true") -> float:
    """Samples/s of teacher training steps (the loss of ``TeacherModule.training_step``, without logging)."""
    plugin = MixedPrecision(precision, "cpu") if precision == "bf16-mixed" else Precision()  # Lightning's own
    module = TeacherModule(backbone=TOY_BACKBONE)
    module.configure_model()
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]
    generator = torch.Generator().manual_seed(0)

    def step(batch: dict) -> None:
        x0 = module.latents_of(batch)  # (B, F, 12, 16, 16)
        context = module.encode_prompts(batch["caption"])
        B = x0.shape[0]
        sigma = module.draw_sigma(B, generator)
        with plugin.forward_context():
            loss = module.flow_matching_loss(x0, context, sigma, torch.randn(x0.shape, generator=generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()

    for i in range(warmup):
        step(batches[i % len(batches)])
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    seconds = time.perf_counter() - start
    return steps * batches[0]["pixels"].shape[0] / seconds


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"Machine may be shared (another training may be running): absolute figures vary, "
          f"the ratio is what matters. torch threads: {torch.get_num_threads()}.\n")

    loader_rows, train_rows = [], []
    for workers in args.workers:
        rate, skipped = loader_throughput(args.data, args.batch_size, workers, args.batches)
        note = f"{args.batches} batches" + (f", {skipped} corrupt samples skipped" if skipped else "")
        loader_rows.append((f"data loader, num_workers={workers}", rate, note))

    data = ShardDataModule(root=args.data, batch_size=args.batch_size, num_workers=0)
    data.setup("fit")
    batches = list(itertools.islice(iter(data.train_dataloader()), 4))
    for precision in args.precisions:
        torch.manual_seed(0)
        rate = training_throughput(batches, args.warmup_steps, args.steps, precision)
        train_rows.append((f"teacher training step (fwd + bwd + AdamW), {precision}", rate,
                           f"{args.steps} steps after {args.warmup_steps} warm-up"))
    train = max(rate for _, rate, _ in train_rows)  # the fastest consumer is the one the loader must feed

    print(f"| stage (batch {args.batch_size}) | samples/s | ms per batch | × training | note |")
    print("|---|---|---|---|---|")
    for name, rate, note in loader_rows + train_rows:
        print(f"| {name} | {rate:.1f} | {1000 * args.batch_size / rate:.1f} | {rate / train:.1f} | {note} |")
    slowest = min(rate for _, rate, _ in loader_rows)
    verdict = "OK" if slowest >= REQUIRED_RATIO * train else "TOO SLOW"
    ratio = slowest / train
    print(f"\nSlowest loader / fastest training = {ratio:.1f}× (required ≥ {REQUIRED_RATIO:.0f}×): {verdict}.")


if __name__ == "__main__":
    main()
