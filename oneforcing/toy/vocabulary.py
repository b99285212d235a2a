"""The closed vocabulary of the built-in toy world, shared by the world generator and the toy text encoder."""

from __future__ import annotations

# name -> RGB in [0, 255]; chosen far apart so colour is measurable from pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 235),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 220),
    "cyan": (40, 220, 230),
    "white": (245, 245, 245),
    "orange": (250, 140, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# name -> half-extent in pixels at the default 32x32 resolution (scaled with the frame size).
SIZES: dict[str, float] = {"small": 4.0, "large": 7.0}
# name -> unit (dx, dy) in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
# name -> nominal pixels per frame at 32x32 (the exact speed is jittered per video).
SPEEDS: dict[str, float] = {"slowly": 1.0, "quickly": 2.2}
FILLER_WORDS: tuple[str, ...] = ("a", "moving", "and")

VOCABULARY: tuple[str, ...] = (
    FILLER_WORDS + tuple(SIZES) + tuple(COLOURS) + tuple(SHAPES) + tuple(DIRECTIONS) + tuple(SPEEDS)
)
