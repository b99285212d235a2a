"""``oneforcing export``: a checkpoint (a Lightning ``.ckpt`` or the sharded folder of the ``fsdp2`` strategy) ->
one safetensors file of whole weights, as the ``ExportWeights`` callback writes at the end of training.

Every role's weights are kept (generator, EMA, critic, heads, teacher); LoRA adapters of the generator and its
EMA are merged into plain weights. The file loads with ``sample``, ``evaluate`` and as ``*_weights``.
"""

from __future__ import annotations

import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console

from oneforcing.callbacks.export import ExportDtype, export_weights
from oneforcing.lightning_modules.checkpoints import build_trained_module, read_trained


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="oneforcing export", description="A checkpoint (.ckpt or sharded folder) -> safetensors.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--checkpoint", type=str, required=True, help="a .ckpt file or an fsdp2 checkpoint folder")
    p.add_argument("--out", type=str, required=True, help="the .safetensors file to write")
    p.add_argument("--dtype", type=ExportDtype | None, default=None, help="cast floating-point weights (e.g. float16)")
    return p


def export_checkpoint(checkpoint: str | Path, out: str | Path, dtype: ExportDtype | None = None) -> Path:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out} must end in .safetensors.")
    name, hparams, state = read_trained(checkpoint)
    module = build_trained_module(name, hparams, state, path=checkpoint)  # its LoRA layers merge the adapters
    return export_weights(module, out, dtype=dtype, state=state,
                          hparams={k: v for k, v in hparams.items() if not k.startswith("_")})


def export_command(argv: list[str]) -> None:
    cfg = build_parser().parse_args(argv)
    start = time.perf_counter()
    path = export_checkpoint(cfg.checkpoint, cfg.out, cfg.dtype)
    Console().print(f"[green]Wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) from {cfg.checkpoint} in "
                    f"{time.perf_counter() - start:.1f} s[/green]")
