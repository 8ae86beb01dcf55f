"""The one image decoder: training readers, evaluation readers and ``tools/check_data.py`` all call
:func:`decode_image`, so the checker and the trainer never disagree about an image.

An image decodes as an image viewer shows it:

* EXIF orientation is applied (phone photos are stored sideways with an orientation tag);
* 16-bit greyscale (PIL modes ``I;16*`` / ``I``) is scaled to 8 bits by /257 (65535 -> 255), not clipped, so a
  16-bit PNG does not train as solid white; 32-bit float greyscale (``F``) is taken as 0..1 when it fits there;
* palette (``P``, with or without transparency), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, 1-bit: converted to RGB;
* an alpha channel (``RGBA``, ``LA``, ``PA``, a palette's transparency) is composited over white.

An image with more than ``max_pixels`` pixels (``DATALOADER.MAX_IMAGE_PIXELS``; default PIL's
``Image.MAX_IMAGE_PIXELS``, 89,478,485) raises :class:`ImageTooLarge` from its header alone, before any
pixel is decoded; PIL's own ``DecompressionBombError`` / ``DecompressionBombWarning`` are turned into the same
error.  Callers treat every exception in :data:`DECODE_ERRORS` as an unreadable image (a bad sample).
"""
from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL's own default (PIL.Image.MAX_IMAGE_PIXELS at import time: 1024 * 1024 * 1024 // 4 // 3).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


class ImageTooLarge(ValueError):
    """The image has more pixels than allowed (a decompression-bomb guard); 0 or less: no limit of ours."""


# Everything a broken, truncated, oversized or non-image file raises while decoding.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError,
                 Image.DecompressionBombError, Image.DecompressionBombWarning)


def _check_size(im: Image.Image, max_pixels: int) -> None:
    w, h = im.size
    if max_pixels > 0 and w * h > max_pixels:
        raise ImageTooLarge(f"{w}x{h} = {w * h} pixels, more than DATALOADER.MAX_IMAGE_PIXELS {max_pixels}")


def _to_rgb(im: Image.Image) -> Image.Image:
    """``im`` (any mode, fully loaded) as 8-bit RGB, alpha over white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "I;32"):
        a = np.asarray(im).astype(np.float64)
        if mode in ("I", "I;32") and a.size and (a.min() < 0 or a.max() > 65535):
            a = np.clip(a, 0, 65535)  # not a 16-bit image: keep the 16-bit range
        return Image.fromarray(np.round(a / 257.0).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        scale = 255.0 if a.size and a.min() >= 0 and a.max() <= 1 else 1.0
        return Image.fromarray(np.clip(np.round(a * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("LA")
    elif mode == "RGB;16" or (mode == "RGB" and "transparency" in im.info):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX ...


def decode_image(path: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``path`` fully (truncation is found here, not in a transform) as 8-bit RGB, see module docstring.
    Raises one of :data:`DECODE_ERRORS` when the file is not a readable image or too large."""
    with warnings.catch_warnings():
        # PIL warns above its own limit: an error when ours is as strict, ignored when ours is looser (PIL
        # still refuses images over twice its limit: ImageTooLarge as well).
        pil_limit = Image.MAX_IMAGE_PIXELS or 0
        looser = max_pixels <= 0 or (pil_limit and max_pixels > pil_limit)
        warnings.simplefilter("ignore" if looser else "error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                _check_size(im, max_pixels)  # header only: nothing decoded yet
                im.load()
                im = ImageOps.exif_transpose(im) or im
                return _to_rgb(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageTooLarge(f"{e} (PIL decompression-bomb guard)") from None
