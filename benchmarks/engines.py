"""Seconds per iteration and memory per rank of the toy One-Forcing recipe under each engine, 2 CPU processes.

Each engine trains ``configs/toy/one_forcing_framewise_1step.yaml`` (the real toy sizes: 6-layer dim-128 Wan,
12 frames of 32×32, batch 2 per rank; generator, critic, GAN head, EMA, frozen teacher) for ``--iterations``
iterations through the CLI, one engine after the other in this one run, so the figures compare side by side.
A probe callback records on every rank: mean seconds per iteration after ``--warmup`` iterations (whole
generator/critic cycles: a generator step every 5th iteration), the bytes each rank holds of parameters,
gradients and optimizer state (local shards under FSDP2, partitions under ZeRO-3; DeepSpeed's fp32 master
partitions count as optimizer state; its gradient buffers are not counted), and the peak RSS.

    oneforcing data toy --out data/toy --num-videos 20000 --seed 0   # once
    python benchmarks/engines.py [--iterations 12] [--warmup 2] [--engines ddp fsdp2 zero2 zero3 zero3_p0 ddp_checkpointed]

``zero3`` keeps DeepSpeed's default ``stage3_param_persistence_threshold`` (1e5 elements): every toy parameter is
smaller and stays whole on every rank beside its partition, so at this scale ZeRO-3 holds *more* than ZeRO-2.
``zero3_p0`` sets the threshold to 0 and partitions every parameter, as ZeRO-3 does a 1.3B Wan's weight matrices
(2.4 M elements each): that row is the one to read for scale.

``ddp_checkpointed`` is DDP with the generator's and the critic's Wan blocks recomputed in backward
(``activation_checkpointing``): its time and peak memory against ``ddp`` are the cost and the saving.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "toy" / "one_forcing_framewise_1step.yaml"
# zero3_p0: ZeRO-3 partitioning every parameter, as it does a 1.3B Wan's 2.4M-element weight matrices. DeepSpeed's
# default keeps parameters of at most 1e5 elements whole on every rank (stage3_param_persistence_threshold), and
# every toy parameter is below it (the largest: 128 × 512 = 65 536)
ZERO3_P0 = {"class_path": "oneforcing.engines.deepspeed.DeepSpeedStrategy",
            "init_args": {"stage": 3, "config": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}}}
# zero3_p0_noprefetch: the same without ZeRO-3's parameter prefetch (stage3_prefetch_bucket_size 0): the roll-out's
# calls change their module order from call to call, which invalidates the prefetch trace
ZERO3_P0_NOPREFETCH = {"class_path": ZERO3_P0["class_path"],
                       "init_args": {"stage": 3, "config": {"zero_optimization": {
                           "stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 0}}}}
ENGINES = {"ddp": "ddp_find_unused_parameters_true", "fsdp2": "fsdp2", "fsdp2_bf16": "fsdp2_bf16", "zero2": "zero2",
           "zero3": "zero3", "zero3_p0": ZERO3_P0, "zero3_p0_noprefetch": ZERO3_P0_NOPREFETCH,
           "ddp_checkpointed": "ddp_find_unused_parameters_true"}
PRECISION = {"ddp": "32-true", "fsdp2": "32-true", "fsdp2_bf16": "bf16-mixed", "zero2": "32-true", "zero3": "32-true",
             "zero3_p0": "32-true", "zero3_p0_noprefetch": "32-true", "ddp_checkpointed": "32-true"}
MODEL = {"ddp_checkpointed": {"activation_checkpointing": ["generator", "critic"]}}  # model settings of a variant

PROBE = '''
import json, resource, time
import lightning as L
import torch
from torch.distributed.tensor import DTensor


def local_bytes(tensors):
    """Bytes this rank holds: an FSDP2 shard; a ZeRO-3 partition (``ds_tensor``) and, for a parameter ZeRO-3
    keeps whole on every rank (``ds_persist``: at most ``stage3_param_persistence_threshold`` elements), its whole
    data too; else the whole tensor."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        if hasattr(t, "ds_id"):
            total += t.ds_tensor.numel() * t.ds_tensor.element_size() + t.data.numel() * t.data.element_size()
            continue
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def optimizer_tensors(optimizer):
    """AdamW's state; for a DeepSpeed ZeRO optimizer, its inner AdamW's state and the fp32 master partitions it
    steps (copies beside the module's parameters)."""
    from deepspeed.runtime.base_optimizer import ZeROOptimizer

    tensors = []
    if isinstance(optimizer, ZeROOptimizer):
        optimizer = optimizer.optimizer
        tensors += [p for group in optimizer.param_groups for p in group["params"]]
    return tensors + [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0]


class EngineProbe(L.Callback):
    def __init__(self, out: str, warmup: int):
        self.out, self.warmup, self.times, self.held = out, warmup, [], {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self.start)
        params = list(pl_module.parameters())
        states = [t for opt in trainer.optimizers for t in optimizer_tensors(opt)]
        held = {"parameters": local_bytes(params), "optimizer": local_bytes(states)}
        grads = local_bytes(p.grad for p in params)
        self.held = {**held, "gradients": max(grads, self.held.get("gradients", 0))}

    def on_train_end(self, trainer, pl_module):
        timed = self.times[self.warmup:]
        record = dict(self.held, seconds_per_iteration=sum(timed) / len(timed),
                      peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(record, f)
'''


def config_for(strategy: str | dict, precision: str, iterations: int, warmup: int, data: str, out: Path,
               model: dict | None = None, probe: str = "engine_probe.EngineProbe") -> Path:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["model"]["init_args"].update(model or {})
    trainer = recipe["trainer"]
    trainer.update(accelerator="cpu", devices=2, strategy=strategy, precision=precision, max_steps=iterations,
                   limit_val_batches=0,
                   enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, logger=False,
                   default_root_dir=str(out))  # where LightningCLI saves the resolved config.yaml (not the repo)
    trainer["callbacks"] = [{"class_path": probe, "init_args": {"out": str(out), "warmup": warmup}}]
    recipe["data"]["init_args"].update(root=data, num_workers=0)
    path = out / "recipe.yaml"  # LightningCLI writes its resolved config.yaml beside it
    path.write_text(yaml.safe_dump(recipe))
    return path


def run(engine: str, iterations: int, warmup: int, data: str, root: Path) -> dict:
    out = root / engine
    out.mkdir()
    (root / "engine_probe.py").write_text(PROBE)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    config = config_for(ENGINES[engine], PRECISION[engine], iterations, warmup, data, out, MODEL.get(engine))
    result = subprocess.run([sys.executable, "-m", "oneforcing.cli", "fit", "--config", str(config)], cwd=REPO,
                            env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{engine} failed:\n{result.stderr[-3000:]}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {k: max(r[k] for r in ranks) for k in ranks[0]}  # the busier rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data", default="data/toy")
    parser.add_argument("--engines", nargs="+", default=["ddp", "fsdp2", "zero2", "zero3", "zero3_p0", "ddp_checkpointed"], choices=list(ENGINES),
                        help="engines to run, side by side (fsdp2_bf16 too: bf16 on the CPU)")
    args = parser.parse_args()
    if not (REPO / args.data / "train" / "index.json").is_file():
        sys.exit(f"No toy data at {args.data}: run `oneforcing data toy --out {args.data} --num-videos 20000 --seed 0`.")
    with tempfile.TemporaryDirectory() as tmp:
        results = {e: run(e, args.iterations, args.warmup, args.data, Path(tmp)) for e in args.engines}
    base = results[args.engines[0]]
    mib = 2 ** 20
    print(f"| engine (precision) | s / iteration | × {args.engines[0]} | parameters + optimizer per rank (MiB) | × | "
          "gradients (MiB) | peak RSS per rank (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for engine, r in results.items():
        held, base_held = r["parameters"] + r["optimizer"], base["parameters"] + base["optimizer"]
        print(f"| {engine} ({PRECISION[engine]}) | {r['seconds_per_iteration']:.2f} | {r['seconds_per_iteration'] / base['seconds_per_iteration']:.2f} "
              f"| {held / mib:.1f} | {held / base_held:.2f} | {r['gradients'] / mib:.1f} | {r['peak_rss'] / mib:.0f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
