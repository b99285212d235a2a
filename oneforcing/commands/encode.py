"""``oneforcing data encode`` and ``oneforcing data prompts``: users' videos and prompts as training shards.

``encode``: a folder of videos with captions → clips of the recipe's frames, rate and size → Wan VAE latents
(``latents``, float16) and umT5 caption embeddings (``prompt_embedding``, padding trimmed) → webdataset shards
with ``index.json``, the schema of every other split, so training needs neither the VAE encoder nor umT5.
``prompts``: a prompt file (one per line) → cached umT5 embeddings only (the DMD-family recipes train on
prompts alone, as Self-Forcing does). Both cache the negative prompt's embedding (``negative_prompt.safetensors``).

Work split: ``--workers N`` processes decode and resize videos (ffmpeg, CPU); the VAE and umT5 load once, in the
main process, which encodes the clips in input order. Shards are written atomically one at a time and the run
resumes: a rerun with the same arguments skips the shards already written and gives byte-identical shards. A
video that cannot serve (missing, unreadable, too short, an aspect ratio beyond ``--max-crop``, no caption) is
skipped, counted, printed in the summary and listed with its reason in ``report.json``; it never stops the run.
"""

from __future__ import annotations

from typing import Literal

import multiprocessing
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress

from oneforcing.data.prompt_cache import PROMPT_MEMBER, save_negative, trim_padding
from oneforcing.data.resumable_shards import REPORT_FILE, ResumableShards
from oneforcing.data.shards import encode_sample
from oneforcing.data.video_folder import NO_CAPTION, ClipSpec, SkipVideo, VideoItem, list_videos, read_clip, to_unit_range
from oneforcing.models.text_encoders import WAN_NEGATIVE_PROMPT
from oneforcing.models.wan_components import wan_components
from oneforcing.models.wan_folder import WanModelFolder

LATENT_DTYPE = torch.float16  # Wan latents are ~N(0, 1) per channel: float16 keeps the bf16 VAE's precision, half of fp32


def add_parsers(sub) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    def common(p: ArgumentParser) -> None:
        p.add_argument("--config", action=ActionConfigFile)
        p.add_argument("--model-dir", "--model_dir", dest="model_dir", type=str, required=True,
                       help="the Wan2.1 diffusers folder whose vae/ and text_encoder/ + tokenizer/ encode the data")
        p.add_argument("--out", type=str, required=True, help="the split directory to write (e.g. data/wan_latents/train)")
        p.add_argument("--negative-prompt", "--negative_prompt", dest="negative_prompt", type=str,
                       default=WAN_NEGATIVE_PROMPT, help="the recipes' unconditional CFG text, cached beside the "
                                                         "shards (default: Wan's standard negative prompt)")
        p.add_argument("--dtype", type=Literal["bfloat16", "float32"], default="bfloat16",
                       help="dtype of the VAE and umT5")
        p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8,
                       help="captions per umT5 call")

    encode = ArgumentParser(description="A folder of videos with captions -> Wan VAE latents and umT5 caption "
                                        "embeddings in shards (resumable; bad videos are skipped and reported).")
    common(encode)
    encode.add_argument("--videos", type=str, required=True, help="folder of videos (searched recursively)")
    encode.add_argument("--captions", type=str | None, default=None,
                        help='a .jsonl ({"video": "rel/path.mp4", "caption": "..."} per line) or .csv (video, '
                             "caption) manifest; default: a .txt sidecar beside each video")
    encode.add_argument("--num-frames", "--num_frames", dest="num_frames", type=int, default=81,
                        help="pixel frames per clip, 1 + 4k for Wan's VAE (81 -> 21 latent frames)")
    encode.add_argument("--height", type=int, default=480)
    encode.add_argument("--width", type=int, default=832)
    encode.add_argument("--fps", type=float, default=16.0, help="frame rate of the clips (Wan2.1: 16)")
    encode.add_argument("--max-crop", "--max_crop", dest="max_crop", type=float, default=0.25,
                        help="largest share of a video's width or height the centre crop may cut; wider "
                             "aspect-ratio mismatches are skipped")
    encode.add_argument("--workers", type=int, default=0, help="processes decoding and resizing videos (0: inline)")
    encode.add_argument("--samples-per-shard", "--samples_per_shard", dest="samples_per_shard", type=int, default=64)
    sub.add_subcommand("encode", encode)

    prompts = ArgumentParser(description="A prompt file (one per line) -> cached umT5 embeddings in shards, for "
                                         "recipes that train on prompts alone (DMD).")
    common(prompts)
    prompts.add_argument("--prompts", type=str, required=True, help="text file, one prompt per line")
    prompts.add_argument("--samples-per-shard", "--samples_per_shard", dest="samples_per_shard", type=int, default=1000)
    sub.add_subcommand("prompts", prompts)


# --- shared -------------------------------------------------------------------------------------------------
def _check_folder(model_dir: str) -> None:
    problems = WanModelFolder(model_dir).layout_problems()
    if problems:
        raise ValueError(f"--model-dir {model_dir} is not a Wan2.1 diffusers folder:\n  - " + "\n  - ".join(problems))


def _embed(text_encoder, captions: list[str], batch_size: int) -> list[torch.Tensor]:
    """Each caption's (n, D) context, padding trimmed, in the encoder's dtype."""
    out = []
    for start in range(0, len(captions), batch_size):
        out += [trim_padding(c) for c in text_encoder(captions[start:start + batch_size]).cpu()]
    return out


def _context_meta(text_encoder, negative_prompt: str, out: Path, model_dir: str) -> dict:
    negative = text_encoder([negative_prompt])[0].cpu()  # (L, D)
    save_negative(out, negative)
    return dict(model_dir=str(model_dir), negative_prompt=negative_prompt, context_length=int(negative.shape[0]),
                context_dim=int(negative.shape[1]))


def _report_line(report: dict, out: Path) -> str:
    if not report["skipped"]:
        return ""
    reasons = ", ".join(f"{n} {r}" for r, n in report["skipped_by_reason"].items())
    return f"; [yellow]skipped {report['skipped']} ({reasons}), listed in {out / REPORT_FILE}[/yellow]"


# --- videos -------------------------------------------------------------------------------------------------
def _read(job: tuple[str, ClipSpec]) -> torch.Tensor | SkipVideo:
    """Worker: the clip or the reason it cannot be one (returned, not raised, so the pool keeps going)."""
    try:
        return read_clip(*job)
    except SkipVideo as skip:
        return skip


def _init_worker() -> None:
    torch.set_num_threads(1)


def _clips(items: list[VideoItem], folder: Path, spec: ClipSpec, wanted: list[int],
           workers: int) -> Iterator[tuple[int, torch.Tensor | SkipVideo]]:
    """(input number, clip or skip) in input order; videos without a caption are not decoded."""
    jobs = [i for i in wanted if items[i].caption is not None]
    captionless = {i: SkipVideo(NO_CAPTION, "no caption (no manifest entry text or .txt sidecar)")
                   for i in wanted if items[i].caption is None}
    if workers > 0:
        # fork where there is one (as torch's DataLoader does): workers start at once, without re-importing torch
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = multiprocessing.get_context(method).Pool(workers, initializer=_init_worker)
        decoded = pool.imap(_read, [(str(folder / items[i].video), spec) for i in jobs], chunksize=1)
    else:
        pool, decoded = None, (_read((str(folder / items[i].video), spec)) for i in jobs)
    try:
        stream = iter(decoded)  # consumed lazily: workers run ahead while the main process encodes
        for i in wanted:
            yield i, captionless[i] if i in captionless else next(stream)
    finally:
        if pool is not None:
            pool.terminate()


def encode_videos(videos: str, out: str, model_dir: str, num_frames: int = 81, height: int = 480, width: int = 832,
                  fps: float = 16.0, captions: str | None = None, max_crop: float = 0.25, samples_per_shard: int = 64,
                  workers: int = 0, batch_size: int = 8, negative_prompt: str = WAN_NEGATIVE_PROMPT,
                  dtype: str = "bfloat16", progress: bool = True) -> tuple[dict, dict]:
    """Write the video split ``out``; returns (index, report). Arguments are checked before any video is read."""
    spec = ClipSpec(num_frames, height, width, fps, max_crop)
    problems = spec.problems()
    if (num_frames - 1) % 4:
        problems.append(f"--num-frames {num_frames}: Wan's VAE encodes 1 + 4k frames; use {num_frames - (num_frames - 1) % 4} "
                        f"or {num_frames + 4 - (num_frames - 1) % 4} (81 gives Wan2.1's 21 latent frames)")
    if height % 16 or width % 16:
        problems.append(f"--height {height} and --width {width} must be multiples of 16 (8x VAE, then 2x2 patches)")
    if workers < 0 or batch_size < 1:
        problems.append(f"--workers {workers} must be >= 0 and --batch-size {batch_size} >= 1")
    if problems:
        raise ValueError("Invalid data encode arguments:\n  - " + "\n  - ".join(problems))
    _check_folder(model_dir)
    folder, out = Path(videos), Path(out)
    items = list_videos(folder, captions)
    settings = dict(kind="videos", videos=str(folder.resolve()), captions=str(Path(captions).resolve()) if captions else None,
                    model_dir=str(Path(model_dir).resolve()), num_frames=num_frames, height=height, width=width,
                    fps=fps, max_crop=max_crop, negative_prompt=negative_prompt, dtype=dtype)
    writer = ResumableShards(out, settings, len(items), samples_per_shard)
    codec, text_encoder = wan_components(model_dir, dtype=dtype)
    meta = dict(kind="videos", source=str(folder), num_frames=num_frames, height=height, width=width, fps=fps,
                **_context_meta(text_encoder, negative_prompt, out, model_dir))
    pending = writer.pending()
    wanted = [i for k in pending for i in writer.items_of(k)]
    shard_of = {i: k for k in pending for i in writer.items_of(k)}
    with Progress(disable=not progress) as bar, torch.no_grad():
        task = bar.add_task("encoding videos", total=len(items), completed=len(items) - len(wanted))
        group: list[tuple[int, torch.Tensor]] = []
        skipped: list[dict] = []
        for i, clip in _clips(items, folder, spec, wanted, workers):
            if isinstance(clip, SkipVideo):
                skipped.append({"video": items[i].video, "reason": clip.reason, "detail": clip.detail})
            else:
                group.append((i, clip))
            bar.advance(task)
            if i == writer.items_of(shard_of[i])[-1]:  # the shard's last input: encode and write it
                contexts = _embed(text_encoder, [items[j].caption for j, _ in group], batch_size)
                samples = []
                for (j, pixels), context in zip(group, contexts):
                    latents = codec.encode(to_unit_range(pixels)[None])[0].to(LATENT_DTYPE)  # (F', 16, h, w)
                    samples.append(encode_sample(f"{j:08d}", {"latents": latents, PROMPT_MEMBER: context},
                                                 items[j].caption, {"video": items[j].video, "fps": fps}))
                writer.write(shard_of[i], samples, skipped)
                group, skipped = [], []
    return writer.finish(meta)


# --- prompts ------------------------------------------------------------------------------------------------
def read_prompt_lines(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Prompt file {path} does not exist; pass --prompts FILE (one prompt per line).")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"Prompt file {path} holds no prompts (one per line).")
    return prompts


def cache_prompts(prompts: str, out: str, model_dir: str, negative_prompt: str = WAN_NEGATIVE_PROMPT,
                  samples_per_shard: int = 1000, batch_size: int = 8, dtype: str = "bfloat16",
                  progress: bool = True) -> dict:
    """Write the prompts-only split ``out`` (``prompt_embedding`` + caption per sample); returns its index."""
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size} must be >= 1.")
    _check_folder(model_dir)
    lines, out = read_prompt_lines(prompts), Path(out)
    settings = dict(kind="prompts", prompts=str(Path(prompts).resolve()), model_dir=str(Path(model_dir).resolve()),
                    negative_prompt=negative_prompt, dtype=dtype)
    writer = ResumableShards(out, settings, len(lines), samples_per_shard)
    _, text_encoder = wan_components(model_dir, dtype=dtype)
    meta = dict(kind="prompts", source=str(prompts), **_context_meta(text_encoder, negative_prompt, out, model_dir))
    with Progress(disable=not progress) as bar, torch.no_grad():
        task = bar.add_task("encoding prompts", total=len(lines))
        for shard in range(writer.num_shards):
            numbers = writer.items_of(shard)
            if writer.is_done(shard):
                bar.advance(task, len(numbers))
                continue
            contexts = _embed(text_encoder, [lines[i] for i in numbers], batch_size)
            writer.write(shard, [encode_sample(f"{i:08d}", {PROMPT_MEMBER: c}, lines[i], {"line": i})
                                 for i, c in zip(numbers, contexts)], [])
            bar.advance(task, len(numbers))
    return writer.finish(meta)[0]


# --- commands -----------------------------------------------------------------------------------------------
def encode_command(cfg, log: Callable[[str], None] | None = None) -> None:
    log = log or Console().print
    start = time.perf_counter()
    index, report = encode_videos(cfg.videos, cfg.out, cfg.model_dir, cfg.num_frames, cfg.height, cfg.width, cfg.fps,
                                  cfg.captions, cfg.max_crop, cfg.samples_per_shard, cfg.workers, cfg.batch_size,
                                  cfg.negative_prompt, cfg.dtype)
    if not index["total"]:
        raise ValueError(f"No video of {cfg.videos} could be encoded ({report['skipped']} skipped, reasons in "
                         f"{Path(cfg.out) / REPORT_FILE}); {cfg.out} has no index.json.")
    log(f"[green]Encoded {index['total']} of {report['inputs']} videos into {len(index['shards'])} shards in "
        f"{cfg.out} ({time.perf_counter() - start:.0f} s)[/green]" + _report_line(report, Path(cfg.out)))


def prompts_command(cfg, log: Callable[[str], None] | None = None) -> None:
    log = log or Console().print
    start = time.perf_counter()
    index = cache_prompts(cfg.prompts, cfg.out, cfg.model_dir, cfg.negative_prompt, cfg.samples_per_shard,
                          cfg.batch_size, cfg.dtype)
    log(f"[green]Cached {index['total']} prompt embeddings in {len(index['shards'])} shards in {cfg.out} "
        f"({time.perf_counter() - start:.0f} s)")
