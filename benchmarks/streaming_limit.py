"""What the hardware allows a streaming Wan2.1-1.3B student: FLOPs per latent frame and the ideal frame rate.

Counts, with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (nothing is allocated or run), the
FLOPs of the streaming sampler making 21 latent frames at 480×832 (60 × 104 latents, 1 560 tokens per frame),
1 step per 1-frame block plus the context pass that writes each block's clean K/V (the sampler's real calls, the
KV cache included), and divides by the frames; then the milliseconds per latent frame at a GPU's dense bf16 peak
(H100 SXM: 989 TFLOP/s) and the implied frames per second (a latent frame is 4 video frames after the first, so
21 latent frames are 81 video frames). The VAE decoder and the text encoder are not counted. A measured GPU figure
divided by the ideal one is the fraction of the limit a run reaches.

    python benchmarks/streaming_limit.py [--frames 21] [--steps 1] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WAN21_T2V_1_3B
from oneforcing.sampling.schedules import student_sigmas
from oneforcing.sampling.streaming import StreamingSampler

LATENT = (16, 60, 104)  # 480×832 through Wan2.1's VAE (8× spatial)


def flops_per_frame(frames: int, steps: int, block_size: int = 1) -> tuple[float, list[float]]:
    """(mean FLOPs per latent frame, FLOPs of each block) of a streamed roll-out, counted on meta."""
    with torch.device("meta"):
        model = CausalWanBackbone(WAN21_T2V_1_3B, block_size=block_size).eval()  # FLOPs do not depend on the dtype
    context = torch.empty(1, 512, WAN21_T2V_1_3B.text_dim, device="meta")
    sampler = StreamingSampler(model, student_sigmas(steps))
    per_block = []
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        seen = 0
        # noise is drawn on the CPU and moved to the context's device: meta here
        for _ in sampler.stream(context, frames, LATENT, [torch.Generator() for _ in range(1)]):
            total = counter.get_total_flops()
            per_block.append(total - seen)
            seen = total
    return counter.get_total_flops() / frames, per_block


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM 989, H200 989)")
    args = p.parse_args()
    mean, per_block = flops_per_frame(args.frames, args.steps)
    ideal_ms = mean / (args.peak_tflops * 1e12) * 1e3
    video_frames = 1 + 4 * (args.frames - 1)
    print(f"Wan2.1-1.3B student, {args.frames} latent frames at 480×832, {args.steps} step(s) per 1-frame block + "
          f"context pass\n")
    print("| quantity | value |\n|---|---|")
    print(f"| TFLOPs per latent frame (mean) | {mean / 1e12:.2f} |")
    print(f"| TFLOPs, first frame / last frame | {per_block[0] / 1e12:.2f} / {per_block[-1] / 1e12:.2f} |")
    print(f"| ideal ms per latent frame at {args.peak_tflops:.0f} TFLOP/s | {ideal_ms:.2f} |")
    print(f"| ideal latent frames per second | {1e3 / ideal_ms:.1f} |")
    print(f"| ideal video frames per second ({video_frames} video frames from {args.frames} latent) | "
          f"{video_frames / args.frames * 1e3 / ideal_ms:.1f} |")


if __name__ == "__main__":
    main()
