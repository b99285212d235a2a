"""The toy-world comparison of issue #6: every method, several training seeds, evaluated and compared.

From the shipped teacher (``assets/toy_teacher.safetensors``) and a toy data root, per seed s:
  1. ODE init: the framewise causal student regresses onto the teacher's ODE trajectories (4 steps);
  2. from it, each student (seed s): Self-Forcing DMD at 4 and at 1 step; One-Forcing (DMD + GAN) at 1 step,
     framewise and chunkwise, each with and without first-frame enhancement (a first block at 4 steps);
     causal consistency distillation at 1 step;
  3. ``oneforcing evaluate`` on every export (and on the teacher at 48 steps, one sampling seed per s);
then ``oneforcing compare`` writes the table, the plots and the GIF grid under ``--out/report``.
Training runs go two at a time (``--jobs``), each on one thread: on 2 CPU cores this is the fastest layout.

    python scripts/toy_comparison.py --data data/toy --seeds 0 1 2 --iterations 60
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ONEFORCING = [sys.executable, "-m", "oneforcing.cli"]  # the console script of this interpreter's environment
FIRST_BLOCK_4STEP = ["--model.init_args.first_block_steps", "[1000, 750, 500, 250]"]
# ~12 generator updates are too few for the configs' EMA (0.99 from iteration 50) to mean anything: the DMD
# students export their raw generator. Consistency keeps its EMA, which is its target network.
NO_EMA = ["--model.init_args.ema_start", "null"]
STUDENTS: dict[str, tuple[str, list[str]]] = {
    "sf_dmd_4step": ("configs/toy/self_forcing_dmd_4step.yaml", NO_EMA),
    "sf_dmd_1step": ("configs/toy/self_forcing_dmd_1step.yaml", NO_EMA),
    "of_framewise_1step": ("configs/toy/one_forcing_framewise_1step.yaml", NO_EMA),
    "of_framewise_1step_ffe": ("configs/toy/one_forcing_framewise_first4then1.yaml", NO_EMA),
    "of_chunkwise_1step": ("configs/toy/one_forcing_chunkwise.yaml", NO_EMA),
    "of_chunkwise_1step_ffe": ("configs/toy/one_forcing_chunkwise.yaml",
                               [*NO_EMA, "--model.init_args.first_block_size", "3", *FIRST_BLOCK_4STEP]),
    "consistency_1step": ("configs/toy/consistency_1step.yaml", []),
}


def run(cmd: list[str], log: Path) -> None:
    """One subprocess on one thread, its output in ``log``; a failure stops the study with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    if code != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[2:6])} ... failed (exit {code}); see {log}:\n{tail}")
    print(f"  done in {time.time() - start:5.0f} s: {log.stem}", flush=True)


def fit(config: str, name: str, seed: int, out: Path, iterations: int, extra: list[str]) -> Path:
    """Train one run and return its exported weights."""
    weights = out / name / "version_0" / "weights.safetensors"
    if weights.is_file():
        return weights  # already trained (the study resumes where it stopped)
    run([*ONEFORCING, "fit", "--config", config, "--seed_everything", str(seed), "--model.init_args.seed", str(seed),
         "--trainer.max_steps", str(iterations), "--trainer.val_check_interval", str(iterations),
         "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", name,
         "--trainer.logger.init_args.version", "0", *extra], out / "logs" / f"{name}.log")
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/toy", help="toy data root (train/ and val/ splits)")
    parser.add_argument("--teacher", default="assets/toy_teacher.safetensors")
    parser.add_argument("--out", default="runs/comparison")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=60, help="iterations of each student")
    parser.add_argument("--batch-size", type=int, default=2, help="students' batch size")
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="students' generator and critic learning rate (the configs' 2e-5 barely moves a toy "
                             "student in a budget of ~20 generator updates)")
    parser.add_argument("--ode-iterations", type=int, default=150)
    parser.add_argument("--trajectories", type=int, default=192)
    parser.add_argument("--eval-videos", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    for split in ("train", "val"):
        if not (Path(args.data) / split / "index.json").is_file():
            sys.exit(f"{args.data}/{split} holds no toy shards; write them with "
                     f"`oneforcing data toy --out {args.data} --num-videos 20000 --seed 0`.")

    print("== teacher ODE trajectories", flush=True)
    for split, count in (("train", args.trajectories), ("val", 8)):
        if not (out / "ode" / split / "index.json").is_file():
            run([*ONEFORCING, "data", "trajectories", "--teacher", args.teacher, "--source", f"{args.data}/{split}",
                 "--out", str(out / "ode" / split), "--num-videos", str(count), "--steps", "48", "--shift", "5",
                 "--guidance-scale", "4"], out / "logs" / f"trajectories_{split}.log")

    data = ["--data.init_args.root", args.data, "--model.init_args.teacher_weights", args.teacher,
            "--data.init_args.batch_size", str(args.batch_size), "--model.init_args.generator_lr", str(args.lr),
            "--model.init_args.critic_lr", str(args.lr)]
    with ThreadPoolExecutor(args.jobs) as pool:
        print("== ODE init per seed", flush=True)
        ode = dict(zip(args.seeds, pool.map(lambda s: fit(
            "configs/toy/ode_init_framewise.yaml", f"ode_init_seed{s}", s, out, args.ode_iterations,
            ["--data.init_args.root", str(out / "ode"), "--model.init_args.generator_weights", args.teacher]),
            args.seeds)))
        print("== students per seed", flush=True)
        jobs = [(m, s) for s in args.seeds for m in STUDENTS]
        trained = dict(zip(jobs, pool.map(lambda job: fit(
            STUDENTS[job[0]][0], f"{job[0]}_seed{job[1]}", job[1], out, args.iterations,
            [*data, "--model.init_args.generator_weights", str(ode[job[1]]), *STUDENTS[job[0]][1]]), jobs)))

        print("== evaluation", flush=True)
        evaluations = [("teacher", s, args.teacher) for s in args.seeds]
        evaluations += [("ode_init", s, w) for s, w in ode.items()]
        evaluations += [(m, s, w) for (m, s), w in trained.items()]

        def evaluate(item: tuple[str, int, Path]) -> Path:
            method, seed, weights = item
            target = out / "eval" / f"{method}_seed{seed}"
            if not (target / "metrics.json").is_file():
                sweep = "[12, 24, 48]" if method == "teacher" else "[1, 2, 4]"
                run([*ONEFORCING, "evaluate", "--checkpoint", str(weights), "--label", method, "--seed", str(seed),
                     "--num-videos", str(args.eval_videos), "--steps-sweep", sweep, "--out", str(target)],
                    out / "logs" / f"eval_{method}_seed{seed}.log")
            return target

        targets = list(pool.map(evaluate, evaluations))
    print("== report", flush=True)
    run([*ONEFORCING, "compare", *map(str, targets), "--out", str(out / "report")], out / "logs" / "compare.log")
    print(f"Report: {out / 'report' / 'report.md'}")


if __name__ == "__main__":
    main()
