"""Streaming latency as users measure it: time to first frame, steady per-frame latency and frames per second.

Three layouts of the same causal student, each with and without decoding the frames it streams (the codec the
student was trained with, block by block, as ``oneforcing serve`` shows them), eager and, with ``--compile``,
with ``torch.compile`` of the per-block call (``forward_cached``, the call every denoising step and context pass
makes); measured side by side in one run, best of ``--repeats`` streams after a warm-up stream (compilation):
  * 1-step framewise: 1-frame blocks at σ = 1;
  * 1-step with first-frame enhancement: a first block of ``--first-block`` frames at 4 steps, then 1-frame blocks
    at 1 step (One-Forcing's published recipe: 4 of 21 latent frames);
  * 4-step chunkwise: 3-frame blocks at 4 warped steps (Self-Forcing).
Time to first frame: from the call to the first block's frames (decoded when decoding). Steady latency: the median
time per frame of the blocks after the first. The KV cache is allocated in the dtype the blocks compute in (the
parameters' dtype, or autocast's when it is on); the table says which.

    python benchmarks/streaming_latency.py [--checkpoint W.safetensors] [--frames 21] [--compile] [--threads 1]

Without ``--checkpoint`` the student is the toy's shape (6 Wan blocks, 64 tokens per 32×32 frame) with random
weights and the toy codec: latency does not depend on the weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from oneforcing.models.causal_wan import CausalWanBackbone
from oneforcing.models.wan import WanConfig
from oneforcing.sampling.schedules import student_sigmas
from oneforcing.sampling.streaming import StreamingSampler, per_prompt_generators
from oneforcing.toy.codec import SpaceToDepthCodec

TOY = WanConfig(num_layers=6, num_attention_heads=4, attention_head_dim=32, ffn_dim=512, text_dim=46)
LATENT = (12, 16, 16)  # 32×32 pixels through the space-to-depth codec: 64 tokens per frame


def layouts(first_block: int) -> dict[str, dict]:
    """name -> the student's block layout and schedules."""
    one, four = student_sigmas(1), student_sigmas(4)
    return {
        "1-step framewise": dict(block_size=1, first_block_size=None, sigmas=one, first_sigmas=None),
        f"1-step + FFE (first {first_block} at 4 steps)": dict(block_size=1, first_block_size=first_block,
                                                               sigmas=one, first_sigmas=four),
        "4-step chunkwise": dict(block_size=3, first_block_size=None, sigmas=four, first_sigmas=None),
    }


def student(config: WanConfig, state: dict | None, layout: dict) -> CausalWanBackbone:
    model = CausalWanBackbone(config, block_size=layout["block_size"], first_block_size=layout["first_block_size"])
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model.eval()


def stream_times(sampler: StreamingSampler, context: torch.Tensor, frames: int, codec, decode: bool) -> list[tuple]:
    """(seconds since the call, frames in the block) at the moment each block is ready (decoded when ``decode``)."""
    stamps, start = [], time.perf_counter()
    for block in sampler.stream(context, frames, LATENT, per_prompt_generators(0, 1)):
        if decode:
            codec.decode(block.latents)
        stamps.append((time.perf_counter() - start, block.latents.shape[1]))
    return stamps


def summarise(stamps: list[tuple]) -> dict:
    ends = [t for t, _ in stamps]
    per_frame = [(b - a) / n for (a, _), (b, n) in zip(stamps[:-1], stamps[1:])]
    frames = sum(n for _, n in stamps)
    return {"first_frame_ms": 1000 * ends[0], "steady_frame_ms": 1000 * statistics.median(per_frame),
            "fps": frames / ends[-1]}


def measure(config: WanConfig, state: dict | None, codec, frames: int, first_block: int, repeats: int,
            compile_too: bool) -> list[dict]:
    context = torch.zeros(1, 24, config.text_dim)
    rows = []
    for name, layout in layouts(first_block).items():
        model = student(config, state, layout)
        # one graph per block offset (static shapes): the warm-up stream compiles each; dynamic shapes trip an inductor
        # bug on the CPU in torch 2.13 (an undefined size symbol in the generated code)
        variants = [("eager", None)] + ([("compiled", torch.compile(model.forward_cached, dynamic=False))]
                                        if compile_too else [])
        for variant, compiled in variants:
            if compiled is not None:
                model.forward_cached = compiled
            sampler = StreamingSampler(model, layout["sigmas"], first_block_sigmas=layout["first_sigmas"])
            cache = model.new_cache(1, *LATENT[1:], frames)
            for decode in (False, True):
                stream_times(sampler, context, frames, codec, decode)  # warm-up (and compilation)
                best = min((summarise(stream_times(sampler, context, frames, codec, decode)) for _ in range(repeats)),
                           key=lambda r: -r["fps"])
                rows.append(dict(layout=name, variant=variant, decode=decode, cache_dtype=str(cache.k.dtype).removeprefix("torch."), **best))
            if compiled is not None:
                del model.forward_cached  # the class's method again
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="an exported student (default: the toy's shape, random weights)")
    p.add_argument("--frames", type=int, default=21, help="latent frames per stream")
    p.add_argument("--first-block", type=int, default=4, help="the FFE layout's first block (latent frames)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also torch.compile the per-block call")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * args.frames)
    torch.manual_seed(0)
    config, state, codec = TOY, None, SpaceToDepthCodec(factor=2)
    if args.checkpoint:
        from oneforcing.lightning_modules.checkpoints import load_trained_module

        module = load_trained_module(args.checkpoint)
        config, state, codec = module.generator_config, module.generator_weights(use_ema=True), module.codec
    rows = measure(config, state, codec, args.frames, args.first_block, args.repeats, args.compile)
    print(f"{args.frames} latent frames of {LATENT[0]}×{LATENT[1]}×{LATENT[2]}, batch 1, {args.threads} thread(s); "
          f"best of {args.repeats} streams after a warm-up\n")
    print("| layout | per-block call | decode | KV cache | first frame (ms) | steady (ms / frame) | frames / s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['variant']} | {'yes' if r['decode'] else 'no'} | {r['cache_dtype']} | "
              f"{r['first_frame_ms']:.1f} | {r['steady_frame_ms']:.1f} | {r['fps']:.1f} |")
    if args.compile:
        print()
        for name in layouts(args.first_block):
            fps = {(r["variant"], r["decode"]): r["fps"] for r in rows if r["layout"] == name}
            print(f"{name}: compiled / eager frames per second {fps[('compiled', False)] / fps[('eager', False)]:.2f} "
                  f"(without decoding), {fps[('compiled', True)] / fps[('eager', True)]:.2f} (with)")


if __name__ == "__main__":
    main()
