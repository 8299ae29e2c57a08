"""Pictures coming in from users: read safely, checked, normalised (Pillow only).

Limits (README "Bad input"): files over 20 MB are refused; an image whose header declares more
than 64 megapixels is refused before it is decoded (decompression bombs); sides over 4096 px are
downscaled, keeping the aspect ratio; sides under 16 px are refused.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 64_000_000
MAX_SIDE = 4096
MIN_SIDE = 16


class ImageInputError(ValueError):
    """An uploaded picture or mask that cannot be used; the message says why."""


def read_image(source, what: str = "image") -> Image.Image:
    """A decoded, upright PIL image from bytes, a path, a PIL image or an array."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        try:
            image = Image.fromarray(source)
        except (TypeError, ValueError) as err:
            raise ImageInputError(f"the {what} array has an unsupported shape or type {source.shape} {source.dtype}") from err
    else:
        data = _read_bytes(source, what)
        image = _decode(data, what)
    _check_size(image.width, image.height, what)
    image = ImageOps.exif_transpose(image) if image.getexif() else image
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    return image


def _read_bytes(source, what: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"the {what} file {path.name} does not exist")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageInputError(f"the {what} file is {path.stat().st_size / 2**20:.1f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB")
        data = path.read_bytes()
    else:
        raise ImageInputError(f"the {what} must be a picture file, got {type(source).__name__}")
    if len(data) > MAX_FILE_BYTES:
        raise ImageInputError(f"the {what} file is {len(data) / 2**20:.1f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB")
    if not data:
        raise ImageInputError(f"the {what} file is empty")
    return data


def _decode(data: bytes, what: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_size(image.width, image.height, what)  # from the header, before decoding pixels
            image.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageInputError(f"the {what} declares too many pixels to decode safely ({err})") from err
    except Exception as err:  # Pillow raises many types for truncated or foreign files
        raise ImageInputError(f"the {what} is not a readable picture (corrupt, truncated or not an image): {err}") from err
    return image


def _check_size(width: int, height: int, what: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageInputError(f"the {what} is {width}x{height}: over {MAX_PIXELS // 1_000_000} megapixels, refused")
    if min(width, height) < MIN_SIDE:
        raise ImageInputError(f"the {what} is {width}x{height}: too small to show a character (at least {MIN_SIDE} px a side)")


def to_rgb_and_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Any PIL mode -> 8-bit RGB, plus the alpha channel when the mode has one."""
    if not isinstance(image, Image.Image):
        raise ImageInputError(f"a subject image must be a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ImageInputError("the subject image is empty")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # High bit depth greyscale: scale to 8 bits instead of letting PIL clip at 255.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    return image.convert("RGB"), None


def alpha_mask(image: Image.Image) -> Image.Image | None:
    """The alpha channel as a mask, when the image has a meaningful one (not fully opaque)."""
    _, alpha = to_rgb_and_alpha(image)
    if alpha is not None and np.asarray(alpha).min() < 255:
        return alpha
    return None


def mask_values(mask, size: tuple[int, int]) -> np.ndarray:
    """A mask as float [H, W] in [0, 1], checked against the image `size` (width, height).

    A PIL mask counts its alpha when it is a painted layer (a mode with a not fully opaque alpha),
    else its brightness; an array or tensor its values (0-1, or 0-255 when any exceeds 1).
    """
    if isinstance(mask, Image.Image):
        layer = alpha_mask(mask) if mask.mode in ("RGBA", "LA", "PA", "RGBa", "La") else None
        values = np.asarray((layer or mask).convert("L"), dtype=np.float32) / 255.0
    else:
        if hasattr(mask, "detach"):  # a torch tensor (this module does not import torch)
            mask = mask.detach().cpu()
        values = np.asarray(mask, dtype=np.float32).squeeze()
        if values.max(initial=0) > 1.0:
            values = values / 255.0
    if values.ndim != 2:
        raise ImageInputError(f"a subject mask must be 2-D, got shape {values.shape}")
    if (values.shape[1], values.shape[0]) != tuple(size):
        raise ImageInputError(
            f"the mask is {values.shape[1]}x{values.shape[0]} but the image is {size[0]}x{size[1]}; "
            "they must match (a mask must be the same size as its picture)"
        )
    return values


def read_mask(source, size: tuple[int, int]) -> tuple[Image.Image, str]:
    """A mask as an 8-bit 'L' image of `size`, and a warning ('' if none).

    Painted masks (RGBA layers) count their alpha; others their brightness (`mask_values`). An
    empty mask is refused; a mask covering everything is accepted with a warning (the background
    becomes part of the character).
    """
    if not isinstance(source, Image.Image):
        source = read_image(source, "mask")
    values = np.round(mask_values(source, size) * 255).astype(np.uint8)
    if not (values >= 128).any():
        raise ImageInputError("the mask is empty: paint or upload the character's shape")
    warning = ""
    if (values >= 128).all():
        warning = "the mask covers the whole picture: its background will be part of the character"
    return Image.fromarray(values, "L"), warning


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def cutout(image: Image.Image, mask: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """The character on a plain background: what the CLIP branch sees."""
    flat = Image.new("RGB", image.size, background)
    return Image.composite(image.convert("RGB"), flat, mask)


def thumbnail(image: Image.Image, mask: Image.Image, side: int = 256) -> Image.Image:
    small = cutout(image, mask)
    small.thumbnail((side, side), Image.LANCZOS)
    return small


def mask_preview(image: Image.Image, mask: Image.Image, tint=(230, 40, 60), opacity: float = 0.55) -> Image.Image:
    """The image with everything OUTSIDE the mask tinted, to check a mask before saving."""
    rgb = image.convert("RGB")
    tinted = Image.blend(rgb, Image.new("RGB", rgb.size, tint), opacity)
    return Image.composite(rgb, tinted, mask.convert("L"))


def auto_mask(image: Image.Image) -> Image.Image:
    """Automatic matting with the optional `rembg` package; a clear error when it is missing."""
    try:
        from rembg import remove  # optional dependency
    except ImportError as err:
        raise ImageInputError(
            "automatic matting is not available: install the optional package rembg "
            "(pip install rembg), or paint or upload a mask"
        ) from err
    cut = remove(image.convert("RGB"))
    return cut.getchannel("A")
