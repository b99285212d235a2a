"""Streaming-sampler benchmark of the toy causal student.

Measured side by side in one run (ratios are what count; the machine is shared):
  1. per-frame latency and frames/s at 1 step vs 4 steps per block (framewise), and the share of time
     spent outside the model's forwards;
  2. KV cache vs recomputing the prefix: the cost of producing frame F at F = 12, 48, 192, and the cache's
     memory with and without a rolling window;
  3. framewise (1-frame blocks) vs chunkwise (3-frame blocks) throughput.

    python benchmarks/streaming.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanConfig
from oneforcing.sampling.schedules import student_sigmas
from oneforcing.sampling.streaming import StreamingSampler, per_prompt_generators

TOY = WanConfig(num_layers=6, num_attention_heads=4, attention_head_dim=32, ffn_dim=512, text_dim=46)
LATENT = (12, 16, 16)  # 32x32 pixels through the space-to-depth codec: 64 tokens per frame


def timed_rollouts(runs: list[tuple[CausalWanBackbone, int, int]], repeats: int) -> list[dict]:
    """Best-of-``repeats`` wall time of batch-1 roll-outs (model, steps, frames), interleaved so that
    load from other processes hits every configuration alike; also the time inside forward_cached."""
    context = torch.zeros(1, 24, TOY.text_dim)
    best: list[tuple[float, float] | None] = [None] * len(runs)
    for _ in range(repeats):
        for i, (model, steps, num_frames) in enumerate(runs):
            sampler = StreamingSampler(model, student_sigmas(steps))
            inner = {"t": 0.0}
            original = model.forward_cached

            def timed_forward(*args, _original=original, **kwargs):
                start = time.perf_counter()
                out = _original(*args, **kwargs)
                inner["t"] += time.perf_counter() - start
                return out

            model.forward_cached = timed_forward
            start = time.perf_counter()
            sampler.sample(context, num_frames, LATENT, per_prompt_generators(0, 1))
            total = time.perf_counter() - start
            del model.forward_cached  # back to the class method
            if best[i] is None or total < best[i][0]:
                best[i] = (total, inner["t"])
    results = []
    for (model, steps, num_frames), (total, forwards) in zip(runs, best):
        results.append(dict(total=total, per_frame_ms=1000 * total / num_frames, fps=num_frames / total,
                            outside_share=1 - forwards / total))
    return results


@torch.no_grad()
def cost_of_frame(model: CausalWanBackbone, num_frames: int, repeats: int) -> tuple[float, float]:
    """(cached, recomputed) seconds to produce frame ``num_frames`` - 1 at one step."""
    context = torch.zeros(1, 24, TOY.text_dim)
    C, H, W = LATENT
    cache = model.new_cache(1, H, W, num_frames)
    x = torch.randn(1, num_frames, C, H, W)
    ones = torch.ones(1, 1)
    for f in range(num_frames - 1):
        model.forward_cached(x[:, f:f + 1], ones * 0, context, cache, f)
    cached = []
    recomputed = []
    for _ in range(repeats):  # interleaved: the last frame over the cache (rewrites are allowed) ...
        start = time.perf_counter()
        model.forward_cached(x[:, -1:], ones, context, cache, num_frames - 1)
        cached.append(time.perf_counter() - start)
        start = time.perf_counter()  # ... and without a cache, the whole prefix recomputed for the new frame
        model(x, torch.ones(1, num_frames), context)
        recomputed.append(time.perf_counter() - start)
    return min(cached), min(recomputed)


def cache_megabytes(model: CausalWanBackbone, num_frames: int) -> float:
    cache = model.new_cache(1, LATENT[1], LATENT[2], num_frames)
    return 2 * cache.k.numel() * cache.k.element_size() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    framewise = CausalWanBackbone(TOY, block_size=1).eval()
    chunkwise = CausalWanBackbone(TOY, block_size=3).eval()
    chunkwise.load_state_dict(framewise.state_dict())
    windowed = CausalWanBackbone(TOY, block_size=1, window_frames=12, sink_frames=1).eval()
    windowed.load_state_dict(framewise.state_dict())
    timed_rollouts([(framewise, 1, 12)], 1)  # warm-up
    one, four, cw_one, cw_four = timed_rollouts(
        [(framewise, 1, 12), (framewise, 4, 12), (chunkwise, 1, 12), (chunkwise, 4, 12)], args.repeats)
    print("## 1 step vs 4 steps per block (framewise, 12 latent frames, batch 1)\n")
    print("| steps | ms / frame | frames / s | time outside forwards |")
    print("|---|---|---|---|")
    for name, r in (("1", one), ("4", four)):
        print(f"| {name} | {r['per_frame_ms']:.1f} | {r['fps']:.1f} | {100 * r['outside_share']:.1f} % |")
    print(f"\nspeed-up of 1 step over 4 steps: {four['total'] / one['total']:.2f}x (ideal 2.5x: 2 vs 5 forwards)\n")

    print("## KV cache vs recomputing the prefix (cost of producing frame F, 1 step)\n")
    print("| F | cached ms | recomputed ms | recompute / cache | cache MB (no window) | cache MB (window 12, sink 1) |")
    print("|---|---|---|---|---|---|")
    for frames in (12, 48, 192):
        cached, recomputed = cost_of_frame(framewise, frames, args.repeats)
        print(f"| {frames} | {1000 * cached:.1f} | {1000 * recomputed:.1f} | {recomputed / cached:.1f}x | "
              f"{cache_megabytes(framewise, frames):.1f} | {cache_megabytes(windowed, frames):.1f} |")
    long_rollout, short_rollout = timed_rollouts([(windowed, 1, 192), (windowed, 1, 12)], 1)
    print(f"\nrolling window (12 frames, sink 1), 192-frame roll-out at 1 step: {long_rollout['per_frame_ms']:.1f} ms/frame "
          f"(vs {short_rollout['per_frame_ms']:.1f} ms/frame over the 12-frame training length)\n")

    print("## framewise vs chunkwise (12 latent frames, batch 1)\n")
    print("| steps | framewise frames/s | chunkwise frames/s | chunkwise / framewise |")
    print("|---|---|---|---|")
    for steps, fw, cw in ((1, one, cw_one), (4, four, cw_four)):
        print(f"| {steps} | {fw['fps']:.1f} | {cw['fps']:.1f} | {cw['fps'] / fw['fps']:.2f}x |")


if __name__ == "__main__":
    main()
