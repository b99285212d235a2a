"""Does a trained module draw what its prompt says? Prompt-attribute accuracy of its samples vs real videos.

For N deterministic one-object prompts (``random_caption`` on a seeded numpy generator) the module samples
one video each with its ``generate()`` (Euler + CFG; 48 steps by default), and the toy world renders one
real video per prompt. Both sets are read by ``oneforcing.toy.attributes`` (colour / direction /
shape / found / wrong-sized); the real row is the measure's ceiling on these prompts. Also reported: the
evaluation's ``sharpness_ratio`` (the Laplacian's energy at each frame's edges, generated over real; 1 = as sharp,
blur < 1): measured at the edges, because on the default flat background a whole-frame measure reads faint
background grain as large ratios (an earlier teacher: 4.46 over the whole frame).

Real videos for a caption: the world draws every attribute from ``rng([seed, index])`` before it renders
anything, and ``num_frames`` changes only how many frames are rendered, so we scan indices 0, 1, 2, ... of
``--real-seed`` with one-object videos rendered at a single frame (cheap), remember the first index whose
caption matches each prompt, then render those indices at full length (and check the caption again).
About 400 indices per distinct caption are scanned on average (384 one-object captions).

    python benchmarks/teacher_attributes.py --checkpoint runs/toy_teacher/version_0/weights.safetensors \\
        [--num-prompts 64] [--steps 48] [--guidance-scale 4] [--sample-shift 5] [--batch-size 16] [--device cpu] \\
        [--out runs/teacher_attributes]

Writes ``OUT/attributes.md`` (the table), ``OUT/attributes.json`` and ``OUT/generated_vs_real.gif`` (the
first 8 samples, top row generated, bottom row real, same prompts).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from oneforcing.evaluation.metrics import edge_sharpness, sharpness_ratio
from oneforcing.lightning_modules.checkpoints import load_trained_module
from oneforcing.toy.attributes import ATTRIBUTES, attribute_accuracy
from oneforcing.toy.world import make_video, random_caption
from oneforcing.video_io import video_grid, write_video


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help=".safetensors export or Lightning .ckpt of a module with generate()")
    p.add_argument("--num-prompts", type=int, default=64, help="one-object prompts (one sample each)")
    p.add_argument("--seed", type=int, default=0,
                   help="draws the prompts; prompt i is sampled with noise seed + i")
    p.add_argument("--real-seed", type=int, default=2024, help="toy-world seed scanned for the real videos")
    p.add_argument("--steps", type=int, default=48, help="Euler steps")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="CFG weight w in uncond + w·(cond − uncond) (the papers' g is w − 1); "
                        "default: the module's")
    p.add_argument("--sample-shift", type=float, default=None,
                   help="shift of the Euler σ schedule; default: the module's")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guide only the Euler steps with σ in (LO, HI]; default: the module's")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="where to sample (cpu, cuda, ...)")
    p.add_argument("--out", default="runs/teacher_attributes",
                   help="directory for the table and the GIF grid")
    return p


def prompts_for(num: int, seed: int) -> list[str]:
    """``num`` one-object captions drawn from ``np.random.default_rng(seed)`` (same list on any machine)."""
    rng = np.random.default_rng(seed)
    return [random_caption(rng) for _ in range(num)]


def real_videos_for(
    captions: list[str], seed: int, num_frames: int, size: int, max_scan: int = 200_000
) -> torch.Tensor:
    """One real video per caption, (B, F, 3, H, W) in [-1, 1]: the first matching index of ``seed``."""
    wanted = set(captions)
    first: dict[str, int] = {}
    for index in range(max_scan):
        caption = make_video(seed, index, num_frames=1, size=size, max_objects=1).caption
        if caption in wanted and caption not in first:
            first[caption] = index
            if len(first) == len(wanted):
                break
    missing = wanted - set(first)
    if missing:
        raise RuntimeError(f"No real video for {sorted(missing)} in {max_scan} indices of seed {seed}.")
    rendered = {}
    for caption, index in first.items():
        video = make_video(seed, index, num_frames=num_frames, size=size, max_objects=1)
        assert video.caption == caption, f"index {index}: {video.caption!r} in full, {caption!r} at 1 frame"
        rendered[caption] = torch.from_numpy(video.pixels).float() / 127.5 - 1.0  # (F, 3, H, W)
    return torch.stack([rendered[c] for c in captions])


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    columns = (*ATTRIBUTES, "found", "wrong_size")
    lines = ["| videos | n | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, scores in rows.items():
        cells = " | ".join(f"{scores[c]:.2f}" for c in columns)
        lines.append(f"| {name} | {int(scores['videos'])} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.num_prompts < 1 or args.steps < 1 or args.batch_size < 1:
        raise SystemExit(f"--num-prompts {args.num_prompts}, --steps {args.steps}, "
                         f"--batch-size {args.batch_size}: each must be >= 1.")
    torch.set_grad_enabled(False)
    module = load_trained_module(args.checkpoint).to(args.device)
    if not hasattr(module, "generate"):
        raise SystemExit(f"{args.checkpoint} holds a {type(module).__name__}, which has no generate(); "
                         "pass a teacher.")
    hp = module.hparams
    captions = prompts_for(args.num_prompts, args.seed)

    start = time.perf_counter()
    real = real_videos_for(captions, args.real_seed, hp.num_frames, hp.frame_size)
    real_s = time.perf_counter() - start

    guidance = hp.guidance_scale if args.guidance_scale is None else args.guidance_scale
    shift = hp.sample_shift if args.sample_shift is None else args.sample_shift
    interval = tuple(hp.guidance_interval if args.guidance_interval is None else args.guidance_interval)
    start = time.perf_counter()
    generated = torch.cat([
        module.generate(captions[i: i + args.batch_size], seed=args.seed + i, num_steps=args.steps,
                        guidance_scale=guidance, shift=shift, guidance_interval=interval).float().cpu()
        for i in range(0, len(captions), args.batch_size)
    ]).clamp(-1, 1)  # (N, F, 3, H, W)
    generate_s = time.perf_counter() - start

    rows = {"real": attribute_accuracy(real, captions), "generated": attribute_accuracy(generated, captions)}
    sharp = {"generated": float(edge_sharpness(generated).mean()), "real": float(edge_sharpness(real).mean())}
    ratio = sharpness_ratio(generated, real)
    report = "\n".join([
        f"Prompt-attribute accuracy of `{args.checkpoint}` ({args.num_prompts} one-object prompts, "
        f"seed {args.seed}; {args.steps} Euler steps, shift {shift}, CFG w = {guidance} "
        f"for σ in ({interval[0]}, {interval[1]}]); "
        f"real = one toy-world video per prompt (seed {args.real_seed}).",
        "",
        markdown_table(rows),
        "",
        f"Sharpness (Laplacian energy at the edges): generated {sharp['generated']:.4f}, real {sharp['real']:.4f}, "
        f"ratio {ratio:.2f} (1 = as sharp as real; < 1 blurrier).",
        "",
        f"Time: sampling {generate_s:.1f} s, finding and rendering the real videos {real_s:.1f} s.",
    ])
    print(report)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attributes.md").write_text(report + "\n")
    (out / "attributes.json").write_text(json.dumps(
        dict(checkpoint=args.checkpoint, captions=captions, steps=args.steps, guidance_scale=guidance,
             sample_shift=shift, guidance_interval=interval,
             accuracy=rows, sharpness=sharp, sharpness_ratio=ratio), indent=2))
    shown = min(8, len(captions))
    grid = video_grid(torch.cat([generated[:shown], real[:shown]]), columns=shown)  # generated over real
    path = write_video(out / "generated_vs_real.gif", grid)
    print(f"\nWrote {out / 'attributes.md'}, {out / 'attributes.json'} and {path} "
          "(top row generated, bottom row real).")


if __name__ == "__main__":
    main()
