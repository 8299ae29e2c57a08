"""Pictures coming in from users: read safely, checked, normalised (Pillow only).

Limits (README "Bad input"): files over 20 MB are refused; an image whose header declares more
than 64 megapixels is refused before it is decoded (decompression bombs); sides over 4096 px are
downscaled, keeping the aspect ratio; sides under 16 px are refused. Every picture leaves here as
8-bit RGB or RGBA (`to_rgb`: CMYK, LAB, 16-bit, float, palette and 1-bit pictures converted, an
embedded ICC profile honoured), so nothing after the door meets another colour mode.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
    image = to_rgb(image, what)
    if max(image.size) > MAX_SIDE:
        image = image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    return image


_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_DEEP_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_rgb(image: Image.Image, what: str = "image") -> Image.Image:
    """Any colour mode Pillow decodes -> 8-bit "RGB", or "RGBA" when it has transparency.

    An embedded ICC profile (a CMYK print profile, Adobe RGB...) is honoured through LittleCMS
    (PIL.ImageCms), as is LAB; 16-bit and float greys are scaled to 8 bits rather than clipped
    (a float picture in [0, 1] or in [0, max]). A mode that cannot be converted is refused with
    an ImageInputError, before any model sees the picture."""
    if image.mode in ("RGB", "RGBA") and not _foreign_profile(image):
        return image
    try:
        converted = _through_profile(image)
        if converted is not None:
            return converted
        if image.mode in _DEEP_GREY:
            values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max(initial=0.0)), 1.0)
            return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
        if image.mode in _WITH_ALPHA or (image.mode == "P" and "transparency" in image.info):
            if image.mode == "La":  # premultiplied grey: Pillow converts it through LA only
                image = image.convert("LA")
            return image.convert("RGBA")
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageInputError(
            f"the {what} has the colour mode {image.mode}, which cannot be converted to RGB ({err}): "
            "save it as an RGB PNG or JPEG"
        ) from err


def _foreign_profile(image: Image.Image) -> bool:
    """True when the picture embeds an ICC profile other than sRGB."""
    profile = image.info.get("icc_profile")
    if not profile:
        return False
    try:
        from PIL import ImageCms

        return "srgb" not in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile))).lower()
    except Exception:  # noqa: BLE001 - an unreadable profile is ignored (plain conversion)
        return False


def _through_profile(image: Image.Image) -> Image.Image | None:
    """The picture transformed to sRGB by its ICC profile (LAB by the built-in LAB profile), or
    None when there is no profile to honour or LittleCMS cannot use it."""
    from PIL import ImageCms

    alpha = image.mode in ("RGBA", "LA", "PA")
    if image.mode == "LAB":
        source = ImageCms.createProfile("LAB")
    elif _foreign_profile(image) and image.mode in ("RGB", "RGBA", "CMYK", "L"):
        source = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
    else:
        return None
    try:
        return ImageCms.profileToProfile(
            image, source, ImageCms.createProfile("sRGB"), outputMode="RGBA" if alpha else "RGB"
        )
    except (ImageCms.PyCMSError, ValueError, OSError) as err:
        if image.mode == "LAB":  # no plain conversion gives LAB's colours
            raise ValueError(f"LittleCMS could not convert it: {err}") from err
        return None  # an unusable profile: the plain conversion below


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


def _decode(data: bytes | Path, what: str, max_side: int | None = None) -> Image.Image:
    """Decode a whole picture with the bomb guard: its size is checked from the header, before
    any pixel is decoded (`_check_size` for uploads; at most `max_side` a side for stored ones)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
            if max_side is None:
                _check_size(image.width, image.height, what)
            elif max(image.width, image.height) > max_side:
                raise ImageInputError(
                    f"the {what} is {image.width}x{image.height}: larger than the app stores "
                    f"(at most {max_side} px a side), refused"
                )
            image.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageInputError(f"the {what} declares too many pixels to decode safely ({err})") from err
    except UnidentifiedImageError as err:  # its message names the (temporary) file: not for the user
        raise ImageInputError(
            f"the {what} is not a readable picture (not an image file, or of a kind Pillow does not read)"
        ) from err
    except Exception as err:  # Pillow raises many types for truncated or foreign files
        raise ImageInputError(f"the {what} is not a readable picture (corrupt, truncated or not an image): {err}") from err
    return image


def check_stored_picture(path: str | os.PathLike, what: str, max_side: int) -> None:
    """A picture file an archive brings (a character's image, mask or thumbnail, a panel version):
    a PNG decoded whole with the uploads' bomb guard, at most `max_side` px a side. Anything
    corrupt, truncated or foreign is refused here, before the import writes a row."""
    image = _decode(Path(path), what, max_side=max_side)
    try:
        if image.format != "PNG":
            raise ImageInputError(f"the {what} is a {image.format} file; the app stores PNG only")
    finally:
        image.close()


def _check_size(width: int, height: int, what: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageInputError(f"the {what} is {width}x{height}: over {MAX_PIXELS // 1_000_000} megapixels, refused")
    if min(width, height) < MIN_SIDE:
        raise ImageInputError(f"the {what} is {width}x{height}: too small to show a character (at least {MIN_SIDE} px a side)")


def to_rgb_and_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Any PIL mode -> 8-bit RGB (through `to_rgb`: profiles, LAB, deep greys), plus the alpha
    channel when the picture has one."""
    if not isinstance(image, Image.Image):
        raise ImageInputError(f"a subject image must be a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ImageInputError("the subject image is empty")
    image = to_rgb(image, "subject image")
    if image.mode == "RGBA":
        return image.convert("RGB"), image.getchannel("A")
    return image, None


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
    source = read_image(source, "mask") if not isinstance(source, Image.Image) else to_rgb(source, "mask")
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
