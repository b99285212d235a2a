"""``oneforcing data trajectories``: sample a teacher's ODE trajectories into shards (pipeline stage 2).

For every caption/video of a source split: Euler-integrate the teacher's probability-flow ODE with CFG
(uncond + w·(cond − uncond); 48 steps, shift 5 by default) from seeded noise, keep the states at the
snapshot σ's (by default the warped 4-step list [1000, 750, 500, 250] at shift 5 = grid indices 0/12/24/36,
docs/algorithms.md §2), the ODE output, and the ground truth beside them. Snapshots must lie on the Euler
grid; otherwise the command fails before sampling, naming the grid values that would fit.

The teacher kind follows from the checkpoint's module class:
  * ``TeacherModule`` → ``bidirectional``: the bidirectional teacher (CausVid / Self-Forcing ODE init);
  * ``DistillationModule`` → ``causal_teacher_forcing``: its causal generator (Causal Forcing stage 1, trained
    with ``CausalDiffusion(teacher_forcing: true)``) in teacher-forcing mode: every velocity call is
    ``forward_teacher_forcing(x, σ per frame, context, clean=ground truth)``, all frames at the same σ, so
    each block continues the ground-truth clean context the causal-ODE student sees (docs/algorithms.md §8;
    the reference uses w = 6).
  * a Wan2.1 diffusers folder (``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``) → ``bidirectional``: its
    transformer is the teacher, its VAE and umT5 the codec and text encoder.
Both write the same members and index fields; the index adds ``teacher_kind``, the block layout, the
teacher's weights (EMA or raw generator) and the negative prompt (the unconditional CFG branch). A source written
by ``oneforcing data encode`` carries cached caption embeddings and the negative prompt's: they condition the
teacher (umT5 is not loaded) and are carried over, so the trajectory split trains without a text encoder too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import webdataset as wds
from rich.console import Console
from rich.progress import Progress

from oneforcing.data.datamodule import _decode_skipping_corrupt
from oneforcing.data.prompt_cache import PROMPT_MEMBER, load_negative, pad_contexts, save_negative
from oneforcing.data.shards import encode_sample, read_index, write_shards
from oneforcing.lightning_modules.trajectory_teachers import EXACT, load_exact_teacher, load_trajectory_teacher
from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.flow_matching import euler_sigmas, warped_step_sigmas
from oneforcing.sampling.trajectories import sample_autoregressive_trajectory, sample_trajectory, snapshot_indices

GROUND_TRUTH_MEMBERS = ("pixels", "latents")


def _ground_truth_latents(module, samples: list[dict]) -> torch.Tensor:
    """(B, F, C, H, W) clean latents of decoded samples: their latents, else their encoded pixels."""
    if "latents" in samples[0]:
        return torch.stack([s["latents"] for s in samples]).float()
    pixels = torch.stack([s["pixels"] for s in samples]).float() / 127.5 - 1.0
    return module.codec.encode(pixels)


def add_parser(sub) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(description="Teacher ODE trajectories as shards (for trajectory distillation). A TeacherModule "
                                   "checkpoint gives the bidirectional export; a DistillationModule (Causal Forcing "
                                   "stage 1) gives the causal teacher-forcing export.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--teacher", type=str, required=True,
                   help="teacher weights (.safetensors export or .ckpt): a TeacherModule (bidirectional) or a "
                        "DistillationModule whose generator is the causal teacher (teacher forcing); or 'exact': "
                        "the toy world's exact teacher over a bank of its videos (--bank-size, --bank-seed)")
    p.add_argument("--bank-size", "--bank_size", dest="bank_size", type=int, default=16,
                   help="--teacher exact: videos per caption in the bank (432 MiB at 16 for all 384 captions)")
    p.add_argument("--bank-seed", "--bank_seed", dest="bank_seed", type=int | None, default=None,
                   help="--teacher exact: the bank's stream (default: the exact teacher's, disjoint from the data)")
    p.add_argument("--spatial-factor", "--spatial_factor", dest="spatial_factor", type=int | None, default=None,
                   help="--teacher exact: the student's toy codec factor (2, the default: 12 latent channels; 4: 48; "
                        "the recipe's backbone in_channels tells)")
    p.add_argument("--source", type=str, required=True, help="caption/video split directory (e.g. data/toy/train)")
    p.add_argument("--out", type=str, required=True, help="output split directory (e.g. data/toy_ode/train)")
    p.add_argument("--num-videos", "--num_videos", dest="num_videos", type=int | None, default=None,
                   help="first N videos of the source (default: all)")
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--guidance-scale", "--guidance_scale", dest="guidance_scale", type=float, default=4.0,
                   help="CFG weight w in uncond + w·(cond − uncond) (the papers' g is w − 1; Causal Forcing's "
                        "causal-ODE export uses w = 6)")
    p.add_argument("--negative-prompt", "--negative_prompt", dest="negative_prompt", type=str | None, default=None,
                   help="text of the unconditional CFG branch (default: the source's cached negative prompt, "
                        "written by `oneforcing data encode`, else the empty prompt)")
    p.add_argument("--snapshot-steps", "--snapshot_steps", dest="snapshot_steps", type=list[float],
                   default=[1000.0, 750.0, 500.0, 250.0], help="nominal student steps, warped with --shift")
    p.add_argument("--block-size", "--block_size", dest="block_size", type=int | None, default=None,
                   help="causal teacher only: latent frames per block (default: the checkpoint's block_size)")
    p.add_argument("--ema", dest="use_ema", type=bool | None, default=None,
                   help="causal teacher only: true the generator's EMA weights, false its raw weights "
                        "(default: EMA when the checkpoint has one)")
    p.add_argument("--autoregressive", type=bool, default=False,
                   help="--teacher exact: sample frame by frame, each frame over the teacher's own clean earlier "
                        "frames (causal trajectories: frame f depends on the noise of frames <= f only)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples-per-shard", "--samples_per_shard", dest="samples_per_shard", type=int, default=256)
    sub.add_subcommand("trajectories", p)


def export_trajectories(teacher: str, source: str, out: str, num_videos: int | None = None, steps: int = 48,
                        shift: float = 5.0, guidance_scale: float = 4.0,
                        snapshot_steps: list[float] = (1000.0, 750.0, 500.0, 250.0), batch_size: int = 16,
                        seed: int = 0, samples_per_shard: int = 256, progress: bool = True,
                        negative_prompt: str | None = None, block_size: int | None = None, use_ema: bool | None = None,
                        log: Callable[[str], None] = lambda message: None, bank_size: int = 16,
                        bank_seed: int | None = None, spatial_factor: int | None = None,
                        autoregressive: bool = False) -> dict:
    """Write the trajectory split; returns its index. Every input is checked before the first Euler step.

    ``autoregressive`` (exact teacher only): each frame is integrated over the teacher's own clean earlier frames
    (``sample_autoregressive_trajectory``): trajectories a causal student can regress onto. Their ``ode_output``
    is then its own ground truth: train on them with ``TrajectoryDistillation(clean_context="ode_output")``.
    """
    grid = euler_sigmas(steps, shift)
    snapshot_sigmas = warped_step_sigmas(snapshot_steps, shift)
    indices = snapshot_indices(grid, snapshot_sigmas)  # fail before loading anything
    if str(teacher) != EXACT and spatial_factor is not None:
        raise ValueError("--spatial-factor sets the exact teacher's codec; a trained teacher's codec follows from its "
                         "weights. Drop it.")
    index = read_index(source)
    members = index.get("members")
    if members is not None and not any(f"{m}.safetensors" in members for m in GROUND_TRUTH_MEMBERS):
        raise ValueError(f"Source split {source} carries no pixels or latents (its samples hold {members}): the "
                         "trajectories need the ground-truth videos. Point --source at a caption/video split "
                         "written by `oneforcing data toy` (e.g. data/toy/train).")
    if autoregressive and str(teacher) != EXACT:
        raise ValueError("--autoregressive samples the exact teacher frame by frame; a trained teacher's causal export "
                         "is its teacher-forcing mode (a DistillationModule checkpoint). Use --teacher exact or drop "
                         "--autoregressive.")
    if str(teacher) == EXACT and (block_size is not None or use_ema is not None):
        raise ValueError("--block-size and --ema choose a causal teacher's layout and weights; the exact teacher "
                         "has neither. Drop them.")
    if negative_prompt is None:
        negative_prompt = index.get("negative_prompt", "")
    cached_negative = load_negative(source) if index.get("negative_prompt") == negative_prompt else None
    if str(teacher) != EXACT:
        module, kind, velocity_for, fields = load_trajectory_teacher(teacher, block_size, use_ema, log)
        if cached_negative is None:
            module.encode_prompts([negative_prompt])  # a prompt the text encoder refuses fails here, not mid-export
    total = min(num_videos or index["total"], index["total"])
    urls = [str(Path(source) / s["name"]) for s in index["shards"]]
    stream = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), _decode_skipping_corrupt)
    first = next(iter(stream), None)
    if first is None or not any(m in first for m in GROUND_TRUTH_MEMBERS):
        raise ValueError(f"Source split {source} has no readable sample with pixels or latents; regenerate it with "
                         "`oneforcing data toy`.")
    if str(teacher) == EXACT:
        module, kind, velocity_for, fields = load_exact_teacher(index, first, bank_size, bank_seed, negative_prompt, log,
                                                                spatial_factor or 2)
    if kind == "causal_teacher_forcing":
        num_frames = _ground_truth_latents(module, [first]).shape[1]
        try:
            CausalWanBackbone.layout_for(num_frames, fields["block_size"], fields["first_block_size"])
        except ValueError as error:
            raise ValueError(f"The causal teacher's block layout does not fit the source's {num_frames} latent "
                             f"frames ({error}); pass a --block-size that does.") from None
    sigmas_tensor = torch.tensor(snapshot_sigmas, dtype=torch.float32)
    cached_prompts = PROMPT_MEMBER in first
    if cached_prompts or cached_negative is not None:
        length = module.text_encoder.context_length

    def contexts(batch: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(captions' contexts, negative prompt's) (B, L, D): the source's cached embeddings when it has them."""
        cond = (pad_contexts([s[PROMPT_MEMBER] for s in batch], length).float() if cached_prompts
                else module.encode_prompts([s["caption"] for s in batch]))
        uncond = (pad_contexts([cached_negative] * len(batch), length).float() if cached_negative is not None
                  else module.encode_prompts([negative_prompt] * len(batch)))
        return cond, uncond

    def batches():
        batch = []
        for sample in stream:
            batch.append(sample)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def samples():
        done = 0
        with Progress(disable=not progress) as bar:
            task = bar.add_task(f"teacher ODE trajectories ({kind})", total=total)
            for batch in batches():
                batch = batch[: total - done]
                x0 = _ground_truth_latents(module, batch)  # (B, F, C, H, W)
                noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(seed + done + i))
                                     for i in range(len(batch))])
                sample = sample_autoregressive_trajectory if autoregressive else sample_trajectory
                trajectory, output = sample(velocity_for(x0), noise, *contexts(batch), grid, guidance_scale, indices)
                for i, s in enumerate(batch):
                    attributes = dict(s["attributes"], trajectory_steps=steps, trajectory_shift=shift,
                                      trajectory_guidance=guidance_scale, noise_seed=seed + done + i)
                    truth = {m: s[m] for m in (*GROUND_TRUTH_MEMBERS, PROMPT_MEMBER) if m in s}
                    yield encode_sample(s["key"], {**truth, "trajectory": trajectory[i].half(),
                                                   "trajectory_sigmas": sigmas_tensor, "ode_output": output[i].half()},
                                        s["caption"], attributes)
                done += len(batch)
                bar.update(task, advance=len(batch))
                if done >= total:
                    return

    meta = dict(kind="trajectories", teacher=str(teacher), steps=steps, shift=shift, guidance_scale=guidance_scale,
                snapshot_sigmas=snapshot_sigmas, source=str(source), negative_prompt=negative_prompt,
                order="autoregressive" if autoregressive else "joint", **fields)
    if cached_prompts:
        meta.update({k: index[k] for k in ("context_length", "context_dim", "model_dir") if k in index})
    if cached_negative is not None:  # carried over: the trajectory split trains without a text encoder too
        save_negative(out, cached_negative)
    module.eval()
    with torch.no_grad():
        return write_shards(samples(), out, samples_per_shard, meta=meta)


def trajectories_command(cfg) -> None:
    start = time.perf_counter()
    console = Console()
    index = export_trajectories(cfg.teacher, cfg.source, cfg.out, cfg.num_videos, cfg.steps, cfg.shift,
                                cfg.guidance_scale, cfg.snapshot_steps, cfg.batch_size, cfg.seed, cfg.samples_per_shard,
                                negative_prompt=cfg.negative_prompt, block_size=cfg.block_size, use_ema=cfg.use_ema,
                                log=console.print, bank_size=cfg.bank_size, bank_seed=cfg.bank_seed,
                                autoregressive=cfg.autoregressive,
                                spatial_factor=cfg.spatial_factor)
    console.print(f"[green]Wrote {index['total']} {index['teacher_kind']} trajectories to {cfg.out} in "
                  f"{time.perf_counter() - start:.0f} s")
