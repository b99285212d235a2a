"""`oneforcing plan`'s per-rank prediction against the measured peak of a 2-process CPU run, per engine.

Each engine trains the toy One-Forcing recipe (``configs/toy/one_forcing_framewise_1step.yaml``: generator, critic +
GAN head, EMA, frozen teacher; batch 2 per rank) for ``--iterations`` iterations through the CLI, 2 processes on
gloo. Measured: from the callbacks' ``setup`` (before the roles are built) to the end of training, the peak over
the run of the bytes of tensor storages alive at once, among those created in that window (``LiveBytes`` on the
real tensors: what ``torch.cuda.max_memory_allocated`` reports on a GPU, less the allocator's rounding; the
torch profiler's per-op accounting misses peaks inside backward nodes), the larger of the two ranks. The prediction is ``plan_module`` on the same config, engine and 2 devices, in this process.

    oneforcing data toy --out data/toy --num-videos 20000 --seed 0   # once
    python benchmarks/memory_plan.py [--iterations 3] [--engines ddp fsdp2 zero3 zero3_small_buckets]

``zero3_small_buckets`` sets DeepSpeed's reduce_bucket_size to 1e6 elements: with the default (5e8), each engine's
2 GB reduce bucket is most of the toy's memory, and the comparison would test little else.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import ENGINES, REPO, config_for  # noqa: E402  (the engines benchmark's configs)

SMALL_BUCKETS = {"class_path": "oneforcing.engines.deepspeed.DeepSpeedStrategy",
                 "init_args": {"stage": 3, "config": {"zero_optimization": {"reduce_bucket_size": 1000000}}}}
STRATEGIES = {"ddp": ENGINES["ddp"], "fsdp2": ENGINES["fsdp2"], "zero2": ENGINES["zero2"], "zero3": ENGINES["zero3"],
              "zero3_p0": ENGINES["zero3_p0"], "zero3_small_buckets": SMALL_BUCKETS}

PROBE = '''
import json
import lightning as L
from oneforcing.engines.memory import LiveBytes


class MemoryProbe(L.Callback):
    """Peak bytes of the tensor storages created from setup() to the end of training (alive at once)."""

    def __init__(self, out: str, warmup: int):
        self.out = out

    def setup(self, trainer, pl_module, stage):
        self.meter = LiveBytes()
        self.meter.__enter__()

    def on_train_end(self, trainer, pl_module):
        self.meter.__exit__(None, None, None)
        with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"peak": self.meter.peak}, f)
'''


def measure(engine: str, iterations: int, data: str, root: Path) -> tuple[int, Path]:
    out = root / engine
    out.mkdir()
    (root / "memory_probe.py").write_text(PROBE)
    config = config_for(STRATEGIES[engine], "32-true", iterations, 0, data, out, probe="memory_probe.MemoryProbe")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    result = subprocess.run([sys.executable, "-m", "oneforcing.cli", "fit", "--config", str(config)], cwd=REPO,
                            env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{engine} failed:\n{result.stderr[-3000:]}")
    return max(json.loads((out / f"rank{r}.json").read_text())["peak"] for r in (0, 1)), config


def predict(config: Path) -> int:
    from oneforcing.commands.plan import _config_objects, engine_from, plan_module

    module, datamodule, trainer = _config_objects(str(config), [])
    return plan_module(module, engine_from(trainer, None, 2), datamodule.batch_size).total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--data", default="data/toy")
    parser.add_argument("--engines", nargs="+", default=["ddp", "fsdp2", "zero3", "zero3_small_buckets"],
                        choices=list(STRATEGIES))
    args = parser.parse_args()
    if not (REPO / args.data / "train" / "index.json").is_file():
        sys.exit(f"No toy data at {args.data}: run `oneforcing data toy --out {args.data} --num-videos 20000 --seed 0`.")
    mib = 2 ** 20
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, tmp)  # the probe callback's module, which the configs name, for the prediction's parse
        for engine in args.engines:
            measured, config = measure(engine, args.iterations, args.data, Path(tmp))
            predicted = predict(config)
            rows[engine] = {"predicted": predicted, "measured": measured}
            print(f"{engine}: predicted {predicted / mib:.0f} MiB, measured {measured / mib:.0f} MiB", flush=True)
    print("| engine | predicted per rank (MiB) | measured peak per rank (MiB) | predicted / measured |")
    print("|---|---|---|---|")
    for engine, r in rows.items():
        print(f"| {engine} | {r['predicted'] / mib:.0f} | {r['measured'] / mib:.0f} | "
              f"{r['predicted'] / r['measured']:.2f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
