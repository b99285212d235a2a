"""Does a teacher know which way its objects move? Probes of its denoiser, without sampling.

For N real one-object toy videos, noised at σ (one noise draw per σ), the teacher predicts the clean video
x̂0 = x_σ − σ·v(x_σ, σ, c). Reported per σ, as mean squared differences of x̂0:

- **swap direction / swap axis / swap colour**: the caption's direction word replaced by its opposite
  (left↔right, up↔down), by the other axis (left→up, up→left, ...), or its colour by another one. A teacher
  that reads the direction's sign changes its prediction about as much as for a colour; one that reads only
  the axis barely changes it under the first swap.
- **reverse time / shuffle time**: x̂0 of the time-reversed input, reversed back, against x̂0; the same for a
  fixed random frame permutation. A teacher whose output is (nearly) unchanged by reversal but not by a
  shuffle sees only how far apart frames are, not their order: it cannot tell left from right.
- **frame 0 clean**: the same swaps with frame 0 left clean (σ = 0 there, σ on the others; the change is
  measured on frames 1 onwards). With the object's position given at one frame, the sign says where it is
  at every other, so a teacher that reads the sign must change its prediction here.
- **mean path**: for "a large red circle moving <d> quickly", x̂0 from near-pure noise (σ = 0.98, 32 draws)
  is the teacher's estimate of the average video of that caption. Its red centroid along the axis of motion,
  per frame, against the average path of real quick objects moving <d>: a real "right" object is on the left
  at frame 0 and on the right later. A teacher that does not know which frame is which draws the same flat
  path for every direction.

    python benchmarks/teacher_direction_probe.py --checkpoint assets/toy_teacher.safetensors [--num-videos 32]

Takes seconds on a CPU.
"""

from __future__ import annotations

import argparse

import torch

from oneforcing.lightning_modules.checkpoints import load_trained_module
from oneforcing.models.flow_matching import add_noise, x0_from_velocity
from oneforcing.toy.vocabulary import COLOURS, DIRECTIONS
from oneforcing.toy.world import make_video

_BY_MOTION = {motion: name for name, motion in DIRECTIONS.items()}
OPPOSITE = {d: _BY_MOTION[(-dx, -dy)] for d, (dx, dy) in DIRECTIONS.items()}  # left -> right, up -> down
OTHER_AXIS = {d: _BY_MOTION[(dy, dx)] for d, (dx, dy) in DIRECTIONS.items()}  # left -> up, right -> down
_COLOURS = list(COLOURS)
NEXT_COLOUR = {c: _COLOURS[(i + 1) % len(_COLOURS)] for i, c in enumerate(_COLOURS)}
SWAPS = {"swap direction": OPPOSITE, "swap axis": OTHER_AXIS, "swap colour": NEXT_COLOUR}  # caption edits
AXIS = {d: 0 if dx else 1 for d, (dx, _) in DIRECTIONS.items()}  # 0: moves along x, 1: along y


def replace_words(caption: str, mapping: dict[str, str]) -> str:
    return " ".join(mapping.get(word, word) for word in caption.split())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help=".safetensors export or Lightning .ckpt of a TeacherModule")
    p.add_argument("--num-videos", type=int, default=32, help="real one-object videos")
    p.add_argument("--seed", type=int, default=7, help="toy-world seed of the real videos")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.9, 0.7, 0.5, 0.3])
    return p


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    module = load_trained_module(args.checkpoint).eval().float()
    videos = [make_video(args.seed, i, max_objects=1) for i in range(args.num_videos)]
    pixels = torch.stack([torch.from_numpy(v.pixels).float() / 127.5 - 1.0 for v in videos])  # (N, F, 3, H, W)
    x0 = module.codec.encode(pixels)  # (N, F, C, h, w)
    captions = [v.caption for v in videos]
    caption_context = module.encode_prompts(captions)
    swapped = {name: module.encode_prompts([replace_words(c, mapping) for c in captions])
               for name, mapping in SWAPS.items()}
    generator = torch.Generator().manual_seed(0)
    shuffle = torch.randperm(x0.shape[1], generator=generator)

    def predict_x0(x_t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return x0_from_velocity(x_t, module.model(x_t, sigma, context).float(), sigma)

    print(f"{args.checkpoint}: mean squared change of x̂0 over {len(videos)} real one-object videos")
    names = (*SWAPS, "reverse time", "shuffle time")
    print("| σ | x̂0 error | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for s in args.sigmas:
        sigma = torch.full((len(videos),), s)
        x_t = add_noise(x0, torch.randn(x0.shape, generator=generator), sigma)
        base = predict_x0(x_t, sigma, caption_context)
        change = {name: (predict_x0(x_t, sigma, context) - base).square().mean().item()
                  for name, context in swapped.items()}
        reversed_back = predict_x0(x_t.flip(1), sigma, caption_context).flip(1)
        shuffled = predict_x0(x_t[:, shuffle], sigma, caption_context)
        change["reverse time"] = (reversed_back - base).square().mean().item()
        change["shuffle time"] = (shuffled - base[:, shuffle]).square().mean().item()
        error = (base - x0).square().mean().item()
        print(f"| {s} | {error:.4f} | " + " | ".join(f"{change[k]:.6f}" for k in names) + " |")

    print("\nThe same swaps with frame 0 clean (σ = 0 there), on frames 1 onwards")
    print("| σ | x̂0 error | " + " | ".join(SWAPS) + " |")
    print("|---" * (len(SWAPS) + 2) + "|")
    for s in args.sigmas:
        sigma = torch.full(x0.shape[:2], s)  # (N, F): one σ per frame
        sigma[:, 0] = 0.0
        x_t = add_noise(x0, torch.randn(x0.shape, generator=generator), sigma)
        base = predict_x0(x_t, sigma, caption_context)[:, 1:]
        change = {name: (predict_x0(x_t, sigma, context)[:, 1:] - base).square().mean().item()
                  for name, context in swapped.items()}
        error = (base - x0[:, 1:]).square().mean().item()
        print(f"| {s} | {error:.4f} | " + " | ".join(f"{change[k]:.6f}" for k in SWAPS) + " |")
    print_mean_paths(module, x0.shape[1:], args.seed, predict_x0)


def red_centroid(pixels: torch.Tensor, axis: int) -> torch.Tensor:
    """(N, F, 3, H, W) in [-1, 1] -> (F,) mean centroid of red excess (R − (G + B)/2) along x (axis 0) or y."""
    red = (pixels[:, :, 0] - pixels[:, :, 1:].mean(dim=2)).clamp(min=0).mean(dim=0)  # (F, H, W)
    weights = red.sum(dim=1 + (1 - axis))  # (F, W) for x, (F, H) for y
    coords = torch.arange(weights.shape[1], dtype=torch.float32) + 0.5
    return (weights * coords).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-8)


def show(path: torch.Tensor) -> str:
    """Every other frame's value (6 of the 12 frames), to one decimal."""
    return " ".join(f"{v:.1f}" for v in path[:: max(1, len(path) // 6)].tolist())


def print_mean_paths(module, latent_shape: torch.Size, seed: int, predict_x0, draws: int = 32,
                     sigma: float = 0.98) -> None:
    num_frames = latent_shape[0]  # (F, C, h, w): one video frame per latent frame in the toy codec
    real_paths: dict[str, list] = {d: [] for d in DIRECTIONS}
    for i in range(2000):
        obj = make_video(seed + 1, i, num_frames=num_frames, max_objects=1).attributes["objects"][0]
        if obj["speed"] == "quickly":
            real_paths[obj["direction"]].append([point[AXIS[obj["direction"]]] for point in obj["trajectory"]])
    noise = torch.randn((draws, *latent_shape), generator=torch.Generator().manual_seed(1))
    print(f"\nMean path along the axis of motion (px, frame 0 → {num_frames - 1}): teacher x̂0 at σ = {sigma} "
          f"({draws} draws) vs the mean of real quick objects")
    print("| caption direction | teacher | real |")
    print("|---|---|---|")
    for direction in DIRECTIONS:
        context = module.encode_prompts([f"a large red circle moving {direction} quickly"] * draws)
        x0 = predict_x0(noise, torch.full((draws,), sigma), context)
        teacher = red_centroid(module.codec.decode(x0), AXIS[direction])
        real = torch.tensor(real_paths[direction]).mean(dim=0)
        print(f"| {direction} | {show(teacher)} | {show(real)} |")


if __name__ == "__main__":
    main()
