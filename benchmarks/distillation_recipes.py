"""Iteration time and peak memory of each distillation recipe on the toy backbone, framewise vs chunkwise.

Each recipe runs in its own subprocess (so that peak RSS is its own) for ``--iterations`` iterations of the
real DistillationModule through a Lightning Trainer on synthetic batches (timing does not depend on the
weights, so random teacher weights are used). Reported: mean seconds per iteration after warm-up (an
iteration is one critic step plus, every 5th, a generator step, as in the papers) and peak RSS.

    python benchmarks/distillation_recipes.py [--iterations 10] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

RECIPES = {
    "ODE init, framewise": dict(objective="ode", block_size=1, steps=[1000, 750, 500, 250]),
    "ODE init, chunkwise": dict(objective="ode", block_size=3, steps=[1000, 750, 500, 250]),
    "SF DMD 1-step, framewise": dict(objective="dmd", block_size=1, steps=[1000]),
    "SF DMD 1-step, chunkwise": dict(objective="dmd", block_size=3, steps=[1000]),
    "SF DMD 4-step, framewise": dict(objective="dmd", block_size=1, steps=[1000, 750, 500, 250]),
    "SF DMD 4-step, chunkwise": dict(objective="dmd", block_size=3, steps=[1000, 750, 500, 250]),
    "One-Forcing (DMD+GAN) 1-step, framewise": dict(objective="dmd+gan", block_size=1, steps=[1000]),
    "One-Forcing (DMD+GAN) 1-step, chunkwise": dict(objective="dmd+gan", block_size=3, steps=[1000]),
    "One-Forcing, shared flow pass, framewise": dict(objective="dmd+gan shared", block_size=1, steps=[1000]),
    "One-Forcing, shared flow pass + D every 5th, framewise": dict(objective="dmd+gan shared every5", block_size=1,
                                                                    steps=[1000]),
    "Consistency 1-step, framewise": dict(objective="cd", block_size=1, steps=[1000]),
    # the cost of the reference's cross-block cache gradient: a generator step every iteration isolates it
    "SF DMD 4-step, framewise, G every iteration, detached cache": dict(objective="dmd", block_size=1,
                                                                       steps=[1000, 750, 500, 250], generator_every=1),
    "SF DMD 4-step, framewise, G every iteration, cache_gradient": dict(objective="dmd", block_size=1,
                                                                       steps=[1000, 750, 500, 250], generator_every=1,
                                                                       cache_gradient=True),
}
GAN_TOY = dict(weight=0.03, feature_layers=[4, 5], num_registers=2)
TOY = dict(num_layers=6, num_attention_heads=4, attention_head_dim=32, ffn_dim=512, in_channels=12,
           out_channels=12, text_dim=46)


def run_one(spec: dict, iterations: int, warmup: int, batch_size: int) -> dict:
    """Runs inside the subprocess."""
    import lightning as L
    import torch
    from safetensors.torch import save_file

    from oneforcing.lightning_modules.distillation import DistillationModule
    from oneforcing.models.flow_matching import warped_step_sigmas
    from oneforcing.models.wan import WanBackbone, WanConfig
    from oneforcing.objectives.consistency import ConsistencyDistillation
    from oneforcing.objectives.dmd import DMD
    from oneforcing.objectives.gan import GAN
    from oneforcing.objectives.trajectory import TrajectoryDistillation

    torch.manual_seed(0)
    teacher = tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False).name
    save_file({f"model.{k}": v for k, v in WanBackbone(WanConfig(**TOY)).state_dict().items()}, teacher)
    kind = spec["objective"]
    objectives = {
        "dmd": lambda: [DMD(guidance_scale=4.0)],
        "dmd+gan": lambda: [DMD(guidance_scale=6.0), GAN(**GAN_TOY)],
        "dmd+gan shared": lambda: [DMD(guidance_scale=6.0, train_critic=False), GAN(**GAN_TOY, shared_flow_pass=True)],
        "dmd+gan shared every5": lambda: [DMD(guidance_scale=6.0, train_critic=False),
                                          GAN(**GAN_TOY, shared_flow_pass=True, discriminator_update_every=5)],
        "ode": lambda: [TrajectoryDistillation()],
        "cd": lambda: [ConsistencyDistillation()],
    }[kind]()
    module = DistillationModule(objectives, backbone=TOY, teacher_weights=None if kind == "ode" else teacher,
                                generator_weights=teacher, block_size=spec["block_size"], denoising_steps=spec["steps"],
                                generator_update_every=spec.get("generator_every", 5 if kind.startswith("dmd") else 1),
                                ema_start=0 if kind == "cd" else None, cache_gradient=spec.get("cache_gradient", False))
    g = torch.Generator().manual_seed(0)
    K = len(spec["steps"])
    batch = {"caption": ["a large red circle moving left quickly"] * batch_size,
             "pixels": torch.rand(batch_size, 12, 3, 32, 32, generator=g) * 2 - 1,
             "trajectory": torch.randn(batch_size, K, 12, 12, 16, 16, generator=g),
             "trajectory_sigmas": torch.tensor(warped_step_sigmas(spec["steps"], 5.0)).expand(batch_size, K),
             "ode_output": torch.randn(batch_size, 12, 12, 16, 16, generator=g), "num_skipped": torch.tensor(0)}
    times = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *args):
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args):
            times.append(time.perf_counter() - self.start)

    trainer = L.Trainer(accelerator="cpu", max_steps=warmup + iterations, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[Timer()])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch] * (warmup + iterations), batch_size=None))
    timed = times[warmup:]
    return dict(seconds_per_iteration=sum(timed) / len(timed),
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--only", type=str, default=None,
                        help="comma-separated substrings; run only the recipes whose names contain one")
    parser.add_argument("--recipe", type=str, default=None, help=argparse.SUPPRESS)  # subprocess entry
    args = parser.parse_args()
    if args.recipe:
        print(json.dumps(run_one(RECIPES[args.recipe], args.iterations, args.warmup, args.batch_size)))
        return
    results = {}
    wanted = [w.strip() for w in args.only.split(",")] if args.only else None
    for name in RECIPES:
        if wanted and not any(w in name for w in wanted):
            continue
        out = subprocess.run([sys.executable, __file__, "--recipe", name, "--iterations", str(args.iterations),
                              "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)],
                             capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"| recipe (toy, batch {args.batch_size}, 12 latent frames) | s / iteration | peak RSS MB |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds_per_iteration']:.2f} | {r['peak_rss_mb']:.0f} |")
    for kind in ("ODE init", "SF DMD 1-step", "SF DMD 4-step", "One-Forcing (DMD+GAN) 1-step"):
        if f"{kind}, framewise" not in results or f"{kind}, chunkwise" not in results:
            continue
        fw, cw = results[f"{kind}, framewise"], results[f"{kind}, chunkwise"]
        print(f"\n{kind}: framewise / chunkwise iteration time = "
              f"{fw['seconds_per_iteration'] / cw['seconds_per_iteration']:.2f}x", end="")
    for name, gan in results.items():
        if "One-Forcing" not in name:
            continue
        layout = name.rsplit(", ", 1)[1]
        dmd = results.get(f"SF DMD 1-step, {layout}")
        if dmd is not None:
            print(f"\nDMD+GAN / DMD-only iteration time, {name}: "
                  f"{gan['seconds_per_iteration'] / dmd['seconds_per_iteration']:.2f}x (goal <= 1.3x)", end="")
    detached = results.get("SF DMD 4-step, framewise, G every iteration, detached cache")
    kept = results.get("SF DMD 4-step, framewise, G every iteration, cache_gradient")
    if detached and kept:
        print(f"\ncache_gradient / detached cache: iteration time "
              f"{kept['seconds_per_iteration'] / detached['seconds_per_iteration']:.2f}x, peak RSS "
              f"{kept['peak_rss_mb'] / detached['peak_rss_mb']:.2f}x", end="")
    print()


if __name__ == "__main__":
    main()
