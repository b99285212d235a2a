"""How do a student's *sampled* objects move? Per-frame centroid displacement along the caption, and the reader.

The next-frame probe (``benchmarks/next_frame_probe.py``) shows a student the true context; this one lets it make
its own: 32 one-object prompts (every direction, both speeds) sampled by the streaming sampler, and per step
between frames k − 1 and k (frame widths, centroids weighted by the distance to the flat background) the
displacement along the captioned direction and across it, beside the world's own videos of the same prompts;
and what the attribute reader makes of them (found, direction right / wrong / unread, its measured speed).
A second table gives each student the world's own first block (``StreamingSampler(prefix=...)``) and samples the
rest: the displacement of the first generated frame along the caption, as a fraction of the world's. From a still
frame only the caption tells where the object goes, unless the position does: the world starts each object in the
third of its path it moves away from, so a student may have learned "move away from the nearer border" instead of
the word. The third column asks the same with the direction word reversed (the world's first frame of "moving
right", the caption "moving left"): a student that reads the word moves along the new caption (positive), one
that reads the position keeps the old way (negative).

    python benchmarks/sampled_motion.py --checkpoint A.ckpt [B.safetensors ...] [--steps 16 [--shift 1]] [--num-frames 6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from next_frame_probe import centroid  # noqa: E402

from oneforcing.commands.evaluate import sample  # noqa: E402
from oneforcing.lightning_modules.checkpoints import causal_generator_from, load_trained_module  # noqa: E402
from oneforcing.sampling.schedules import student_sigmas  # noqa: E402
from oneforcing.sampling.streaming import StreamingSampler, per_prompt_generators  # noqa: E402
from oneforcing.toy.attributes import measure_video, one_object_attributes  # noqa: E402
from oneforcing.toy.vocabulary import DIRECTIONS  # noqa: E402
from oneforcing.toy.world import make_video  # noqa: E402


WRAP = {"on": False}  # the torus world variant: centroids as circular means, displacements to the nearest image
TRAIL = {"on": False}  # the trail world variant


def torus_centroid(frame: torch.Tensor, threshold: float = 0.1) -> torch.Tensor | None:
    """``centroid`` on a torus: the circular mean of each coordinate (an object split across a side stays one)."""
    background = frame.flatten(1).median(dim=1).values
    weight = (frame - background[:, None, None]).norm(dim=0)
    weight = torch.where(weight > threshold, weight, torch.zeros(()))
    if weight.sum() < 1.0:
        return None
    H, W = weight.shape
    angles = [2 * torch.pi * torch.arange(n) / n for n in (W, H)]
    marginals = [weight.sum(0), weight.sum(1)]
    return torch.stack([torch.atan2((m * a.sin()).sum(), (m * a.cos()).sum()) / (2 * torch.pi) % 1.0
                        for m, a in zip(marginals, angles)])


def point(frame: torch.Tensor) -> torch.Tensor | None:
    return torus_centroid(frame) if WRAP["on"] else centroid(frame)


def step(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Displacement from centroid a to b (frame widths), to the nearest image on the torus."""
    d = b - a
    return (d + 0.5) % 1.0 - 0.5 if WRAP["on"] else d


def world_videos(count: int, num_frames: int, seed: int = 777, speed_scale: float = 1.0) -> tuple[torch.Tensor, list[str]]:
    videos = [make_video(seed, i, num_frames=num_frames, speed_scale=speed_scale, wrap=WRAP["on"],
                         trail=TRAIL["on"]) for i in range(count)]
    pixels = torch.stack([torch.from_numpy(v.pixels).float() / 127.5 - 1 for v in videos])
    return pixels, [v.caption for v in videos]


def motion(videos: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Mean per-frame displacement along / across the caption (frame widths), per step index, and the reader."""
    along = torch.zeros(videos.shape[1] - 1)
    across = torch.zeros(videos.shape[1] - 1)
    counts = torch.zeros(videos.shape[1] - 1)
    read = {"found": 0, "right": 0, "wrong": 0, "unread": 0}
    speeds, starts = [], []
    for video, caption in zip(videos, captions):
        unit = torch.tensor(DIRECTIONS[one_object_attributes(caption)["direction"]])
        normal = torch.stack([-unit[1], unit[0]])
        c = [point(frame) for frame in video]
        if c[0] is not None:  # where frame 0 puts the object along its motion: 0 the border it leaves, 1 the other
            starts.append(float(c[0] @ unit) if float(unit.sum()) > 0 else 1 + float(c[0] @ unit))
        for k in range(1, len(c)):
            if c[k] is not None and c[k - 1] is not None:
                along[k - 1] += step(c[k - 1], c[k]) @ unit
                across[k - 1] += (step(c[k - 1], c[k]) @ normal).abs()
                counts[k - 1] += 1
        m = measure_video(video)
        read["found"] += m["found"]
        if m["found"]:
            key = "unread" if m["direction"] is None else "right" if m["direction"] == one_object_attributes(caption)["direction"] else "wrong"
            read[key] += 1
        if m["speed"] is not None:
            speeds.append(m["speed"])
    n = len(captions)
    return {"along": (along / counts.clamp_min(1)).tolist(), "across": (across / counts.clamp_min(1)).tolist(),
            **{k: v / n for k, v in read.items()}, "speed": sum(speeds) / max(len(speeds), 1),
            "start": sum(starts) / max(len(starts), 1)}


def displacement_along(first: torch.Tensor, second: torch.Tensor, captions: list[str]) -> float:
    """Mean centroid displacement (frame widths) from frames ``first`` to ``second`` (N, 3, H, W) along the caption."""
    moved = []
    for a, b, caption in zip(first, second, captions):
        p, q = point(a), point(b)
        if p is not None and q is not None:
            moved.append(float(step(p, q) @ torch.tensor(DIRECTIONS[one_object_attributes(caption)["direction"]])))
    return sum(moved) / max(len(moved), 1)


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def reversed_caption(caption: str) -> str:
    """The caption with the opposite direction word."""
    words = caption.split()
    words[5] = OPPOSITE[words[5]]
    return " ".join(words)


@torch.no_grad()
def continuation(module, real: torch.Tensor, captions: list[str], steps: int | None) -> float:
    """The first generated frame's displacement along ``captions``, given the world's first block (whose videos may
    follow other captions: see ``--reversed``)."""
    hp = module.hparams
    generator = causal_generator_from(module, hp.block_size, hp.first_block_size)
    first = generator.layout(real.shape[1]).blocks[0][1]
    sigmas = student_sigmas(steps, hp.warp_shift) if steps else module.step_sigmas  # as `oneforcing evaluate`
    sampler = StreamingSampler(generator, sigmas, module.first_block_sigmas, solver=module.solver)
    prefix = module.codec.encode(real[:, :first])
    latents = sampler.sample(module.encode_prompts(captions), first + hp.block_size, module.latent_shape(),
                             per_prompt_generators(0, len(captions)), prefix=prefix)
    pixels = module.codec.decode(latents)
    return displacement_along(real[:, first - 1], pixels[:, first], captions)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the training schedule)")
    p.add_argument("--shift", type=float, default=None, help="the schedule's warp shift with --steps (default: the "
                   "student's warp_shift)")
    p.add_argument("--solver", choices=["renoise", "euler"], default=None,
                   help="the sampler update (default: the checkpoint's; checkpoints from before it was recorded "
                        "read as renoise)")
    p.add_argument("--block-size", type=int, default=None,
                   help="sample in another block layout than the one trained (default: the checkpoint's)")
    p.add_argument("--first-block-size", type=int, default=None,
                   help="the first block's size with --block-size or alone (default: the checkpoint's)")
    p.add_argument("--num-frames", type=int, default=6)
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--speed-scale", type=float, default=1.0, help="the world variant the students learned")
    p.add_argument("--wrap", action="store_true", help="the torus world variant (oneforcing data toy --wrap true)")
    p.add_argument("--trail", action="store_true", help="the trail world variant (oneforcing data toy --trail true)")
    args = p.parse_args()
    WRAP["on"], TRAIL["on"] = args.wrap, args.trail
    torch.set_num_threads(1)
    real, captions = world_videos(args.count, args.num_frames, speed_scale=args.speed_scale)
    rows = [("the world", motion(real, captions))]
    world_step = displacement_along(real[:, 0], real[:, 1], captions)
    continued = []
    for checkpoint in args.checkpoint:
        module = load_trained_module(checkpoint).eval()
        if args.shift is not None:
            module.hparams.warp_shift = args.shift
        if args.solver is not None:
            module.hparams.solver = args.solver
        if args.block_size is not None:
            module.hparams.block_size = args.block_size
        if args.first_block_size is not None:
            module.hparams.first_block_size = args.first_block_size
        videos = sample(module, captions, seed=0, steps=args.steps, batch_size=args.count)
        rows.append((checkpoint, motion(videos, captions)))
        continued.append((checkpoint, continuation(module, real, captions, args.steps),
                          continuation(module, real, [reversed_caption(c) for c in captions], args.steps)))
    print("| videos | along caption per step (frame widths) | across | found | direction right / wrong / unread | "
          "read speed | frame 0 along the motion (0: the border it leaves) |\n|---|---|---|---|---|---|---|")
    for name, r in rows:
        along = " ".join(f"{a:+.3f}" for a in r["along"])
        across = " ".join(f"{a:.3f}" for a in r["across"])
        print(f"| {name} | {along} | {across} | {r['found']:.2f} | {r['right']:.2f} / {r['wrong']:.2f} / "
              f"{r['unread']:.2f} | {r['speed']:.3f} | {r['start']:.2f} |")
    print(f"\n| given the world's first block | first generated frame along caption (frame widths) | / the world's "
          f"({world_step:+.3f}) | with the direction word reversed: along the new caption / the world's |"
          f"\n|---|---|---|---|")
    for name, moved, against in continued:
        print(f"| {name} | {moved:+.4f} | {moved / world_step:+.2f} | {against / world_step:+.2f} |")


if __name__ == "__main__":
    main()
