"""Side-by-side sample GIF: one row per checkpoint (method), one column per prompt, same seeds everywhere.

    python scripts/side_by_side.py --out runs/demo/side_by_side.gif \
        --checkpoint teacher=assets/toy_teacher.safetensors --checkpoint dmd=runs/.../weights.safetensors \
        --prompt "a large red circle moving right slowly" --prompt "a small blue square moving left quickly"

Teachers sample with their Euler sampler (48 steps, CFG); distilled students with their training schedule
(streaming, KV cache). ``NAME=world`` is a row of the toy world's own videos of the prompts (video ``--seed`` of
each caption's exact-teacher bank stream: what a perfect student of the exact teacher draws), as long as the
shortest checkpoint row. Rows are written top to bottom in the order given, and the row order is printed.
"""

from __future__ import annotations

import argparse

import torch

from oneforcing.lightning_modules.checkpoints import load_trained_module
from oneforcing.toy.exact_bank import caption_videos
from oneforcing.video_io import video_grid, write_video


def side_by_side(checkpoints: list[tuple[str, str]], prompts: list[str], seed: int = 0) -> torch.Tensor:
    """The rows' videos (R, N, F, 3, H, W) for (name, path) rows and N prompts, cut to the shortest row."""
    rows: list[torch.Tensor | None] = []
    for name, path in checkpoints:
        if path == "world":
            rows.append(None)  # rendered once the checkpoints' video length is known
            continue
        with torch.no_grad():
            rows.append(load_trained_module(path).generate(prompts, seed=seed))  # (N, F, 3, H, W)
        print(f"row {len(rows)}: {name} ({path})")
    generated = [r for r in rows if r is not None]
    if not generated:
        raise ValueError("a world row needs at least one checkpoint row: it takes their video length and size")
    frames, size = min(r.shape[1] for r in generated), generated[0].shape[-1]
    world = torch.cat([caption_videos(p, seed + 1, num_frames=frames, frame_size=size)[-1:]
                       for p in prompts])  # (N, F, 3, H, W): video `seed` of each caption's bank stream
    return torch.stack([(world if r is None else r)[:, :frames] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="NAME=PATH (weights, or `world`), repeat per row")
    parser.add_argument("--prompt", action="append", required=True, help="repeat per column")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help=".gif or .mp4")
    args = parser.parse_args()
    rows = []
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--checkpoint {item!r} must be NAME=PATH (PATH: weights, or `world`)")
        rows.append((name, path))
    try:
        videos = side_by_side(rows, args.prompt, args.seed)  # (R, N, F, 3, H, W)
    except ValueError as error:
        parser.error(str(error))
    write_video(args.out, video_grid(videos.flatten(0, 1), columns=len(args.prompt)))
    print(f"wrote {args.out}: rows = {[name for name, _ in rows]}, columns = prompts in order")


if __name__ == "__main__":
    main()
