"""Pictures of a segmentation: instance masks as PNG, and an overlay people can look at.

The overlay blends each instance's mask in its own colour over the photo, outlines its box and writes
the prompt and score next to it; a banner says when the model has random weights, and instances drawn
only because of ``--top-k`` (below the threshold) are labelled so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]


@dataclass
class Instance:
    """One drawn object: its mask at the picture's size, box in pixels (xyxy), score and label."""

    mask: np.ndarray  # [H, W] bool
    box: Sequence[float]
    score: float
    label: str
    colour_index: int = 0
    below_threshold: bool = False


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def overlay(image: np.ndarray, instances: Sequence[Instance], banner: str | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """``image`` (uint8 RGB) with every instance's mask blended in its colour, its box and label drawn."""
    from PIL import Image, ImageDraw

    out = image.astype(np.float32).copy()
    for inst in instances:
        rgb = np.array(colour(inst.colour_index), np.float32)
        a = alpha * (0.6 if inst.below_threshold else 1.0)
        out[inst.mask] = (1 - a) * out[inst.mask] + a * rgb
    picture = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    size = max(10, min(image.shape[:2]) // 24)
    font = _font(size)
    floor = 0
    if banner:
        text_box = draw.textbbox((0, 0), banner, font=font)
        floor = text_box[3] - text_box[1] + 8
        draw.rectangle([0, 0, picture.width, floor], fill=(0, 0, 0))
        draw.text((4, 2), banner, fill=(255, 220, 0), font=font)
    for inst in instances:
        x0, y0, x1, y1 = (float(v) for v in inst.box)
        rgb = colour(inst.colour_index)
        draw.rectangle([x0, max(y0, floor), x1, y1], outline=rgb, width=max(1, size // 6))
        left, top, right, bottom = draw.textbbox((0, 0), inst.label, font=font)
        height = bottom - top + 4
        y = y0 - height if y0 - height >= floor else max(y0, floor)  # above the box, else inside it
        x = min(max(x0, 0), max(0, picture.width - (right - left) - 6))
        draw.rectangle([x, y, x + right - left + 6, y + height], fill=rgb)
        draw.text((x + 3, y - top + 2), inst.label, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path, optimize=True)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """A binary mask as an 8-bit PNG: 255 = the object, 0 = background."""
    return write_png(path, mask.astype(np.uint8) * 255)


def label(prompt: str, score: float, below: bool, rank: int | None = None) -> str:
    text = f"{prompt} {score:.2f}"
    return text + (f" (top-{rank}, below threshold)" if below and rank is not None else "")


__all__ = ["PALETTE", "Instance", "colour", "label", "overlay", "write_mask", "write_png"]
