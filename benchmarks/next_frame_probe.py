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
- **frame 0 err**: frame 0 from noise with no context (the first frame's mode choice: a regression averages).

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


@torch.no_grad()
def probe(checkpoint: str, outputs: torch.Tensor, noise: torch.Tensor, captions: list[str]) -> dict[str, float]:
    module = load_trained_module(checkpoint).eval()
    generator = causal_generator_from(module, block_size=1)
    sigma = torch.ones(outputs.shape[:2])  # (N, F)
    x0 = noise - generator.forward_teacher_forcing(noise, sigma, module.encode_prompts(captions), clean=outputs)
    err_student = float((x0[:, 1:] - outputs[:, 1:]).square().mean())
    err_copy = float((outputs[:, :-1] - outputs[:, 1:]).square().mean())
    return {"err_student": err_student, "err_copy": err_copy, "motion_gain": 1 - err_student / err_copy,
            "frame0_err": float((x0[:, 0] - outputs[:, 0]).square().mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trajectories", type=Path, required=True, help="an autoregressive trajectory split")
    p.add_argument("--checkpoint", nargs="+", required=True, help="exports or .ckpt of causal students / teachers")
    args = p.parse_args()
    torch.set_num_threads(1)
    outputs, noise, captions = load_trajectories(args.trajectories)
    print(f"{len(captions)} trajectories of {outputs.shape[1]} frames from {args.trajectories}\n")
    print("| checkpoint | err student | err copy | motion gain | frame 0 err |\n|---|---|---|---|---|")
    for checkpoint in args.checkpoint:
        r = probe(checkpoint, outputs, noise, captions)
        print(f"| {checkpoint} | {r['err_student']:.4f} | {r['err_copy']:.4f} | {r['motion_gain']:+.2f} | "
              f"{r['frame0_err']:.4f} |")


if __name__ == "__main__":
    main()
