"""The built-in procedural text-to-video world (docs/toy_world.md).

Each video shows a shape of named colour and size moving in a named direction at a named speed,
bouncing off the borders, over a flat background of a random muted colour (the default world: one object,
so that E[x0 | x_σ, caption] has a closed form over a bank of the caption's videos; two objects and a
textured background remain options, ``max_objects=2``, ``background="textured"``). Each object starts in the part of its path
that it moves away from (``START_SPAN``), so that a video played backwards is not a video of its caption.
The caption under-specifies the video on purpose: start position, exact speed and size, and the background
colour are random, so many videos fit one caption (the multimodality that makes one-step generation hard).
Ground-truth attributes and per-frame centroids are returned beside the pixels so that metrics can be exact.

Everything is a pure function of (seed, index): the same seed gives the same videos on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from oneforcing.toy.vocabulary import COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS

_SUPERSAMPLE = 4  # anti-aliasing: edges are clean, so blur is measurable against the real videos
# Along its direction of motion an object starts in the third of its path nearest the border it moves away
# from (across it, anywhere). With a start anywhere, 67 % of one-object videos played backwards were videos
# of the same caption (a bounce sends the object back), so left/right and up/down were nearly the same
# video distribution and a teacher learned the axis but not the sign; with the trailing third, 5 %.
START_SPAN = 1.0 / 3.0
# The trail world variant: (lag in frame intervals, opacity) of each fading copy behind an object.
TRAIL: tuple[tuple[float, float], ...] = ((1 / 3, 0.5), (2 / 3, 0.3), (1.0, 0.15))
Background = Literal["flat", "textured"]
BACKGROUNDS: tuple[str, ...] = ("flat", "textured")


@dataclass(frozen=True)
class ToyVideo:
    """One sample: pixels (F, 3, H, W) uint8, its caption and ground-truth attributes."""

    pixels: np.ndarray
    caption: str
    attributes: dict


def _shape_coverage(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape, (H, W) float32, by supersampling."""
    s = _SUPERSAMPLE
    coords = (np.arange(size * s, dtype=np.float32) + 0.5) / s
    x = coords[None, :] - cx
    y = coords[:, None] - cy
    if shape == "circle":
        inside = x * x + y * y <= r * r
    elif shape == "square":
        half = r * 0.886  # same area as the circle of radius r
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
    elif shape == "triangle":
        # upward-pointing triangle with apex at cy - r and base at cy + 0.75 r
        top, bottom = -r, 0.75 * r
        frac = np.clip((y - top) / (bottom - top), 0.0, 1.0)
        inside = (y >= top) & (y <= bottom) & (np.abs(x) <= frac * 1.15 * r)
    else:
        raise ValueError(f"Unknown shape {shape!r}; known: {SHAPES}.")
    return inside.reshape(size, s, size, s).mean(axis=(1, 3)).astype(np.float32)


def _background(rng: np.random.Generator, size: int, kind: Background = "flat") -> np.ndarray:
    """A muted base colour, flat or with low-frequency waves and fine grain, (H, W, 3) float32 in [0, 255]."""
    if kind not in BACKGROUNDS:
        raise ValueError(f"Unknown background {kind!r}; use one of {BACKGROUNDS}.")
    base = rng.uniform(25, 95, size=3)
    if kind == "flat":
        return np.broadcast_to(base[None, None], (size, size, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    texture = np.zeros((size, size), np.float32)
    for _ in range(3):
        fx, fy = rng.uniform(1, 4, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        texture += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    grain = rng.normal(0, 1, size=(size, size)).astype(np.float32)
    tint = rng.uniform(0.5, 1.0, size=3)
    return np.clip(base[None, None] + (6.0 * texture + 5.0 * grain)[..., None] * tint, 0, 255).astype(np.float32)


def _bounce(p: float, lo: float, hi: float) -> tuple[float, float]:
    """Reflect a 1-D position into [lo, hi]; returns (position, velocity sign)."""
    span = hi - lo
    q = (p - lo) % (2 * span)
    return (lo + q, 1.0) if q <= span else (hi - (q - span), -1.0)


def _start(u: float, velocity: float, lo: float, hi: float) -> float:
    """Start coordinate from u ~ U(0, 1): anywhere in [lo, hi] across the motion, in the trailing
    ``START_SPAN`` of it along the motion."""
    span = hi - lo
    if velocity > 0:
        return lo + START_SPAN * span * u
    if velocity < 0:
        return hi - START_SPAN * span * u
    return lo + span * u


def make_video(seed: int, index: int, num_frames: int = 12, size: int = 32, max_objects: int = 1,
               background: Background = "flat", speed_scale: float = 1.0, wrap: bool = False,
               trail: bool = False) -> ToyVideo:
    """Render video ``index`` of the world with ``seed``; deterministic in (seed, index).

    ``max_objects=2`` gives the earlier world's 40 % of two-object videos; ``background="textured"`` its
    textured backgrounds; ``speed_scale`` multiplies the named speeds (a world variant: at 4 the slow objects move
    one 4-pixel token per frame); ``wrap`` makes the frame a torus (a world variant: objects start anywhere and
    leave one side to come back on the other, so that no position tells the direction, only the caption does);
    ``trail`` draws each object with a fading trail of where it was over the last frame interval (a world variant:
    one frame shows the direction and speed of motion, as motion blur does in real footage).
    """
    if max_objects not in (1, 2):
        raise ValueError(f"max_objects={max_objects}: the toy world has one or two objects.")
    if speed_scale <= 0:
        raise ValueError(f"speed_scale={speed_scale} must be > 0.")
    rng = np.random.default_rng([seed, index])
    num_objects = 1 if max_objects == 1 or rng.random() < 0.6 else 2
    colour_names = rng.choice(list(COLOURS), size=num_objects, replace=False)
    frame = _background(rng, size, background)
    named = []
    for k in range(num_objects):
        shape, size_name = str(rng.choice(SHAPES)), str(rng.choice(list(SIZES)))
        direction, speed_name = str(rng.choice(list(DIRECTIONS))), str(rng.choice(list(SPEEDS)))
        named.append(dict(shape=shape, colour=str(colour_names[k]), size=size_name, direction=direction,
                          speed=speed_name))
    return _render(rng, frame, named, num_frames, size, seed, index, speed_scale, wrap, trail)


CAPTION_WORDS = ("size", "colour", "shape", "direction", "speed")


def parse_caption(caption: str) -> list[dict[str, str]]:
    """The named attributes of each object of a toy caption ('a large red circle moving left quickly')."""
    vocabulary = dict(size=SIZES, colour=COLOURS, shape=SHAPES, direction=DIRECTIONS, speed=SPEEDS)
    objects = []
    for phrase in caption.split(" and "):
        words = phrase.split()  # a <size> <colour> <shape> moving <direction> <speed>
        if len(words) != 7 or words[0] != "a" or words[4] != "moving":
            raise ValueError(f"{caption!r} is not a toy caption: each object reads "
                             "'a <size> <colour> <shape> moving <direction> <speed>'.")
        named = dict(zip(CAPTION_WORDS, (words[1], words[2], words[3], words[5], words[6])))
        unknown = [f"{k}={v!r}" for k, v in named.items() if v not in vocabulary[k]]
        if unknown:
            raise ValueError(f"{caption!r} names {', '.join(unknown)}, outside the toy vocabulary.")
        objects.append(named)
    return objects


def make_video_of(caption: str, seed: int, index: int, num_frames: int = 12, size: int = 32,
                  background: Background = "flat", speed_scale: float = 1.0, wrap: bool = False,
                  trail: bool = False) -> ToyVideo:
    """A video of ``caption``: its named attributes fixed, the rest (start, exact size and speed, background)
    drawn as the world draws them; deterministic in (caption, seed, index). Builds banks of a caption's videos."""
    named = parse_caption(caption)
    key = [ord(c) for c in caption]
    rng = np.random.default_rng([seed, index, *key])
    frame = _background(rng, size, background)
    return _render(rng, frame, named, num_frames, size, seed, index, speed_scale, wrap, trail)


def _wrapped_coverage(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Coverage of a shape on a torus of side ``size``: its copies one period away cover what crosses a side."""
    total = np.zeros((size, size), np.float32)
    reach = 1.2 * r  # the widest shape (the triangle) spans 1.15 r from its centre
    near = [[o for o in (-size, 0, size) if -reach <= c + o <= size + reach] for c in (cx, cy)]  # copies in view
    for ox in near[0]:
        for oy in near[1]:
            total += _shape_coverage(shape, cx + ox, cy + oy, r, size)
    return np.clip(total, 0.0, 1.0)


def _render(rng: np.random.Generator, frame: np.ndarray, named: list[dict[str, str]], num_frames: int, size: int,
            seed: int, index: int, speed_scale: float = 1.0, wrap: bool = False, trail: bool = False) -> ToyVideo:
    """Draw each named object's free variables from ``rng`` and render the frames over ``frame``."""
    scale = size / 32.0
    frames = np.repeat(frame[None], num_frames, axis=0)  # (F, H, W, 3)
    objects, phrases = [], []
    for obj in named:
        shape, colour, size_name = obj["shape"], obj["colour"], obj["size"]
        direction, speed_name = obj["direction"], obj["speed"]
        radius = SIZES[size_name] * scale * rng.uniform(0.9, 1.1)
        speed = SPEEDS[speed_name] * speed_scale * scale * rng.uniform(0.8, 1.2)
        lo, hi = radius, size - radius
        dx, dy = DIRECTIONS[direction]
        starts = rng.uniform(0.0, 1.0, size=2)
        if wrap:  # anywhere on the torus
            x0, y0 = starts * size
        else:
            x0, y0 = (_start(u, d, lo, hi) for u, d in zip(starts, (dx, dy)))
        trajectory = []

        def at(t: float) -> tuple[float, float]:
            if wrap:
                return (x0 + dx * speed * t) % size, (y0 + dy * speed * t) % size
            return _bounce(x0 + dx * speed * t, lo, hi)[0], _bounce(y0 + dy * speed * t, lo, hi)[0]

        def coverage(t: float) -> np.ndarray:
            return (_wrapped_coverage if wrap else _shape_coverage)(shape, *at(t), radius, size)

        for f in range(num_frames):
            alpha = coverage(f)
            if trail:  # the fading copies of the last frame interval, under the object
                for lag, strength in TRAIL:
                    alpha = np.maximum(alpha, strength * coverage(f - lag))
            x, y = at(f)
            trajectory.append([round(float(x), 3), round(float(y), 3)])
            alpha = alpha[..., None]
            frames[f] = frames[f] * (1 - alpha) + np.asarray(COLOURS[colour], np.float32) * alpha
        objects.append(
            dict(shape=shape, colour=colour, size=size_name, direction=direction, speed=speed_name,
                 radius_px=round(float(radius), 3), speed_px_per_frame=round(float(speed), 3), trajectory=trajectory)
        )
        phrases.append(f"a {size_name} {colour} {shape} moving {direction} {speed_name}")
    pixels = np.clip(np.rint(frames), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)  # (F, 3, H, W)
    attributes = dict(seed=seed, index=index, num_frames=num_frames, size=size, objects=objects)
    return ToyVideo(pixels=pixels, caption=" and ".join(phrases), attributes=attributes)


def random_caption(rng: np.random.Generator) -> str:
    """A one-object caption drawn from the vocabulary (for prompt files and evaluation)."""
    return (
        f"a {rng.choice(list(SIZES))} {rng.choice(list(COLOURS))} {rng.choice(SHAPES)} "
        f"moving {rng.choice(list(DIRECTIONS))} {rng.choice(list(SPEEDS))}"
    )
