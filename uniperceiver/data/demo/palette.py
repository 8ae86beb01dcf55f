"""The digits, inks and backgrounds the demo data paints (shared by the image and video demo generators)."""
from __future__ import annotations

import numpy as np
from PIL import Image

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
INKS = {"red": (220, 30, 30), "green": (30, 190, 60), "blue": (40, 80, 230), "yellow": (240, 220, 40),
        "white": (245, 245, 245), "orange": (245, 140, 20)}
BACKGROUNDS = {"black": (10, 10, 10), "gray": (120, 120, 120), "purple": (90, 30, 110), "brown": (100, 60, 25)}


def colorize(gray: np.ndarray, ink, bg, size: int, scale: float) -> Image.Image:
    """A grayscale digit (0..1) painted in ``ink`` on ``bg``, scaled by ``scale`` inside a size x size tile."""
    g = Image.fromarray((np.clip(gray, 0, 1) * 255).astype(np.uint8))
    inner = max(4, int(round(size * scale)))
    g = np.asarray(g.resize((inner, inner), Image.BILINEAR), dtype=np.float32)[..., None] / 255.0
    tile = np.empty((size, size, 3), dtype=np.float32)
    tile[:] = bg
    off = (size - inner) // 2
    region = tile[off : off + inner, off : off + inner]
    tile[off : off + inner, off : off + inner] = region * (1 - g) + np.asarray(ink, np.float32) * g
    return Image.fromarray(tile.astype(np.uint8))
