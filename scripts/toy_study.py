"""The toy study: every method from one ODE init, the exact teacher as the real score, over seeds.

From a toy data root and the neural teacher (the critic's starting point), in ``--out`` (working files: shards,
checkpoints, evaluations with their sample tensors), ``--results`` (the documents that are kept and committed: a
few hundred kB per run) and ``--artifacts`` (the weights that are kept: the demo's and the tests' students):
  1. ``OUT/ode``: ODE trajectories of the exact teacher (``oneforcing data trajectories --teacher exact``, 48 Euler
     steps at shift 5, snapshots at the 4 warped steps);
  2. ``ARTIFACTS/ode_init.safetensors``: one ODE init, the framewise causal student regressed onto them from
     the neural teacher's weights (``configs/toy/ode_init_framewise.yaml``), or the export given by ``--ode-init``;
     every student starts from it, and ``RESULTS/ode_init/`` holds its evaluation;
  3. each method (``METHODS``) for each seed, ``--iterations`` iterations at batch ``--batch-size``, the exact
     teacher as the real score (DMD) / ODE teacher (consistency), the critic from the neural teacher; the
     ``ToyEvaluation`` callback logs ``eval/*`` every ``--eval-every`` iterations, when a checkpoint is written
     too; then ``oneforcing evaluate`` of its export into ``OUT/eval/<run>``. Kept in ``RESULTS/<method>_seed<s>/``:
     the evaluation (``metrics.json``, ``metrics.md``, ``samples.gif``), the TensorBoard events (``events/``: the
     learning curves), the run's ``config.yaml`` and ``command.txt``; for seed 0 the float16 weights go to
     ``ARTIFACTS/<method>_seed0.safetensors`` (the demo's students);
  4. ``RESULTS/report/``: ``oneforcing compare``'s table, ``curves.png`` (each eval metric against iterations, per
     method the mean over seeds with a band of ± one sample std), ``commands.md`` (every command run), ``claims.md``
     (each claim's A − B against the seed spread), ``summary.md`` (the README's table), ``convergence.md`` (each
     curve's change over its last 300 iterations against the seed spread) and ``milestones.md`` (each curve every
     1000 iterations).

Every run has the data's frame count (``oneforcing data toy --num-frames``); a recipe's gradient window and first
block are scaled with it (``scaled_to``: 8 and 4 of 12 frames are 4 and 2 of 6).

A run whose ``RESULTS/<run>/metrics.json`` exists is done; an interrupted training resumes from its
``OUT/runs/<run>/version_0/checkpoints/last.ckpt``. So the study runs in parts (run the same command again), and a
part whose working files are lost loses only its runs in flight. Trainings go ``--jobs`` at a time, each on one
thread. Guidance: the exact teacher's conditional posterior *is* the bank's distribution, so the study samples and
distils at w = 1 (``--guidance-scale``): the precision and coverage against the bank then measure each method
against a target it can reach exactly. Each run is reproduced by ``oneforcing fit --config
RESULTS/<run>/config.yaml`` (with its ``--out`` paths).

    python scripts/toy_study.py --data data/toy --teacher assets/toy_teacher.safetensors --out runs/study \
        --results docs/study --artifacts assets/study
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from oneforcing.objectives.consistency import ConsistencyDistillation
from oneforcing.objectives.dmd import DMD
from oneforcing.objectives.gan import GAN

ONEFORCING = [sys.executable, "-m", "oneforcing.cli"]  # the console script of this interpreter's environment
FIRST_BLOCK_4STEP = {"first_block_steps": [1000, 750, 500, 250]}
# method -> (recipe, model settings over the recipe's)
METHODS: dict[str, tuple[str, dict]] = {
    "sf_dmd_4step": ("configs/toy/self_forcing_dmd_4step.yaml", {}),
    "sf_dmd_1step": ("configs/toy/self_forcing_dmd_1step.yaml", {}),
    "of_framewise_1step": ("configs/toy/one_forcing_framewise_1step.yaml", {}),
    "of_framewise_1step_ffe": ("configs/toy/one_forcing_framewise_first4then1.yaml", {}),
    "of_chunkwise_1step": ("configs/toy/one_forcing_chunkwise.yaml", {}),
    "of_chunkwise_1step_ffe": ("configs/toy/one_forcing_chunkwise.yaml", {"first_block_size": 3, **FIRST_BLOCK_4STEP}),
    "consistency_1step": ("configs/toy/consistency_1step.yaml", {}),
}
# The paper's four claims as comparisons of two methods (A against B) on the metrics that bear on them
CLAIMS: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("1-step DMD blurs: Self-Forcing DMD at 1 step against 4 steps", "sf_dmd_1step", "sf_dmd_4step",
     ("sharpness_ratio", "fd", "bank_precision", "bank_coverage")),
    ("The GAN fixes 1-step DMD: One-Forcing framewise against Self-Forcing DMD, both 1 step", "of_framewise_1step",
     "sf_dmd_1step", ("sharpness_ratio", "fd", "bank_precision", "bank_coverage", "attr_colour")),
    ("Consistency distillation's motion is weak at 1 step: causal consistency against One-Forcing framewise",
     "consistency_1step", "of_framewise_1step", ("dynamics_ratio", "attr_direction", "flicker_excess", "fd")),
    ("Framewise matches chunkwise: One-Forcing framewise against chunkwise, both 1 step", "of_framewise_1step",
     "of_chunkwise_1step", ("fd", "sharpness_ratio", "bank_precision", "bank_coverage")),
]
# The README's summary: (display name, method) rows and (header, metric, digits) columns
SUMMARY_ROWS: list[tuple[str, str]] = [
    ("ODE init (4 steps, the common start)", "ode_init"),
    ("Self-Forcing DMD, 4 steps", "sf_dmd_4step"),
    ("Self-Forcing DMD, 1 step", "sf_dmd_1step"),
    ("One-Forcing framewise, 1 step", "of_framewise_1step"),
    ("One-Forcing framewise + first-frame enhancement", "of_framewise_1step_ffe"),
    ("One-Forcing chunkwise, 1 step", "of_chunkwise_1step"),
    ("One-Forcing chunkwise + first-chunk enhancement", "of_chunkwise_1step_ffe"),
    ("causal consistency, 1 step", "consistency_1step"),
]
SUMMARY_COLUMNS: list[tuple[str, str, int]] = [
    ("FD", "fd", 1), ("sharpness", "sharpness_ratio", 2), ("dynamics", "dynamics_ratio", 2),
    ("colour", "attr_colour", 2), ("direction", "attr_direction", 2), ("precision", "bank_precision", 3),
    ("coverage", "bank_coverage", 3),
]
CURVES = ("bank_precision", "bank_coverage", "sharpness_ratio", "dynamics_ratio", "attr_colour", "attr_direction",
          "attr_shape", "fd")


def is_objective(class_path: str, kind: type) -> bool:
    """Whether a recipe's objective (its class path) is ``kind`` or a subclass: the class itself is imported, so a
    renamed or moved class fails here instead of silently not matching a name."""
    module, _, name = class_path.rpartition(".")
    return issubclass(getattr(importlib.import_module(module), name), kind)


class Study:
    """The study's folders, its settings and the log of every command it ran."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out, self.results = args, Path(args.out), Path(args.results)
        self.artifacts = Path(args.artifacts)
        self.ode_dir = self.results / "ode_init"  # the ODE init's evaluation
        # the common start: an ODE init given by --ode-init (another study's, a longer one), else this study's own
        self.ode_weights = Path(args.ode_init) if args.ode_init else self.artifacts / "ode_init.safetensors"
        self.commands: list[str] = []

    def exact_teacher(self) -> dict:
        return {"class_path": "oneforcing.toy.exact_bank.ExactToyTeacher",
                "init_args": {"bank_size_per_caption": self.args.bank_size, "spatial_factor": self.spatial_factor,
                              "num_frames": self.num_frames}}

    @property
    def num_frames(self) -> int:
        """The data's video length (``oneforcing data toy --num-frames``): every student, bank and trajectory's."""
        return int(json.loads((Path(self.args.data) / "train" / "index.json").read_text()).get("num_frames", 12))

    @property
    def spatial_factor(self) -> int:
        """The toy codec's factor of the recipes (their backbone's in_channels = 3·f²), for the exact teacher."""
        from oneforcing.toy.codec import SpaceToDepthCodec

        recipe = yaml.safe_load(Path(METHODS["sf_dmd_1step"][0]).read_text())
        return SpaceToDepthCodec.matching(recipe["model"]["init_args"]["backbone"]["in_channels"]).factor

    def guidance_of(self, class_path: str) -> float:
        """The CFG weight w of an objective's teacher: --consistency-guidance for consistency, --dmd-guidance for
        the real score of DMD and SiD, each --guidance-scale unless set."""
        a = self.args
        chosen = a.consistency_guidance if is_objective(class_path, ConsistencyDistillation) else a.dmd_guidance
        return a.guidance_scale if chosen is None else chosen

    def run(self, cmd: list[str], log: Path) -> None:
        """One subprocess on one thread, its output in ``log``; a failure stops the study with the log's tail."""
        self.commands.append(shlex.join(["oneforcing", *cmd[3:]]))
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(log, "a") as f:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
        if code != 0:
            raise RuntimeError(f"{shlex.join(cmd[3:7])} ... failed (exit {code}); see {log}:\n{log.read_text()[-3000:]}")
        print(f"  done in {time.time() - start:5.0f} s: {log.stem}", flush=True)

    # --- stage 1: trajectories --------------------------------------------------------------------------
    def trajectories(self) -> Path:
        a = self.args
        autoregressive = a.trajectory_order == "autoregressive"
        root = self.out / ("ode_autoregressive" if autoregressive else "ode")
        for split, count in (("train", a.trajectories), ("val", 8)):
            if not (root / split / "index.json").is_file():
                self.run([*ONEFORCING, "data", "trajectories", "--teacher", "exact", "--bank-size", str(a.bank_size),
                          "--source", f"{a.data}/{split}", "--out", str(root / split), "--num-videos", str(count),
                          "--steps", "48", "--shift", "5", "--guidance-scale", str(a.guidance_scale),
                          "--spatial-factor", str(self.spatial_factor), "--autoregressive", str(autoregressive).lower()],
                         self.out / "logs" / f"trajectories_{split}.log")
        return root

    def ode_objective(self) -> dict:
        """The ODE init's objective: the recipe's block-causal regression on the trajectory states, or teacher
        forcing on the clean ODE output (``--ode-flavour teacher_forcing``, autoregressive trajectories only)."""
        args = {"weight": 1.0, "flavour": self.args.ode_flavour}
        if self.args.ode_flavour == "teacher_forcing":
            args["clean_context"] = "ode_output"
        return {"class_path": "oneforcing.objectives.trajectory.TrajectoryDistillation", "init_args": args}

    # --- stages 2 and 3: trainings ----------------------------------------------------------------------
    def config(self, name: str, recipe: str, seed: int, iterations: int, data: dict, model: dict,
               evaluate: bool) -> Path:
        """The run's whole config: the recipe with the study's settings over it."""
        cfg = yaml.safe_load(Path(recipe).read_text())
        every = self.args.eval_every
        cfg["seed_everything"] = seed
        trainer = cfg["trainer"]
        trainer.update(max_steps=iterations, val_check_interval=every, enable_progress_bar=False)
        trainer["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                             "init_args": {"save_dir": str(self.out / "runs"), "name": name, "version": 0}}
        callbacks = [{"class_path": "oneforcing.callbacks.export.ExportWeights", "init_args": {"dtype": "float16"}},
                     {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                      "init_args": {"save_last": True, "every_n_train_steps": every}}]
        if evaluate:
            callbacks.append({"class_path": "oneforcing.toy.evaluation_callback.ToyEvaluation",
                              "init_args": {"every_n_steps": every, "num_videos": self.args.eval_videos,
                                            "seed": seed, "bank_size": self.args.bank_size}})
        trainer["callbacks"] = callbacks
        init = cfg["model"]["init_args"]
        init.update(scaled_to(init, self.num_frames), seed=seed, num_frames=self.num_frames)
        init.update(model)
        gan = any(is_objective(o["class_path"], GAN) for o in init["objectives"])
        for objective in init["objectives"]:
            args = objective.setdefault("init_args", {})
            if "guidance_scale" in args:
                args["guidance_scale"] = self.guidance_of(objective["class_path"])
            if gan and self.args.shared_gan_pass:  # the critic's flow loss from the discriminator's 2B pass
                if is_objective(objective["class_path"], DMD):
                    args["train_critic"] = False
                elif is_objective(objective["class_path"], GAN):
                    args.update(shared_flow_pass=True, discriminator_update_every=5)
        cfg["data"]["init_args"].update(num_workers=0, **data)
        path = self.out / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def fit(self, name: str, config: Path) -> Path:
        """Train one run (resuming its last checkpoint) and return its exported weights."""
        run_dir = self.out / "runs" / name / "version_0"
        weights = run_dir / "weights.safetensors"
        if weights.is_file():
            return weights  # trained
        last = run_dir / "checkpoints" / "last.ckpt"
        resume = ["--ckpt_path", str(last)] if last.is_file() else []
        self.run([*ONEFORCING, "fit", "--config", str(config), *resume], self.out / "logs" / f"{name}.log")
        return weights

    def ode_init(self) -> Path:
        """The kept ODE init (trained from the exact teacher's trajectories unless it is already kept)."""
        a, kept = self.args, self.ode_weights
        if a.ode_init and not kept.is_file():
            raise SystemExit(f"--ode-init {a.ode_init} does not exist: give an ODE init's exported weights, e.g. "
                             "assets/study/ode_init.safetensors or assets/toy_ode_init.safetensors.")
        if kept.is_file():
            frames = trained_frames(kept)
            if frames != self.num_frames:
                raise SystemExit(f"The ODE init {kept} was trained on {frames}-frame videos, the data {a.data} holds "
                                 f"{self.num_frames}-frame ones: point --data at the study's data, or --artifacts (or "
                                 "--ode-init) at another init.")
            return kept
        print("== exact-teacher ODE trajectories", flush=True)
        trajectories = self.trajectories()
        print("== ODE init", flush=True)
        config = self.config("ode_init", "configs/toy/ode_init_framewise.yaml", 0, a.ode_iterations,
                             {"root": str(trajectories), "batch_size": 8},
                             {"generator_weights": a.teacher, "objectives": [self.ode_objective()]},
                             evaluate=a.ode_eval)
        self.keep("ode_init", config, self.fit("ode_init", config), weights_as=kept)
        return kept

    def config_of(self, method: str, seed: int, ode: Path) -> Path:
        """The student's config: its recipe, the exact teacher, the critic from the neural teacher, G from ``ode``."""
        a = self.args
        recipe, settings = METHODS[method]
        model = {"teacher_weights": None, "teacher": self.exact_teacher(), "critic_weights": a.teacher,
                 "generator_weights": str(ode), "generator_lr": a.lr, "critic_lr": a.lr, **settings}
        if a.beta1 is not None:  # else the recipe's Adam betas
            model["betas"] = [a.beta1, 0.999]
        data = a.data
        objectives = yaml.safe_load(Path(recipe).read_text())["model"]["init_args"]["objectives"]
        if a.consistency_teacher == "causal" and any(is_objective(o["class_path"], ConsistencyDistillation)
                                                     for o in objectives):
            # the exact teacher's causal posterior is exact on its own samples: train on the trajectories' outputs
            causal = {"causal_teacher": True, "ground_truth": "ode_output"}
            model["objectives"] = [dict(o, init_args={**o.get("init_args", {}), **causal})
                                   if is_objective(o["class_path"], ConsistencyDistillation) else o for o in objectives]
            data = str(self.trajectories())
        return self.config(f"{method}_seed{seed}", recipe, seed, a.iterations,
                           {"root": data, "batch_size": a.batch_size}, model, evaluate=True)

    def student(self, method: str, seed: int, ode: Path) -> Path:
        """Train and evaluate one run unless it is kept; returns its kept folder (its evaluation)."""
        name = f"{method}_seed{seed}"
        kept = self.results / name
        if (kept / "metrics.json").is_file():
            return kept
        config = self.config_of(method, seed, ode)
        weights = self.fit(name, config)
        self.keep(name, config, weights, weights_as=self.artifacts / f"{name}.safetensors" if seed == 0 else None)
        self.evaluate(method, seed, weights, kept)  # last: its metrics.json marks the run as done
        return kept

    def keep(self, name: str, config: Path, weights: Path, weights_as: Path | None) -> None:
        """Copy what outlives the working files into RESULTS/<name> (config, command, events) and the weights to
        ``weights_as`` (None: not kept)."""
        kept = self.results / name
        (kept / "events").mkdir(parents=True, exist_ok=True)
        shutil.copy2(config, kept / "config.yaml")
        (kept / "command.txt").write_text(f"oneforcing fit --config {kept / 'config.yaml'}\n")
        for events in weights.parent.glob("events.out.tfevents.*"):
            shutil.copy2(events, kept / "events" / events.name)
        if weights_as is not None:
            weights_as.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(weights, weights_as)

    # --- stages 4 and 5: evaluation and report ----------------------------------------------------------
    def evaluate(self, label: str, seed: int, weights: Path, target: Path) -> None:
        """``oneforcing evaluate`` of ``weights`` into ``OUT/eval/<run>``; its documents (metrics, the samples' GIF)
        are copied to ``target`` and its command appended to target's command.txt. The sample tensors stay in
        ``OUT`` (the report's GIF grid reads them there)."""
        work = self.out / "eval" / target.name
        cmd = [*ONEFORCING, "evaluate", "--checkpoint", str(weights), "--label", label, "--seed", str(seed),
               "--num-videos", str(self.args.final_videos), "--bank-size", str(self.args.bank_size), "--out", str(work)]
        self.run(cmd, self.out / "logs" / f"eval_{label}_seed{seed}.log")
        target.mkdir(parents=True, exist_ok=True)
        for document in ("metrics.md", "samples.gif", "metrics.json"):  # metrics.json last: it marks the run done
            if (work / document).is_file():
                shutil.copy2(work / document, target / document)
        with open(target / "command.txt", "a") as f:
            f.write(shlex.join(["oneforcing", *cmd[3:]]) + "\n")

    def report(self, targets: list[Path]) -> None:
        report = self.results / "report"
        # each run's evaluation in the working files when it is still there (with its sample tensors, for the GIF grid)
        sources = [self.out / "eval" / t.name if (self.out / "eval" / t.name / "metrics.json").is_file() else t
                   for t in targets]
        self.run([*ONEFORCING, "compare", *map(str, sources), "--out", str(report)], self.out / "logs" / "compare.log")
        curves = learning_curves(self.results, self.args.methods, self.args.seeds)
        (report / "curves.json").write_text(json.dumps(curves, indent=1))
        plot_curves(curves, report / "curves.png")
        lines = ["# Commands of this study", "", f"`{shlex.join(['python', *sys.argv])}` ran, in order:", ""]
        lines += [f"    {c}" for c in self.commands]
        lines += ["", "Runs kept from earlier parts of the study list their commands in `<results>/<run>/command.txt`; "
                  "each training is `oneforcing fit --config <results>/<run>/config.yaml`: the recipe with the study's "
                  "settings over it."]
        (report / "commands.md").write_text("\n".join(lines) + "\n")
        (report / "claims.md").write_text(claims_table(self.results, self.args.seeds))
        (report / "summary.md").write_text(summary_table(self.results, self.args.seeds))
        (report / "convergence.md").write_text(convergence_table(curves))
        (report / "milestones.md").write_text(milestones_table(curves))
        print(f"Report: {report / 'report.md'}, {report / 'curves.png'}, {report / 'claims.md'}, "
              f"{report / 'summary.md'}, {report / 'convergence.md'}, {report / 'milestones.md'}")


def scaled_to(init: dict, num_frames: int) -> dict:
    """The recipe's frame counts (gradient window, first block) scaled from its ``num_frames`` to the study's:
    e.g. a window of 8 of 12 frames is 4 of 6, a first block of 4 of 12 is 2 of 6 (at least 1 frame)."""
    ratio = num_frames / init["num_frames"]
    return {key: max(1, round(init[key] * ratio)) for key in ("gradient_window_frames", "first_block_size")
            if init.get(key) is not None and ratio != 1}


def learning_curves(results: Path, methods: list[str], seeds: list[int]) -> dict:
    """{method: {metric: {"steps": [...], "values": [[per seed] per step]}}} from the eval/* scalars of the
    finished runs (their evaluation written, as for the report's table)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict = {}
    for method in methods:
        per_seed = []
        for seed in seeds:
            folder = results / f"{method}_seed{seed}" / "events"
            if not (folder.parent / "metrics.json").is_file():  # not finished (or not run): not in the report
                continue
            events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
            events.Reload()
            tags = set(events.Tags()["scalars"])
            per_seed.append({m: {s.step: s.value for s in events.Scalars(f"eval/{m}")}
                             for m in CURVES if f"eval/{m}" in tags})
        if not per_seed:
            continue
        curves[method] = {}
        for metric in CURVES:
            steps = sorted(set.intersection(*(set(run.get(metric, {})) for run in per_seed)))
            if steps:
                curves[method][metric] = {"steps": steps,
                                          "values": [[run[metric][step] for run in per_seed] for step in steps]}
    return curves


def seed_values(results: Path, run: str, metric: str, seeds: list[int]) -> list[float]:
    """``metric`` of each finished seed of ``run`` (``RESULTS/<run>_seed<s>/metrics.json``; the ODE init is one run
    without a seed suffix)."""
    folders = [results / run] if run == "ode_init" else [results / f"{run}_seed{s}" for s in seeds]
    out = []
    for folder in folders:
        path = folder / "metrics.json"
        if path.is_file() and metric in (metrics := json.loads(path.read_text())["metrics"]):  # `evaluate`'s
            out.append(float(metrics[metric]))
    return out


def summary_table(results: Path, seeds: list[int]) -> str:
    """Markdown: the README's table, one row per method with its finished seeds, mean ± sample std per column."""
    lines = ["| method | seeds | " + " | ".join(h for h, _, _ in SUMMARY_COLUMNS) + " |",
             "|---|---|" + "---|" * len(SUMMARY_COLUMNS)]
    for name, run in SUMMARY_ROWS:
        cells, count = [], 0
        for _, metric, digits in SUMMARY_COLUMNS:
            values = seed_values(results, run, metric, seeds)
            count = max(count, len(values))
            if not values:
                cells.append("–")
                continue
            mean, std = mean_std(values)
            cells.append(f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else ""))
        if count:
            lines.append(f"| {name} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def claims_table(results: Path, seeds: list[int]) -> str:
    """Markdown: for each claim (``CLAIMS``) and metric, A and B as mean ± sample std over their finished seeds,
    A − B, and a verdict: a difference only when both have at least 2 seeds and |A − B| exceeds the sum of the two
    stds (so that neither seed band covers the other's mean); else "within spread" or "one seed: no spread"."""
    lines = ["# The paper's claims on the toy", "",
             "A − B with A and B as mean ± sample std over seeds. A difference counts when both have ≥ 2 seeds and "
             "|A − B| > std(A) + std(B).", ""]
    for claim, a, b, metrics in CLAIMS:
        lines += [f"## {claim}", "", f"| metric | A: {a} | B: {b} | A − B | verdict |", "|---|---|---|---|---|"]
        for metric in metrics:
            va, vb = seed_values(results, a, metric, seeds), seed_values(results, b, metric, seeds)
            if not va or not vb:
                lines.append(f"| {metric} | {len(va)} seeds | {len(vb)} seeds | – | not run |")
                continue
            (ma, sa), (mb, sb) = mean_std(va), mean_std(vb)
            if min(len(va), len(vb)) < 2:
                verdict = "one seed: no spread"
            else:
                verdict = "differs" if abs(ma - mb) > sa + sb else "within spread"
            lines.append(f"| {metric} | {ma:.3g} ± {sa:.2g} (n={len(va)}) | {mb:.3g} ± {sb:.2g} (n={len(vb)}) | "
                         f"{ma - mb:+.3g} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


CONVERGENCE = ("fd", "sharpness_ratio", "bank_precision", "bank_coverage")


def convergence_table(curves: dict, window: int = 300) -> str:
    """Markdown: has each method's curve flattened? Per method and metric, the change over the last ``window``
    iterations (each seed's own change, mean ± std) against the seeds' spread at the last evaluation: "flat" when
    |change| ≤ that spread (the last ``window`` iterations moved the metric less than the seeds differ), else "still
    falling" / "still rising"; one seed has no spread to judge by."""
    lines = [f"# Have the curves flattened? Change over the last {window} iterations", "",
             "Per seed, metric(last) − metric(last − window); mean ± std over seeds. Flat when |change| ≤ the seeds' "
             "std at the last evaluation.", "",
             "| method | metric | iterations | last (mean ± std) | change | verdict |", "|---|---|---|---|---|---|"]
    for method, by_metric in curves.items():
        for metric in CONVERGENCE:
            if metric not in by_metric:
                continue
            steps, values = by_metric[metric]["steps"], by_metric[metric]["values"]
            last, start = steps[-1], steps[-1] - window
            if start not in steps:
                lines.append(f"| {method} | {metric} | {steps[0]}–{last} | – | – | shorter than {window} |")
                continue
            first = values[steps.index(start)]
            changes = [b - a for a, b in zip(first, values[-1])]
            (m_last, s_last), (m_change, s_change) = mean_std(values[-1]), mean_std(changes)
            if len(changes) < 2:
                verdict = "one seed: no spread"
            elif abs(m_change) <= s_last:
                verdict = "flat"
            else:
                verdict = "still falling" if m_change < 0 else "still rising"
            lines.append(f"| {method} | {metric} | {start}–{last} | {m_last:.3g} ± {s_last:.2g} | "
                         f"{m_change:+.3g} ± {s_change:.2g} | {verdict} |")
    return "\n".join(lines) + "\n"


def milestones_table(curves: dict, every: int = 1000) -> str:
    """Markdown: each method's curves at every ``every`` iterations (mean ± std over seeds; the in-training
    evaluation's videos), so a longer run shows where the 1000-iteration values went."""
    columns = max((max(c[m]["steps"]) // every for c in curves.values() for m in CONVERGENCE if m in c), default=0)
    lines = [f"# The curves every {every} iterations (in-training evaluation; mean ± std over seeds)", "",
             "| method | metric | seeds | " + " | ".join(str(k * every) for k in range(1, columns + 1)) + " |",
             "|---|---|---|" + "---|" * columns]
    for method, by_metric in curves.items():
        for metric in CONVERGENCE:
            if metric not in by_metric:
                continue
            steps, values = by_metric[metric]["steps"], by_metric[metric]["values"]
            cells = []
            for k in range(1, columns + 1):
                if k * every in steps:
                    mean, std = mean_std(values[steps.index(k * every)])
                    cells.append(f"{mean:.3g} ± {std:.2g}")
                else:
                    cells.append("–")
            lines.append(f"| {method} | {metric} | {len(values[-1])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def plot_curves(curves: dict, path: Path) -> None:
    """One panel per metric: per method the mean over seeds against iterations, a ± one-std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in CURVES if any(m in c for c in curves.values())]
    cols = 4
    rows = max(1, math.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for method, c in curves.items():
            if metric not in c:
                continue
            steps = c[metric]["steps"]
            stats = [mean_std(v) for v in c[metric]["values"]]
            mean = [m for m, _ in stats]
            ax.plot(steps, mean, label=method)
            ax.fill_between(steps, [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.2)
        ax.set_title(metric)
        ax.set_xlabel("iteration")
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/toy", help="toy data root (train/ and val/ splits)")
    p.add_argument("--teacher", default="assets/toy_teacher.safetensors",
                   help="the neural teacher: the ODE init's and the critics' starting weights")
    p.add_argument("--out", default="runs/study", help="working files (trajectories, checkpoints, logs)")
    p.add_argument("--results", default="docs/study",
                   help="the documents that are kept: per run its evaluation, events, config and command")
    p.add_argument("--artifacts", default="assets/study",
                   help="the weights that are kept: the ODE init's and each method's seed 0 (<run>.safetensors)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=1000, help="iterations of each student")
    p.add_argument("--batch-size", type=int, default=4, help="students' batch size")
    p.add_argument("--lr", type=float, default=1e-4, help="students' generator and critic learning rate")
    p.add_argument("--beta1", type=float, default=None,
                   help="students' Adam β₁ (β₂ 0.999; default: the recipe's, 0 for the DMD family as the papers)")
    p.add_argument("--guidance-scale", type=float, default=1.0,
                   help="w of the exact teacher's CFG in the trajectories, DMD and consistency (1: the bank's own "
                        "distribution)")
    p.add_argument("--dmd-guidance", type=float, default=None,
                   help="w of the DMD (and SiD) real score (default: --guidance-scale); Self-Forcing's g = 3 is w = 4")
    p.add_argument("--consistency-guidance", type=float, default=None,
                   help="w of the consistency teacher's Euler step (default: --guidance-scale); Causal Forcing: w = 3")
    p.add_argument("--bank-size", type=int, default=16, help="exact teacher's (and bank metrics') videos per caption")
    p.add_argument("--ode-init", default=None, metavar="WEIGHTS",
                   help="start every student from this exported ODE init (e.g. assets/study/ode_init.safetensors, "
                        "another study's, or assets/toy_ode_init.safetensors) instead of training one; it is evaluated "
                        "into RESULTS/ode_init")
    p.add_argument("--ode-iterations", type=int, default=600)
    p.add_argument("--trajectories", type=int, default=1024)
    p.add_argument("--trajectory-order", choices=("joint", "autoregressive"), default="joint",
                   help="the exact teacher's trajectories: one joint ODE over all frames (a frame's output depends on "
                        "every frame's noise), or frame by frame over its own clean earlier frames (causal; "
                        "`oneforcing data trajectories --autoregressive`)")
    p.add_argument("--ode-flavour", choices=("bidirectional", "teacher_forcing"), default="bidirectional",
                   help="the ODE init's regression: block-causal on the noisy trajectory states, or teacher forcing on "
                        "the clean ODE output (autoregressive trajectories only)")
    p.add_argument("--ode-eval", action="store_true", help="log eval/* during the ODE init too (learning curves)")
    p.add_argument("--consistency-teacher", choices=("joint", "causal"), default="joint",
                   help="consistency's teacher step: the exact teacher over all noisy frames, or its causal posterior "
                        "in teacher forcing on the student's clean context (Causal Forcing's causal teacher), trained on "
                        "the autoregressive trajectories' outputs (needs --trajectory-order autoregressive)")
    p.add_argument("--eval-every", type=int, default=100, help="iterations between eval/* logs and checkpoints")
    p.add_argument("--eval-videos", type=int, default=16, help="videos of each in-training evaluation")
    p.add_argument("--final-videos", type=int, default=64, help="videos of each final `oneforcing evaluate`")
    p.add_argument("--shared-gan-pass", action="store_true",
                   help="One-Forcing runs read the critic's flow loss from the discriminator's 2B pass and train the "
                        "discriminator every 5th critic step (1.3x a DMD iteration instead of 2.3x; "
                        "docs/benchmarks.md); default: the released behaviour")
    p.add_argument("--ode-init-only", action="store_true",
                   help="stop once the ODE init is trained, evaluated and kept (a first part of the study)")
    p.add_argument("--report-only", action="store_true",
                   help="write RESULTS/report from the runs kept so far (of --methods and --seeds), training nothing: "
                        "an interim report while the study runs in parts")
    p.add_argument("--jobs", type=int, default=2)
    return p


def trained_frames(weights: Path) -> int:
    """The video length an exported student was trained on (its ``num_frames``, from the file's metadata)."""
    from oneforcing.models.wan import safetensors_metadata

    try:
        return int(json.loads(safetensors_metadata(weights)["hparams"])["num_frames"])
    except Exception as error:  # not a safetensors export of ours: say which file and what it should be
        raise SystemExit(f"{weights} is not an exported student (`oneforcing fit` with ExportWeights writes one): "
                         f"{error}") from None


def kept_runs(results: Path, methods: list[str], seeds: list[int]) -> list[Path]:
    """The finished runs (their evaluation written) among ``methods`` × ``seeds``, seed-major."""
    return [results / f"{m}_seed{s}" for s in seeds for m in methods if (results / f"{m}_seed{s}" / "metrics.json").is_file()]


def main() -> None:
    args = build_parser().parse_args()
    if args.report_only:
        study = Study(args)
        targets = kept_runs(study.results, args.methods, args.seeds)
        if not targets:
            sys.exit(f"No finished run of {args.methods} × seeds {args.seeds} in {study.results}: nothing to report.")
        init = study.ode_dir
        study.report([init, *targets] if (init / "metrics.json").is_file() else targets)
        return
    for split in ("train", "val"):
        if not (Path(args.data) / split / "index.json").is_file():
            sys.exit(f"{args.data}/{split} holds no toy shards; write them with "
                     f"`oneforcing data toy --out {args.data} --num-videos 20000 --seed 0`.")
    if not Path(args.teacher).is_file():
        sys.exit(f"--teacher {args.teacher} does not exist; train one with `oneforcing fit --config "
                 "configs/toy/teacher.yaml` or use assets/toy_teacher.safetensors.")
    if args.ode_flavour == "teacher_forcing" and args.trajectory_order != "autoregressive":
        sys.exit("--ode-flavour teacher_forcing regresses onto trajectories that continue their own clean output: use "
                 "--trajectory-order autoregressive (a joint trajectory's output does not continue its source video).")
    if args.consistency_teacher == "causal" and args.trajectory_order != "autoregressive":
        sys.exit("--consistency-teacher causal trains consistency on the exact teacher's own autoregressive samples: "
                 "add --trajectory-order autoregressive.")
    if args.iterations % args.eval_every or args.ode_iterations % args.eval_every:
        sys.exit(f"--iterations {args.iterations} and --ode-iterations {args.ode_iterations} must be multiples of "
                 f"--eval-every {args.eval_every} (a resumed run restarts from the last checkpoint).")
    study = Study(args)
    ode = study.ode_init()
    if not (study.ode_dir / "metrics.json").is_file():
        study.evaluate("ode_init", 0, ode, study.ode_dir)
    if args.ode_init_only:
        print(f"ODE init kept as {ode} (its evaluation in {study.ode_dir}); run again without --ode-init-only for "
              "the students.")
        return
    print("== students", flush=True)
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    with ThreadPoolExecutor(args.jobs) as pool:
        targets = list(pool.map(lambda job: study.student(job[0], job[1], ode), jobs))
    print("== report", flush=True)
    study.report([study.ode_dir, *targets])


if __name__ == "__main__":
    main()
