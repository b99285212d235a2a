"""What the toy study costs: seconds per iteration of each of its runs, as the study runs them, and the total.

Each method's config is the one ``scripts/toy_study.py`` writes (the recipe, the exact teacher as the real score at
w = 1, the critic from the neural teacher, batch 4), trained ``--iterations`` iterations through ``oneforcing fit``,
``--jobs`` runs at a time on one thread each (the study's conditions: the numbers include the other job's
contention). The generator starts from the neural teacher's weights instead of the ODE init (the time of an
iteration does not depend on the weights). Timed: the mean of the iterations after ``--warmup``, and the ``ToyEvaluation`` pass at the end of
training (the in-training evaluation, every 100 iterations in the study). Projected: the study's
student stage in CPU-hours and in wall-clock hours at ``--jobs`` jobs.

    python benchmarks/study_cost.py [--iterations 12] [--jobs 2] [--data data/toy6] [--shared-gan-pass]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROBE = '''
import json, time
import lightning as L


class StudyProbe(L.Callback):
    """Seconds of each training iteration, the hooks of the callbacks before it (ToyEvaluation) included."""

    def __init__(self, out: str):
        self.out, self.times = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()
        self.times.append(self.end - self.start)

    def on_train_end(self, trainer, pl_module):  # after ToyEvaluation's end-of-training evaluation
        with open(self.out, "w") as f:
            json.dump({"times": self.times, "evaluation": time.perf_counter() - self.end}, f)
'''


def study_module():
    spec = importlib.util.spec_from_file_location("toy_study", REPO / "scripts" / "toy_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data", default="data/toy")
    parser.add_argument("--teacher", default="assets/toy_teacher.safetensors")
    parser.add_argument("--study-iterations", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shared-gan-pass", action="store_true", help="as the study's --shared-gan-pass")
    args = parser.parse_args()
    if not (REPO / args.data / "train" / "index.json").is_file():
        sys.exit(f"No toy data at {args.data}: run `oneforcing data toy --out {args.data} --num-videos 20000 --seed 0`.")
    toy_study = study_module()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "study_probe.py").write_text(PROBE)
        study_args = toy_study.build_parser().parse_args(
            ["--data", args.data, "--teacher", args.teacher, "--out", str(root / "study"), "--results",
             str(root / "kept"), "--artifacts", str(root / "weights"), "--iterations", str(args.iterations),
             "--eval-every", str(args.iterations),
             *(["--shared-gan-pass"] if args.shared_gan_pass else [])])
        study = toy_study.Study(study_args)
        configs = {}
        for method in toy_study.METHODS:
            path = study.config_of(method, 0, Path(args.teacher))
            cfg = yaml.safe_load(path.read_text())
            cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"]
                                           if c["class_path"].endswith("ToyEvaluation")]
            cfg["trainer"]["callbacks"].append({"class_path": "study_probe.StudyProbe",
                                                "init_args": {"out": str(root / f"{method}.json")}})
            cfg["trainer"]["logger"] = False
            cfg["trainer"]["enable_checkpointing"] = False
            cfg["trainer"]["default_root_dir"] = str(root / method)
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            configs[method] = path

        def run(method: str) -> None:
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
            result = subprocess.run([sys.executable, "-m", "oneforcing.cli", "fit", "--config", str(configs[method])],
                                    cwd=REPO, env=env, capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(f"{method} failed:\n{result.stderr[-3000:]}")
            print(f"  {method} done", flush=True)

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(run, configs))
        rows = {}
        for method in configs:
            probe = json.loads((root / f"{method}.json").read_text())
            timed = probe["times"][args.warmup:]
            rows[method] = {"iteration": sum(timed) / len(timed), "evaluation": probe["evaluation"]}
    print("| run | s / iteration | s / in-training evaluation |")
    print("|---|---|---|")
    for method, r in rows.items():
        print(f"| {method} | {r['iteration']:.2f} | {r['evaluation']:.1f} |")
    evals = args.study_iterations // 100
    total = args.seeds * sum(args.study_iterations * r["iteration"] + evals * r["evaluation"] for r in rows.values())
    print(f"students: {total / 3600:.1f} CPU-hours for {args.seeds} seeds x {args.study_iterations} iterations with an "
          f"evaluation every 100 ({total / 3600 / args.jobs:.1f} h wall at {args.jobs} jobs)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
