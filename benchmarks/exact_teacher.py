"""Cost of one call of the exact teacher beside the neural toy teacher.

One call = one CFG forward at batch 4: 8 rows (4 captioned contexts, 4 unconditional ones), 12 frames of
12×16×16 latents, as DMD's real score and the consistency teacher make it. The exact teacher holds all 384
one-object captions at 8, 16 and 32 videos per caption; its captioned rows scan their caption's videos, the
unconditional rows the whole bank, so the cost grows with the bank. The neural teacher is the 6-layer toy
Wan of ``configs/toy/teacher.yaml`` (random weights: the cost does not depend on them). Calls are
interleaved over the configurations and the median of ``--repeats`` is kept (the machine is shared).

The 32-per-caption bank is rendered once; the smaller banks are its first 8 and 16 videos per caption,
which are exactly the banks ``ExactToyTeacher(bank_size_per_caption=8 | 16)`` renders.

    OMP_NUM_THREADS=1 python benchmarks/exact_teacher.py [--repeats 5] [--threads 1] [--sizes 8 16 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from oneforcing.models.wan import WanBackbone, WanConfig
from oneforcing.toy.codec import SpaceToDepthCodec
from oneforcing.toy.exact_bank import BANK_SEED, caption_videos, one_object_captions
from oneforcing.toy.exact_teacher import ExactTeacher
from oneforcing.toy.text_encoder import ToyTextEncoder

TOY = WanConfig(num_layers=6, num_attention_heads=4, attention_head_dim=32, ffn_dim=512, text_dim=46)
LATENT = (12, 12, 16, 16)  # (F, C, H, W): 12 frames of 32×32 pixels through the space-to-depth codec


def render_bank(captions: list[str], per_caption: int) -> torch.Tensor:
    """(K, per_caption, F, C, H, W) float16 latents of the captions' bank videos."""
    codec = SpaceToDepthCodec(factor=2)
    bank = torch.empty(len(captions), per_caption, *LATENT, dtype=torch.float16)
    for k, caption in enumerate(captions):
        bank[k] = codec.encode(caption_videos(caption, per_caption, BANK_SEED)).half()
    return bank


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32], help="bank videos per caption")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    captions, encoder = one_object_captions(), ToyTextEncoder()

    start = time.perf_counter()
    full = render_bank(captions, max(args.sizes))  # (K, S, F, C, H, W)
    render_s = time.perf_counter() - start
    embeddings, uncond = encoder(captions), encoder([""])[0]
    teachers = {}
    for size in args.sizes:
        latents = full[:, :size].reshape(-1, *LATENT)  # caption by caption
        index = torch.arange(len(captions)).repeat_interleave(size)
        teachers[f"exact, {size} per caption"] = ExactTeacher(latents, index, embeddings, uncond)
    del full
    torch.manual_seed(0)
    neural = WanBackbone(TOY).eval()
    models = {"neural (6-layer toy Wan)": neural, **teachers}

    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, *LATENT, generator=g)
    sigma = torch.full((8,), 0.5)
    prompts = [captions[i] for i in torch.randperm(len(captions), generator=g)[:4].tolist()]
    context = torch.cat([encoder(prompts), encoder([""] * 4)])  # one CFG call at batch 4
    times: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        model(x, sigma, context)
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(x, sigma, context)
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["neural (6-layer toy Wan)"])
    lines = ["| teacher | bank (float16) | ms per call | × neural |", "|---|---|---|---|",
             f"| neural (6-layer toy Wan) | – | {1000 * base:.0f} | 1.0 |"]
    for name, teacher in teachers.items():
        ms = statistics.median(times[name])
        lines.append(f"| {name} | {teacher.bank_bytes / 2**20:.0f} MiB | {1000 * ms:.0f} | {ms / base:.1f} |")
    print(f"One CFG call at batch 4 (8 rows, 12 frames of 12×16×16), 384 captions, median of {args.repeats}, "
          f"{args.threads} thread(s); rendering the {max(args.sizes)}-per-caption bank took {render_s:.0f} s.\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
