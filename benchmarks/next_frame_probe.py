"""Does a causal student know where its objects go next? Its next-frame prediction against copying the last frame.

On held-out autoregressive exact-teacher trajectories (``oneforcing data trajectories --teacher exact
--autoregressive``: each frame continues the clean frames before it, so the next frame is a function of the
context and the caption), the student in teacher-forcing mode predicts every frame k ≥ 1 from pure noise (σ = 1)
given the clean frames < k: x̂0_k = x − v. Reported:

- **err student**: mean squared error of x̂0_k against the true frame k;
- **err copy**: the same for the previous frame as the prediction (an object that does not move);
- **motion gain** = 1 − err student / err copy: 1 for an exact prediction, 0 for a copy, negative for worse than
  a copy. A student that moves its objects the captioned way scores near 1; the samples' direction accuracy can
  stay at chance while the gain is positive when the prediction blurs between staying and moving;
- **frame 0 err**: frame 0 from noise with no context (the first frame's mode choice: a regression averages);
- **along caption** (frame 1 / frames ≥ 2): the object's centroid displacement from the true frame k − 1 to the
  predicted frame k, along the captioned direction, as a fraction of the true frame k's (1: the world's motion, 0:
  a copy, negative: backwards). Blur cannot fake it: a blob smeared both ways keeps its centroid. Frame 1 has
  only the caption to tell the direction; from frame 2 on the context shows the motion too;
- **sign** (frames ≥ 1): the fraction of predictions whose displacement has the captioned sign, among the frames
  where the truth moves that way (a bounce reverses it).

    python benchmarks/next_frame_probe.py --trajectories runs/diag/ode_ar_val64 --checkpoint A.safetensors [B.ckpt ...]

Takes seconds per checkpoint on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import webdataset as wds

from oneforcing.data.datamodule import _decode_skipping_corrupt
from oneforcing.data.shards import read_index
from oneforcing.lightning_modules.checkpoints import causal_generator_from, load_trained_module
from oneforcing.toy.attributes import one_object_attributes
from oneforcing.toy.vocabulary import DIRECTIONS


def load_trajectories(root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(ODE outputs (N, F, C, H, W), their noise (N, F, C, H, W), captions) of an autoregressive trajectory split."""
    index = read_index(root)
    if index.get("order") != "autoregressive":
        raise SystemExit(f"{root} holds {index.get('order', 'joint')} trajectories; the probe needs autoregressive ones "
                         "(`oneforcing data trajectories --teacher exact --autoregressive true`), whose next frame "
                         "follows from the context.")
    urls = [str(root / shard["name"]) for shard in index["shards"]]
    samples = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), _decode_skipping_corrupt))
    outputs = torch.stack([s["ode_output"].float() for s in samples])
    noise = torch.stack([s["trajectory"][0].float() for s in samples])  # the state at σ = 1 is the noise itself
    return outputs, noise, [s["caption"] for s in samples]


def centroid(frame: torch.Tensor, threshold: float = 0.1) -> torch.Tensor | None:
    """(x, y) in frame widths of what stands out from the flat background in one (3, H, W) frame, weighted by
    its distance to the background (the frame's median colour: an object covers at most 18 % of it); None where
    nothing does."""
    background = frame.flatten(1).median(dim=1).values  # (3,)
    weight = (frame - background[:, None, None]).norm(dim=0)  # (H, W)
    weight = torch.where(weight > threshold, weight, torch.zeros(()))
    if weight.sum() < 1.0:
        return None
    H, W = weight.shape
    xs, ys = torch.arange(W) / W, torch.arange(H) / H
    return torch.stack([(weight.sum(0) * xs).sum(), (weight.sum(1) * ys).sum()]) / weight.sum()


def motion_along_caption(previous: torch.Tensor, predicted: torch.Tensor, true: torch.Tensor,
                         captions: list[str]) -> dict[str, float]:
    """Pixels (N, K, 3, H, W) of frame k − 1, the prediction and the truth of frame k, for K frames k."""
    moved = {"1": [0.0, 0.0], "2+": [0.0, 0.0]}  # Σ predicted, Σ true displacement along the caption
    signs = []
    for n, caption in enumerate(captions):
        unit = torch.tensor(DIRECTIONS[one_object_attributes(caption)["direction"]])
        for k in range(previous.shape[1]):
            c_prev, c_pred, c_true = (centroid(v[n, k]) for v in (previous, predicted, true))
            if c_prev is None or c_true is None:
                continue
            d_true = float((c_true - c_prev) @ unit)
            d_pred = 0.0 if c_pred is None else float((c_pred - c_prev) @ unit)
            group = moved["1" if k == 0 else "2+"]
            group[0] += d_pred
            group[1] += d_true
            if d_true > 0:
                signs.append(d_pred > 0)
    return {"along_1": moved["1"][0] / max(moved["1"][1], 1e-9), "along_2": moved["2+"][0] / max(moved["2+"][1], 1e-9),
            "sign": sum(signs) / max(len(signs), 1)}


@torch.no_grad()
def probe(checkpoint: str, outputs: torch.Tensor, noise: torch.Tensor, captions: list[str]) -> dict[str, float]:
    module = load_trained_module(checkpoint).eval()
    generator = causal_generator_from(module, block_size=1)
    sigma = torch.ones(outputs.shape[:2])  # (N, F)
    x0 = noise - generator.forward_teacher_forcing(noise, sigma, module.encode_prompts(captions), clean=outputs)
    err_student = float((x0[:, 1:] - outputs[:, 1:]).square().mean())
    err_copy = float((outputs[:, :-1] - outputs[:, 1:]).square().mean())
    pixels = [module.codec.decode(v) for v in (outputs[:, :-1], x0[:, 1:], outputs[:, 1:])]  # (N, F-1, 3, H, W)
    return {"err_student": err_student, "err_copy": err_copy, "motion_gain": 1 - err_student / err_copy,
            "frame0_err": float((x0[:, 0] - outputs[:, 0]).square().mean()),
            **motion_along_caption(*pixels, captions)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trajectories", type=Path, required=True, help="an autoregressive trajectory split")
    p.add_argument("--checkpoint", nargs="+", required=True, help="exports or .ckpt of causal students / teachers")
    args = p.parse_args()
    torch.set_num_threads(1)
    outputs, noise, captions = load_trajectories(args.trajectories)
    print(f"{len(captions)} trajectories of {outputs.shape[1]} frames from {args.trajectories}\n")
    print("| checkpoint | err student | err copy | motion gain | frame 0 err | along caption, frame 1 | "
          "frames ≥ 2 | sign |\n|---|---|---|---|---|---|---|---|")
    for checkpoint in args.checkpoint:
        r = probe(checkpoint, outputs, noise, captions)
        print(f"| {checkpoint} | {r['err_student']:.4f} | {r['err_copy']:.4f} | {r['motion_gain']:+.2f} | "
              f"{r['frame0_err']:.4f} | {r['along_1']:+.2f} | {r['along_2']:+.2f} | {r['sign']:.2f} |")


if __name__ == "__main__":
    main()
