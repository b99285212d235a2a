"""``oneforcing evaluate``: one trained model's toy-world metrics (docs/evaluation.md), as JSON and markdown.

A checkpoint (``.ckpt`` or an exported ``.safetensors``) or a run directory goes in. The model generates one
video per caption of a held-out set of real toy videos (``--real-seed``, disjoint from the training streams),
and every metric of ``oneforcing.evaluation.metrics`` compares them with those real videos. A causal student
also rolls out ``--long-frames`` frames over a rolling window of the training length, for drift. With
``--steps-sweep`` the short-video metrics are repeated at other step counts (for plots against steps).

Bank metrics (``bank_precision``: mean RMS distance of a sample to its nearest bank video of its caption;
``bank_coverage``: mean share of a caption's bank videos that some sample is nearest to): coverage needs
several samples per caption, so a second prompt set repeats the first ``num_videos // --samples-per-caption``
distinct captions of the held-out set ``--samples-per-caption`` times each (4 by default; 0 skips the bank
metrics), against ``--bank-size`` clean videos per caption of the exact teacher's stream (``--bank-seed``;
defaults: the exact teacher's 16 and 12345). Coverage is at most S/N (0.25 at the defaults); a sampler of
the bank itself (a perfect student of the exact teacher) reaches precision 0 and coverage 1 − (1 − 1/N)^S
(0.23), recorded as ``bank.ideal_coverage`` in the report; fresh videos of the world (what a perfect student of
a neural teacher makes) are scored as ``bank.world_precision`` / ``bank.world_coverage``.

Out (``--out``): ``metrics.json`` (metrics, sweep, per-frame curves, provenance), ``metrics.md`` and
``samples.safetensors`` + ``samples.gif`` (the first prompts, for ``oneforcing compare``'s GIF grid).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console
from safetensors.torch import save_file

from oneforcing.lightning_modules.checkpoints import load_trained_module, streaming_sampler_from, weights_choice
from oneforcing.lightning_modules.distillation import DistillationModule
from oneforcing.sampling.streaming import per_prompt_generators
from oneforcing.toy.evaluation import (BANK_SIZE, REAL_SEED, SAMPLES_PER_CAPTION, BankSet, Generate, bank_set,
                                      evaluate_videos, real_toy_set, sample_in_batches, score_bank)
from oneforcing.toy.exact_bank import BANK_SEED, ExactTeacherSampler
from oneforcing.video_io import atomic_write_bytes, gif_bytes, video_grid

GRID_PROMPTS = 8    # prompts kept as samples for the comparison's GIF grid


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="oneforcing evaluate", description="Toy-world metrics of one trained model.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--checkpoint", type=str | None, default=None,
                   help=".ckpt or exported .safetensors; 'exact': the exact toy teacher's own samples (the ceiling "
                        "of a toy table; its bank is the evaluation's, --bank-size and --bank-seed)")
    p.add_argument("--run", type=str | None, default=None,
                   help="a run directory (its newest version's weights.safetensors or checkpoints/last.ckpt)")
    p.add_argument("--out", type=str, required=True, help="directory for metrics.json, metrics.md and samples")
    p.add_argument("--label", type=str | None, default=None, help="method name in reports (default: the run name)")
    p.add_argument("--seed", type=int, default=0, help="the run's training seed; also seeds the sampling noise")
    p.add_argument("--num-videos", "--num_videos", dest="num_videos", type=int, default=64)
    p.add_argument("--real-seed", "--real_seed", dest="real_seed", type=int, default=REAL_SEED)
    p.add_argument("--steps", type=int | None, default=None,
                   help="sampling steps (default: the student's training schedule, the teacher's 48)")
    p.add_argument("--steps-sweep", "--steps_sweep", dest="steps_sweep", type=list[int], default=[],
                   help="extra step counts for the short-video metrics, e.g. [1, 2, 4]")
    p.add_argument("--long-frames", "--long_frames", dest="long_frames", type=int, default=48,
                   help="frames of the drift roll-out (students only; 0 disables), >= 4x the training length")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32)
    p.add_argument("--samples-per-caption", "--samples_per_caption", dest="samples_per_caption", type=int,
                   default=SAMPLES_PER_CAPTION,
                   help="bank metrics: samples of each of the first num_videos // this many held-out captions "
                        "(0: no bank metrics); coverage is at most this / --bank-size")
    p.add_argument("--bank-size", "--bank_size", dest="bank_size", type=int, default=BANK_SIZE,
                   help="bank metrics: clean videos per caption (the exact teacher's bank_size_per_caption)")
    p.add_argument("--bank-seed", "--bank_seed", dest="bank_seed", type=int, default=BANK_SEED,
                   help="bank metrics: the bank's stream (the exact teacher's seed)")
    p.add_argument("--num-frames", "--num_frames", dest="num_frames", type=int | None, default=None,
                   help="--checkpoint exact: the video length (the students' num_frames)")
    p.add_argument("--ema", type=bool | None, default=None,
                   help="students: true the generator's EMA weights, false its raw weights (default: the EMA when "
                        "present); the report records which were used")
    return p


EXACT = "exact"  # --checkpoint exact: the exact toy teacher's samples


def resolve_checkpoint(checkpoint: str | None, run: str | None) -> Path:
    """The weights to evaluate: the given file, or the newest export/checkpoint of a run directory."""
    if (checkpoint is None) == (run is None):
        raise ValueError("Pass exactly one of --checkpoint FILE or --run DIR.")
    if checkpoint is not None:
        if checkpoint != EXACT and not Path(checkpoint).exists():
            raise FileNotFoundError(f"Checkpoint {checkpoint} does not exist (or pass 'exact' for the exact toy "
                                    "teacher's samples).")
        return Path(checkpoint)
    root = Path(run)
    if not root.is_dir():
        raise FileNotFoundError(f"Run directory {root} does not exist.")
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]) if p.name[8:].isdigit() else -1)
    for directory in [*reversed(versions), root]:
        for candidate in (directory / "weights.safetensors", directory / "checkpoints" / "last.ckpt"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"Run directory {root} holds no weights.safetensors or checkpoints/last.ckpt "
                            "(in itself or a version_* folder): was the run trained with the ExportWeights callback?")


def generator_of(module, steps: int | None, num_frames: int | None = None, window: int | None = None,
                 use_ema: bool = True) -> Generate:
    """(prompts, seed) -> pixel videos: the student's streaming sampler, or the teacher's Euler sampler."""
    if not isinstance(module, DistillationModule):
        return lambda prompts, seed: module.generate(prompts, seed=seed, num_steps=steps)
    hp = module.hparams
    sampler, _ = streaming_sampler_from(module, steps=steps, shift=hp.warp_shift, window_frames=window,
                                        ema=use_ema and module.has_ema)

    def generate(prompts: list[str], seed: int) -> torch.Tensor:
        latents = sampler.sample(module.encode_prompts(prompts), num_frames or hp.num_frames, module.latent_shape(),
                                 per_prompt_generators(seed, len(prompts)))
        return module.codec.decode(latents)

    return generate


def sample(module, prompts: list[str], seed: int, steps: int | None, batch_size: int,
           num_frames: int | None = None, window: int | None = None, use_ema: bool = True) -> torch.Tensor:
    """Pixel videos (N, F, 3, H, W): the student's streaming sampler, or the teacher's Euler sampler."""
    with torch.no_grad():
        return sample_in_batches(generator_of(module, steps, num_frames, window, use_ema), prompts, seed, batch_size)


def bank_metrics(module, bank: BankSet | None, seed: int, steps: int, batch_size: int, use_ema: bool) -> dict:
    """``bank_precision`` and ``bank_coverage`` at ``steps`` (empty without a bank set)."""
    if bank is None:
        return {}
    with torch.no_grad():
        return score_bank(generator_of(module, steps, use_ema=use_ema), bank, seed, batch_size)


def default_steps(module) -> int:
    return len(module.step_sigmas) if isinstance(module, DistillationModule) else module.hparams.sample_steps


def markdown(report: dict) -> str:
    lines = [f"# {report['label']} (seed {report['seed']})", "",
             f"`{report['checkpoint']}` ({report['weights']} weights), {report['num_videos']} videos at {report['steps']} steps "
             f"against held-out real toy videos (seed {report['real_seed']})."]
    bank = report["bank"]
    if bank:
        lines += ["", f"Bank metrics: {bank['captions']} captions × {bank['samples_per_caption']} samples against "
                  f"{bank['bank_size']} bank videos per caption (seed {bank['bank_seed']}); a sampler of the bank "
                  f"itself would score precision 0 and cover {bank['ideal_coverage']:.2f}, fresh videos of the world "
                  f"score {bank['world_precision']:.3g} and cover {bank['world_coverage']:.2f}."]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in report["metrics"].items() if isinstance(v, (int, float))]
    for steps, metrics in report["sweep"].items():
        lines += ["", f"## {steps} steps", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in metrics.items() if isinstance(v, (int, float))]
    return "\n".join(lines) + "\n"


def evaluate_checkpoint(checkpoint: Path, out: Path, label: str, seed: int = 0, num_videos: int = 64,
                        real_seed: int = REAL_SEED, steps: int | None = None, steps_sweep: list[int] = (),
                        long_frames: int = 48, batch_size: int = 32, ema: bool | None = None,
                        samples_per_caption: int = SAMPLES_PER_CAPTION, bank_size: int = BANK_SIZE,
                        bank_seed: int = BANK_SEED, exact_frames: int | None = None) -> dict:
    """Generate, score and write the report; returns it."""
    from oneforcing.evaluation.metrics import per_frame_curves
    from oneforcing.toy.feature_net import load_feature_net

    if num_videos < 2:
        raise ValueError(f"--num-videos={num_videos}: the distribution metrics need at least 2 videos.")
    if str(checkpoint) == EXACT:
        if exact_frames is None:
            raise ValueError("--checkpoint exact needs --num-frames: the video length of the students it is the "
                             "ceiling of (e.g. 6 for the study's data).")
        module = ExactTeacherSampler(exact_frames, bank_size_per_caption=bank_size, seed=bank_seed)
    else:
        if exact_frames is not None:
            raise ValueError("--num-frames sets the exact teacher's video length; a trained model's comes from its "
                             "checkpoint. Drop it.")
        module = load_trained_module(checkpoint)
    num_frames = module.hparams.num_frames
    if isinstance(module, DistillationModule) and long_frames and long_frames < 4 * num_frames:
        raise ValueError(f"--long-frames={long_frames} must be 0 or at least 4x the training length "
                         f"({4 * num_frames}) for a drift measurement.")
    real, prompts = real_toy_set(num_videos, real_seed, num_frames, module.hparams.frame_size)
    for prompt in prompts:  # prompts outside the model's vocabulary fail here, before any sampling
        module.encode_prompts([prompt])
    bank = bank_set(prompts, num_videos, samples_per_caption, bank_size, bank_seed, num_frames,
                    module.hparams.frame_size)
    weights = weights_choice(module, ema)
    use_ema = weights == "ema"
    net = load_feature_net()
    steps = steps or default_steps(module)
    fake = sample(module, prompts, seed, steps, batch_size, use_ema=use_ema)
    long_fake = None
    if isinstance(module, DistillationModule) and long_frames:
        long_fake = sample(module, prompts, seed, steps, batch_size, num_frames=long_frames, window=num_frames,
                           use_ema=use_ema)
    report = {
        "label": label, "seed": seed, "checkpoint": str(checkpoint), "module": type(module).__name__, "weights": weights,
        "steps": steps, "num_videos": num_videos, "real_seed": real_seed, "long_frames": long_frames if long_fake is not None else 0,
        "metrics": {**evaluate_videos(fake, real, prompts, net, long_fake=long_fake, window=num_frames),
                    **bank_metrics(module, bank, seed, steps, batch_size, use_ema)},
        "curves": per_frame_curves(fake, real, long_fake=long_fake, window=num_frames),
        "sweep": {}, "prompts": prompts[:GRID_PROMPTS], "bank": bank.describe() if bank else None,
    }
    for extra in steps_sweep:
        if extra != steps:
            report["sweep"][str(extra)] = {**evaluate_videos(sample(module, prompts, seed, extra, batch_size,
                                                                    use_ema=use_ema), real, prompts, net),
                                           **bank_metrics(module, bank, seed, extra, batch_size, use_ema)}
    report["sweep"][str(steps)] = {k: v for k, v in report["metrics"].items() if not k.startswith("drift")}
    out.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(report, default=float), parse_constant=lambda c: None)  # NaN -> null
    atomic_write_bytes(out / "metrics.json", json.dumps(clean, indent=1, allow_nan=False).encode())
    atomic_write_bytes(out / "metrics.md", markdown(report).encode())
    grid = fake[:GRID_PROMPTS].contiguous()
    save_file({"videos": grid.float()}, str(out / "samples.safetensors"), metadata={"prompts": json.dumps(prompts[:GRID_PROMPTS])})
    atomic_write_bytes(out / "samples.gif", gif_bytes(video_grid(grid)))
    return report


def evaluate_command(argv: list[str]) -> None:
    cfg = build_parser().parse_args(argv)
    checkpoint = resolve_checkpoint(cfg.checkpoint, cfg.run)
    label = cfg.label or (Path(cfg.run).name if cfg.run else checkpoint.stem)
    report = evaluate_checkpoint(checkpoint, Path(cfg.out), label, cfg.seed, cfg.num_videos, cfg.real_seed, cfg.steps,
                                 cfg.steps_sweep, cfg.long_frames, cfg.batch_size, cfg.ema, cfg.samples_per_caption,
                                 cfg.bank_size, cfg.bank_seed, cfg.num_frames)
    shown = {k: round(v, 4) for k, v in report["metrics"].items() if isinstance(v, float) and not math.isnan(v)}
    Console().print(f"[green]{label}[/green] ({report['steps']} steps, {report['weights']} weights): {shown}\nWrote {cfg.out}/metrics.json and metrics.md")
