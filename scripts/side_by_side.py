"""Side-by-side sample GIF: one row per checkpoint (method), one column per prompt, same seeds everywhere.

    python scripts/side_by_side.py --out runs/demo/side_by_side.gif \
        --checkpoint teacher=assets/toy_teacher.safetensors --checkpoint dmd=runs/.../weights.safetensors \
        --prompt "a large red circle moving right slowly" --prompt "a small blue square moving left quickly"

Teachers sample with their Euler sampler (48 steps, CFG); distilled students with their training schedule
(streaming, KV cache). Rows are written top to bottom in the order given, and the row order is printed.
"""

from __future__ import annotations

import argparse

import torch

from oneforcing.lightning_modules.checkpoints import load_trained_module
from oneforcing.video_io import video_grid, write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH, repeat per row")
    parser.add_argument("--prompt", action="append", required=True, help="repeat per column")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help=".gif or .mp4")
    args = parser.parse_args()
    rows = []
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--checkpoint {item!r} must be NAME=PATH")
        with torch.no_grad():
            rows.append(load_trained_module(path).generate(args.prompt, seed=args.seed))  # (N, F, 3, H, W)
        print(f"row {len(rows)}: {name} ({path})")
    frames = min(r.shape[1] for r in rows)
    grid = video_grid(torch.cat([r[:, :frames] for r in rows]), columns=len(args.prompt))
    write_video(args.out, grid)
    print(f"wrote {args.out}: rows = {[c.partition('=')[0] for c in args.checkpoint]}, columns = prompts in order")


if __name__ == "__main__":
    main()
