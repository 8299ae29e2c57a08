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


def read_mask(source, size: tuple[int, int]) -> tuple[Image.Image, str]:
    """A mask as an 8-bit 'L' image of `size`, and a warning ('' if none).

    Painted masks (RGBA layers) count their alpha; others their brightness. An empty mask is
    refused; a mask covering everything is accepted with a warning (the background becomes part
    of the character).
    """
    mask = read_image(source, "mask") if not isinstance(source, Image.Image) else source
    if mask.mode in ("RGBA", "LA", "PA") and np.asarray(mask.getchannel("A")).min() < 255:
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    if mask.size != size:
        raise ImageInputError(
            f"the mask is {mask.width}x{mask.height} but the image is {size[0]}x{size[1]}; they must match"
        )
    values = np.asarray(mask)
    if not (values >= 128).any():
        raise ImageInputError("the mask is empty: paint or upload the character's shape")
    warning = ""
    if (values >= 128).all():
        warning = "the mask covers the whole picture: its background will be part of the character"
    return mask, warning


def alpha_mask(image: Image.Image) -> Image.Image | None:
    """The alpha channel as a mask, when the image has a meaningful one."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        if np.asarray(alpha).min() < 255:
            return alpha
    return None


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
