"""Prompt-attribute accuracy on the toy world (docs/evaluation.md): what does a one-object video show?

An automatic, model-free reading of pixel videos, compared with the attributes their captions name.
For each video (F, 3, H, W) in [-1, 1] (distances are Euclidean in RGB, [-1, 1] units):

1. **Rough foreground**: pixels farther than τ from the per-pixel temporal median ``m``, where
   τ = max(``threshold``, ``noise_factor`` × the median of those distances) (most pixel-frames are
   background, so that median is the noise level: 0 on real videos, so τ = ``threshold`` there).
2. **Object colour** ``c``: a slow or bouncing object covers some pixels in more than half of the frames,
   so there the median *is* the object and the pixel shows the background (about a third of the rough
   foreground of real toy videos). Either way, one of (pixel, ``m``) is the object: at the half of the rough
   foreground that differs most from ``m`` (not blurred edges) take the one nearer to a named colour (the
   world draws objects in ``COLOURS`` on a muted background), let those vote for a name, and keep the
   per-channel median of the winning voters as the colour actually drawn.
3. **Background** ``b``: per pixel, the median of the ``F // 4`` frames farthest from ``c``; it is the
   background wherever the object leaves the pixel uncovered in at least a quarter of the frames.
4. **Coverage** ``a``: a pixel is ``a·c + (1 - a)·b``, so ``a`` is its projection on ``c - b``, clipped to
   [0, 1]. The **mask** is ``a > 1/2`` and farther than τ from ``b``; where ``b`` is within τ of ``c`` (the
   object covered the pixel in more than 3/4 of the frames) the mask is "within τ of ``c``". Isolated
   mask pixels are dropped; ``a`` is kept (soft, for anti-aliased edges) next to the mask, zero elsewhere.

Per video, over the frames that *hold the object* (Σa between ``min_area`` and ``max_area`` of the frame):

- **found**: at least half of the frames show an object (Σa ≥ ``min_area``), whatever its size;
- **wrong size**: found, but in most of those frames it covers more than ``max_area`` of the frame (larger
  than any object of the world: a large circle covers ≈ 18 %); its attributes are then read over the frames
  that show it, and the video is reported as wrong-sized, not as "not found";
- **colour**: per-channel median of the quarter of masked pixels farthest from ``b`` (the core, which
  survives blur) → nearest named colour;
- **shape**: median over frames of the fill ratio Σa / (width · height), width = Σ over columns of the
  column's largest ``a`` (a soft bounding box, exact for an axis-aligned square at any sub-pixel
  position) → square (≈ 1), circle (π/4 ≈ 0.79) or triangle (≈ 0.5), split at ``shape_splits``;
- **direction**: from the ``a``-weighted centroids; the axis with the longer path Σ|Δ| (bounces do not
  change it), the sign of the mean displacement over the first ``direction_steps`` steps, cut at the
  first reversal (a bounce); none when the object moves less than ``min_speed`` frame widths per frame.

Limitations: a static object is background to a temporal median, so a frozen video is "not found"
(and wrong on every attribute). An object whose first step already bounces off a wall reads as moving
the other way (≈ 3 % of real videos when objects could start anywhere; the toy world now starts them away
from the border they move towards, so none of the 612 below). Objects are assumed to be drawn
in (roughly) named colours on a darker, muted background; two-object captions are skipped. Blur rounds
squares and fills triangles, so shape accuracy falls with blur (intended), while colour, read from the
core, survives moderate blur.

Measured on 612 one-object real videos (``make_video(7, i)``), on the default flat background and on the
earlier textured one alike: colour 1.00, direction 1.00, shape 1.00, found 1.00, wrong size 0.00.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from oneforcing.toy.vocabulary import COLOURS
from oneforcing.toy.world import parse_caption

ATTRIBUTES: tuple[str, ...] = ("colour", "direction", "shape")


@dataclass(frozen=True)
class MeasureConfig:
    """Thresholds of the measure, tuned on real toy videos (32×32, 12 frames); lengths are frame fractions."""

    threshold: float = 0.25  # RGB distance in [-1, 1] units (≈ 18/255 per channel on all three channels)
    noise_factor: float = 3.0  # the threshold rises to this multiple of the median distance to the median
    min_area: float = 0.01  # ≈ 10 px at 32×32; a small triangle covers ≈ 25 px
    max_area: float = 0.3  # a large circle covers ≈ 18 %
    shape_splits: tuple[float, float] = (0.7, 0.87)  # fill ratio: triangle | circle | square
    direction_steps: int = 3  # displacements averaged for the sign (frames 0..3)
    min_speed: float = 0.25 / 32  # mean |Δcentroid| per frame along the axis; slow objects move 1/32


def one_object_attributes(caption: str) -> dict[str, str] | None:
    """{"size", "colour", "shape", "direction", "speed"} of a one-object toy caption ("a large red circle moving left
    quickly", read by the world's own ``parse_caption``); None for two-object captions, the empty prompt, or any
    caption the world does not read (a word outside the toy vocabulary)."""
    try:
        objects = parse_caption(caption.lower())
    except ValueError:
        return None
    return objects[0] if len(objects) == 1 else None


def nearest_colour(rgb: torch.Tensor) -> str:
    """Named colour nearest to ``rgb`` (3,) in [-1, 1] (Euclidean in RGB)."""
    return list(COLOURS)[int((_palette() - rgb.float().cpu()).norm(dim=1).argmin())]


def _shape_from_fill(fill: float, splits: tuple[float, float]) -> str:
    low, high = splits
    return "triangle" if fill < low else ("circle" if fill < high else "square")


def _palette() -> torch.Tensor:
    """The named colours (K, 3) in [-1, 1], in ``COLOURS`` order."""
    return torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 127.5 - 1.0


def object_coverage(
    video: torch.Tensor, cfg: MeasureConfig = MeasureConfig()
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Steps 1-4 of the module docstring: (coverage (F, H, W) in [0, 1], colour (3,) or None, b (3, H, W)).

    The mask is ``coverage > 0.5``; coverage is soft only next to the mask (zero elsewhere), so that
    anti-aliased edges count by how much of the pixel the object covers.
    """
    F, C, H, W = video.shape
    x = video.float()
    median = x.median(dim=0).values  # (3, H, W)
    to_median = (x - median).norm(dim=1)  # (F, H, W)
    # most pixel-frames are background, so the median distance is the noise level (0 on real videos)
    threshold = max(cfg.threshold, cfg.noise_factor * float(to_median.median()))
    rough = to_median > threshold  # (F, H, W)
    if int(rough.sum()) < cfg.min_area * H * W:
        return torch.zeros(F, H, W), None, median
    strong = rough & (to_median >= to_median[rough].median())  # the half that differs most: not blurred edges
    shown = x.permute(0, 2, 3, 1)[strong]  # (N, 3) colours shown at the strong foreground
    behind = median.permute(1, 2, 0).expand(F, H, W, C)[strong]  # (N, 3) the median there
    # one of (shown, behind) is the object: shown where the median is background, behind where the object
    # lingered; take the one nearer to a named colour (the world's objects have named colours, its
    # background is muted), let those vote for a name and keep the voters' median as the drawn colour.
    palette = _palette()
    nearer = torch.cdist(shown, palette).amin(dim=1) <= torch.cdist(behind, palette).amin(dim=1)  # (N,)
    candidates = torch.where(nearer[:, None], shown, behind)  # (N, 3)
    votes = torch.cdist(candidates, palette).argmin(dim=1)  # (N,)
    colour = candidates[votes == votes.mode().values].median(dim=0).values  # (3,)
    to_colour = (x - colour[None, :, None, None]).norm(dim=1)  # (F, H, W)
    k = max(1, F // 4)
    farthest = to_colour.topk(k, dim=0).indices  # (k, H, W)
    background = x.gather(0, farthest[:, None].expand(k, C, H, W)).median(dim=0).values  # (3, H, W)
    to_background = (x - background).norm(dim=1)  # (F, H, W)
    # pixel = a·c + (1 - a)·b: a is the projection of (pixel - b) on (c - b), where b and c differ;
    # where they do not, the object covers the pixel in more than 3/4 of the frames and b is the object
    contrast = colour[:, None, None] - background  # (3, H, W)
    lingered = contrast.norm(dim=0) < threshold  # (H, W)
    a = ((x - background) * contrast).sum(dim=1) / contrast.square().sum(dim=0).clamp_min(1e-6)  # (F, H, W)
    a = torch.where(lingered, (to_colour < threshold).float(), a.clamp(0, 1))
    mask = (a > 0.5) & ((to_background > threshold) | lingered)
    neighbours = nnf.avg_pool2d(mask[:, None].float(), 3, stride=1, padding=1)[:, 0] * 9  # (F, H, W)
    mask &= neighbours > 1.5  # the pixel itself and at least one neighbour: drops isolated specks
    near_mask = nnf.max_pool2d(mask[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0  # (F, H, W)
    return a * near_mask, colour, background


def measure_video(video: torch.Tensor, cfg: MeasureConfig = MeasureConfig()) -> dict:
    """Read one video (F, 3, H, W) in [-1, 1]: {"found", "wrong_size", "colour", "direction", "shape"} plus
    diagnostics.

    Attribute values are vocabulary words or None when not measurable; diagnostics: "fill" (median fill
    ratio), "area" (median object area, frame fraction), "frames_with_object", "speed" (frame widths per
    frame along the motion axis).
    """
    F, C, H, W = video.shape
    assert C == 3, f"expected (F, 3, H, W) pixels, got {tuple(video.shape)}"
    coverage, _, background = object_coverage(video, cfg)  # (F, H, W), _, (3, H, W)
    mask = coverage > 0.5
    area = coverage.sum(dim=(1, 2)) / (H * W)  # (F,) frame fraction
    shows = area >= cfg.min_area  # (F,) an object of any size
    holds = shows & (area <= cfg.max_area)  # (F,) an object of the world's sizes
    found = bool(shows.float().mean() >= 0.5)
    wrong_size = found and bool(holds.float().mean() < 0.5)  # mostly larger than any object of the world
    if wrong_size:
        holds = shows
    result = dict(found=found, wrong_size=wrong_size, colour=None, direction=None, shape=None,
                  fill=None, area=float(area[holds].median()) if holds.any() else 0.0,
                  frames_with_object=int(holds.sum()), speed=None)
    if not result["found"]:
        return result

    # colour: the quarter of the object's pixels that stand out most from the background (its core
    # when the edges are blurred), their per-channel median
    chosen = mask & holds[:, None, None]  # (F, H, W)
    pixels = video.float().permute(0, 2, 3, 1)[chosen]  # (N, 3)
    standout = (video.float() - background).norm(dim=1)[chosen]  # (N,)
    core = pixels[standout >= standout.quantile(0.75)]
    result["colour"] = nearest_colour(core.median(dim=0).values)

    # soft extents: width = Σ over columns of the column's largest coverage (exact for an axis-aligned
    # square, whatever its sub-pixel position), so fill = area / (width · height) is 1, π/4 or ~1/2
    held = coverage[holds]  # (F', H, W)
    width, height = held.amax(dim=1).sum(dim=1), held.amax(dim=2).sum(dim=1)  # (F',)
    fill = float((held.sum(dim=(1, 2)) / (width * height)).median())
    result["fill"], result["shape"] = fill, _shape_from_fill(fill, cfg.shape_splits)

    xs, ys = torch.arange(W, dtype=torch.float32) / W, torch.arange(H, dtype=torch.float32) / H
    total = coverage.sum(dim=(1, 2))  # (F,)
    centroids = torch.stack([(coverage.sum(dim=1) * xs).sum(dim=1), (coverage.sum(dim=2) * ys).sum(dim=1)], 1)
    centroids = centroids / total.clamp_min(1e-6)[:, None]  # (F, 2) as (x, y) in frame widths / heights
    both = holds[:-1] & holds[1:]  # (F-1,) steps between two frames holding the object
    if not both.any():
        return result
    steps = (centroids[1:] - centroids[:-1])[both]  # (S, 2) displacement per frame, (dx, dy)
    axis = int(steps.abs().sum(dim=0).argmax())  # 0: horizontal, 1: vertical
    speed = float(steps[:, axis].abs().mean())
    result["speed"] = speed
    if speed < cfg.min_speed:
        return result
    run = [steps[0, axis]]
    for step in steps[1: cfg.direction_steps, axis]:
        if step * sum(run) < 0 and step.abs() > cfg.min_speed:  # reversal: the object bounced
            break
        run.append(step)
    sign = float(torch.stack(run).sum().sign())
    names = {(0, -1.0): "left", (0, 1.0): "right", (1, -1.0): "up", (1, 1.0): "down"}  # (axis, sign)
    result["direction"] = names.get((axis, sign))
    return result


def measure_videos(videos: torch.Tensor, cfg: MeasureConfig = MeasureConfig()) -> list[dict]:
    """``measure_video`` for each of videos (B, F, 3, H, W) in [-1, 1]."""
    assert videos.ndim == 5, f"expected (B, F, 3, H, W), got {tuple(videos.shape)}"
    return [measure_video(v, cfg) for v in videos.detach().cpu()]


def attribute_accuracy(
    videos: torch.Tensor, captions: list[str], cfg: MeasureConfig = MeasureConfig()
) -> dict[str, float]:
    """Fraction of one-object videos whose measured colour / direction / shape matches the caption.

    Videos (B, F, 3, H, W) in [-1, 1]; captions that are not one-object captions are skipped. A video whose
    object is not found counts as wrong on every attribute. Returns {"colour", "direction", "shape",
    "found", "wrong_size", "videos"} ("wrong_size": the share of videos whose object is larger than any of
    the world's; "videos": how many were scored; accuracies are NaN when none).
    """
    if len(captions) != videos.shape[0]:
        raise ValueError(
            f"{videos.shape[0]} videos but {len(captions)} captions; pass one caption per video."
        )
    keep = [i for i, caption in enumerate(captions) if one_object_attributes(caption) is not None]
    if not keep:
        return {**{name: float("nan") for name in (*ATTRIBUTES, "found", "wrong_size")}, "videos": 0.0}
    measured = measure_videos(videos[keep], cfg)
    wanted = [one_object_attributes(captions[i]) for i in keep]
    n = len(keep)
    scores = {name: sum(m[name] == w[name] for m, w in zip(measured, wanted)) / n for name in ATTRIBUTES}
    scores["found"] = sum(m["found"] for m in measured) / n
    scores["wrong_size"] = sum(m["wrong_size"] for m in measured) / n
    scores["videos"] = float(n)
    return scores
