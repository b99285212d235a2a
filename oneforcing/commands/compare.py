"""``oneforcing compare``: several evaluations in, one report out.

Inputs are ``oneforcing evaluate`` output directories (or folders holding them). Evaluations that share a
label are seeds of one method. Out (``--out``):
  - ``report.md``: one markdown table, mean ± std over seeds per metric (and the number of seeds);
  - ``steps_<metric>.png``: each metric against sampling steps (methods evaluated with ``--steps-sweep``);
  - ``frames_<curve>.png``: each per-frame curve against frame index (mean over seeds);
  - ``grid.gif``: the same prompts across methods (rows: methods in input order; columns: prompts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console
from safetensors import safe_open

from oneforcing.video_io import atomic_write_bytes, gif_bytes, video_grid


HIDDEN = {"kid_std", "attr_videos"}  # bookkeeping, not metrics: left out of the table and the plots


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="oneforcing compare", description="Compare evaluated runs across methods and seeds.")
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("evaluations", type=str, nargs="+",
                   help="`oneforcing evaluate` output directories, or folders that hold them")
    p.add_argument("--out", type=str, required=True)
    p.add_argument("--metrics", type=list[str] | None, default=None, help="table columns (default: all)")
    return p


def find_evaluations(paths: list[str]) -> list[Path]:
    """Every directory with a metrics.json among ``paths`` and their sub-directories, in input order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist.")
        matches = [path] if (path / "metrics.json").is_file() else sorted(p.parent for p in path.rglob("metrics.json"))
        if not matches:
            raise ValueError(f"{path} holds no metrics.json: run `oneforcing evaluate --checkpoint ... --out {path}` first.")
        found += [m for m in matches if m not in found]
    return found


def group_by_label(directories: list[Path]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for directory in directories:
        report = json.loads((directory / "metrics.json").read_text())
        report["directory"] = directory
        groups.setdefault(report["label"], []).append(report)
    return groups


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=True)) if len(values) > 1 else 0.0


def table(groups: dict[str, list[dict]], metrics: list[str] | None) -> str:
    columns = metrics or list(dict.fromkeys(k for runs in groups.values() for r in runs for k, v in r["metrics"].items()
                                            if (isinstance(v, (int, float)) or v is None) and k not in HIDDEN))
    header = "| method | weights | steps | seeds | " + " | ".join(columns) + " |"
    lines = [header, "|" + "---|" * (4 + len(columns))]
    for label, runs in groups.items():
        cells = []
        for column in columns:
            mean, std = mean_std([r["metrics"].get(column) for r in runs])
            cells.append("–" if math.isnan(mean) else f"{mean:.3g} ± {std:.2g}")
        steps = sorted({r["steps"] for r in runs})
        weights = ",".join(sorted({r.get("weights", "unrecorded") for r in runs}))  # EMA or raw generator
        lines.append(f"| {label} | {weights} | {','.join(map(str, steps))} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_against_steps(groups: dict[str, list[dict]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = sorted({k for runs in groups.values() for r in runs for s in r["sweep"].values() for k in s} - HIDDEN)
    for name in names:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, runs in groups.items():
            steps = sorted({int(s) for r in runs for s in r["sweep"]})
            if len(steps) < 2:
                continue
            stats = [mean_std([r["sweep"].get(str(s), {}).get(name) for r in runs]) for s in steps]
            ax.errorbar(steps, [m for m, _ in stats], yerr=[e for _, e in stats], marker="o", capsize=3, label=label)
        if not ax.lines:
            plt.close(fig)
            continue
        ax.set_xscale("log", base=2)
        ax.set(xlabel="sampling steps", ylabel=name, title=f"{name} against steps")
        written.append(_save(fig, ax, out / f"steps_{name}.png"))
    return written


def _save(fig, ax, path: Path) -> Path:
    """Legend, tight layout, PNG, close."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_against_frames(groups: dict[str, list[dict]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = sorted({k for runs in groups.values() for r in runs for k in r.get("curves", {})})
    for name in names:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, runs in groups.items():
            curves = [r["curves"][name] for r in runs if r.get("curves", {}).get(name)]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            mean = torch.tensor([c[:length] for c in curves], dtype=torch.float64).mean(0)
            ax.plot(range(length), mean.tolist(), label=label)
        ax.set(xlabel="frame index", ylabel=name, title=f"{name} against frame index")
        written.append(_save(fig, ax, out / f"frames_{name}.png"))
    return written


def gif_grid(groups: dict[str, list[dict]], out: Path) -> Path | None:
    """Rows: methods (their first seed), columns: the shared prompts."""
    rows, prompts = [], None
    for runs in groups.values():
        path = runs[0]["directory"] / "samples.safetensors"
        if not path.is_file():
            continue
        with safe_open(str(path), framework="pt") as f:
            videos, names = f.get_tensor("videos"), json.loads(f.metadata()["prompts"])
        if prompts is not None and names != prompts:
            raise ValueError(f"{path} holds samples of other prompts than the first method's; evaluate every run "
                             "with the same --real-seed and --num-videos.")
        prompts = names
        rows.append(videos)
    if not rows:
        return None
    count = min(r.shape[0] for r in rows)
    grid = video_grid(torch.cat([r[:count] for r in rows]), columns=count)
    path = out / "grid.gif"
    atomic_write_bytes(path, gif_bytes(grid))
    return path


def compare(evaluations: list[str], out: str | Path, metrics: list[str] | None = None) -> Path:
    out = Path(out)
    groups = group_by_label(find_evaluations(evaluations))
    out.mkdir(parents=True, exist_ok=True)
    step_plots, frame_plots, grid = plot_against_steps(groups, out), plot_against_frames(groups, out), gif_grid(groups, out)
    lines = ["# Comparison", "", f"{sum(len(r) for r in groups.values())} evaluations of {len(groups)} methods; "
             "mean ± std over seeds (sample std).", "", table(groups, metrics), ""]
    if grid is not None:
        lines += [f"![the same prompts across methods (rows: {', '.join(groups)})]({grid.name})", ""]
    lines += [f"![{p.stem}]({p.name})" for p in [*step_plots, *frame_plots]]
    report = out / "report.md"
    atomic_write_bytes(report, ("\n".join(lines) + "\n").encode())
    return report


def compare_command(argv: list[str]) -> None:
    cfg = build_parser().parse_args(argv)
    report = compare(cfg.evaluations, cfg.out, cfg.metrics)
    Console().print(f"[green]Wrote {report}[/green] with its plots and grid.gif")
