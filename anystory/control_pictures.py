"""A panel's control picture: what it is (pose, depth, edges, scribble), edges from a photo, the
file it is kept in.

Control pictures are stored once by content (`controls/<sha256>.png` in the data folder): a panel
and each of its versions name the file in their settings (`control`), so a version keeps the
picture it was made with when the panel's picture changes. Edges are computed here, with no model:
Sobel gradients of the grey picture, smoothed a little, the strongest ones kept (a Canny-like map,
white on black, what SDXL edge ControlNets take).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .control_settings import CONTROL_FOLDER
from .files import write_atomic
from .images import png_bytes

EDGE_SHARE = 0.12  # the share of pixels an edge map marks (the strongest gradients)


def edge_map(photo: Image.Image, share: float = EDGE_SHARE) -> Image.Image:
    """Edges of a photo, white on black (RGB), computed without a model."""
    grey = np.asarray(photo.convert("L").filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
    padded = np.pad(grey, 1, mode="edge")
    left, right = padded[:, :-2], padded[:, 2:]
    up, down = padded[:-2, :], padded[2:, :]
    gx = (right[:-2] + 2 * right[1:-1] + right[2:]) - (left[:-2] + 2 * left[1:-1] + left[2:])
    gy = (down[:, :-2] + 2 * down[:, 1:-1] + down[:, 2:]) - (up[:, :-2] + 2 * up[:, 1:-1] + up[:, 2:])
    magnitude = np.hypot(gx, gy)
    if magnitude.max() <= 0:  # a flat picture has no edges
        edges = np.zeros_like(magnitude, dtype=bool)
    else:
        edges = magnitude >= max(np.quantile(magnitude, 1.0 - share), 1e-6)
    pixels = np.where(edges, 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([pixels] * 3), "RGB")


def scribble_map(drawing: Image.Image) -> Image.Image:
    """A scribble drawn in the editor (dark strokes on a white or transparent canvas) as the
    scribble ControlNets take it: white strokes on black (RGB). ValueError when nothing is drawn."""
    if drawing.mode in ("RGBA", "LA", "PA") or "transparency" in drawing.info:
        canvas = Image.new("RGBA", drawing.size, (255, 255, 255, 255))
        drawing = Image.alpha_composite(canvas, drawing.convert("RGBA"))
    strokes = np.asarray(drawing.convert("L")) < 128
    if not strokes.any():
        raise ValueError("the drawing is empty: draw the scribble first")
    pixels = np.where(strokes, 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([pixels] * 3), "RGB")


def store_control_picture(data_dir: str | Path, picture: Image.Image) -> str:
    """Keep `picture` (RGB) as a control picture; returns its name relative to the data folder.
    The same picture is stored once; the write is atomic."""
    data = png_bytes(picture.convert("RGB"))
    name = f"{CONTROL_FOLDER}/{hashlib.sha256(data).hexdigest()}.png"
    path = Path(data_dir) / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    return name


def control_picture_for(data_dir: str | Path, control: dict, size: tuple[int, int] | None) -> Image.Image:
    """The stored picture of `control`, at the panel's (width, height) (None: as stored)."""
    path = Path(data_dir) / control["image"]
    if not path.is_file():
        raise ValueError(
            f"the panel's control picture {control['image']} is missing from the data folder: set it again"
        )
    with Image.open(path) as image:
        picture = image.convert("RGB")
    return picture if size is None or picture.size == size else picture.resize(size, Image.BICUBIC)
