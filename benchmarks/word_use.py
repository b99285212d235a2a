"""Does a causal student read a caption word? Its flow loss on one frame with the word right, against the word swapped.

Sampling a student and reading its motion (``benchmarks/sampled_motion.py``) is the end-to-end test, but it is noisy
and slow. This asks the network directly: given the world's clean frames before frame k (teacher forcing) and frame k
noised to σ, how well does it predict the velocity of frame k when the caption is the video's own, and when one
attribute word is replaced by another value? A network that ignores the word scores the same under both (ratio 1.00);
one that reads it is worse with the wrong word (ratio > 1). Frame 1 on the torus world is where only the direction
word tells where the object goes, so the direction ratio at frame 1 is the measure of whether the word is learned.
Every caption is scored under every other value of the word (the mean over them), on the same noise.

    python benchmarks/word_use.py --checkpoint A.ckpt [B.ckpt ...] [--word direction] [--frame 1] [--wrap --speed-scale 4 --trail]
"""

from __future__ import annotations

import argparse

import torch

from oneforcing.lightning_modules.checkpoints import causal_generator_from, load_trained_module
from oneforcing.models.flow_matching import add_noise, velocity_target
from oneforcing.toy.attributes import one_object_attributes
from oneforcing.toy.vocabulary import COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS
from oneforcing.toy.world import make_video

VALUES = dict(size=tuple(SIZES), colour=tuple(COLOURS), shape=tuple(SHAPES), direction=tuple(DIRECTIONS),
              speed=tuple(SPEEDS))


def swapped(caption: str, word: str, value: str) -> str:
    """The one-object caption with its ``word`` attribute set to ``value``."""
    named = one_object_attributes(caption)
    named[word] = value
    return f"a {named['size']} {named['colour']} {named['shape']} moving {named['direction']} {named['speed']}"


@torch.no_grad()
def frame_losses(module, pixels: torch.Tensor, captions: list[str], frame: int, sigmas: tuple[float, ...],
                 seed: int = 0) -> torch.Tensor:
    """Flow loss of frame ``frame`` per (σ, video), the earlier frames clean: (len(sigmas), N)."""
    hp = module.hparams
    generator = causal_generator_from(module, hp.block_size, hp.first_block_size)
    x0 = module.codec.encode(pixels)  # (N, F, C, h, w)
    context = module.encode_prompts(captions)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)
    out = []
    for s in sigmas:
        sigma = torch.zeros(x0.shape[:2])
        sigma[:, frame:] = s  # frame k and later noised; only frame k is scored (later frames cannot reach it)
        v = generator.forward_teacher_forcing(add_noise(x0, noise, sigma), sigma, context, clean=x0)
        err = (v.float() - velocity_target(x0, noise).float())[:, frame].square()
        out.append(err.flatten(1).mean(1))
    return torch.stack(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True)
    p.add_argument("--word", choices=tuple(VALUES), default="direction")
    p.add_argument("--frame", type=int, default=1, help="the scored frame (its earlier frames are given clean)")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--num-frames", type=int, default=6)
    p.add_argument("--speed-scale", type=float, default=1.0, help="the world variant the students learned")
    p.add_argument("--wrap", action="store_true", help="the torus world variant (oneforcing data toy --wrap true)")
    p.add_argument("--trail", action="store_true", help="the trail world variant (oneforcing data toy --trail true)")
    args = p.parse_args()
    torch.set_num_threads(1)
    videos = [make_video(777, i, num_frames=args.num_frames, speed_scale=args.speed_scale, wrap=args.wrap,
                         trail=args.trail)
              for i in range(args.count)]
    pixels = torch.stack([torch.from_numpy(v.pixels).float() / 127.5 - 1 for v in videos])
    captions = [v.caption for v in videos]
    heads = " | ".join(f"σ = {s}" for s in args.sigmas)
    print(f"Frame {args.frame}'s flow loss, {args.count} videos: own caption → with the {args.word} word swapped "
          f"(ratio)\n\n| checkpoint | {heads} |\n|---|{'---|' * len(args.sigmas)}")
    for checkpoint in args.checkpoint:
        module = load_trained_module(checkpoint).eval()
        own = frame_losses(module, pixels, captions, args.frame, tuple(args.sigmas))
        others = []
        for value in VALUES[args.word]:
            keep = [one_object_attributes(c)[args.word] != value for c in captions]
            loss = frame_losses(module, pixels, [swapped(c, args.word, value) for c in captions], args.frame,
                                tuple(args.sigmas))
            others.append(torch.where(torch.tensor(keep), loss, torch.nan))
        wrong = torch.stack(others).nanmean(0)  # (S, N): the mean over the other values
        cells = " | ".join(f"{o:.4f} → {w:.4f} ({w / o:.2f})" for o, w in zip(own.mean(1), wrong.mean(1)))
        print(f"| {checkpoint} | {cells} |")


if __name__ == "__main__":
    main()
