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


def read_mask(source, size: tuple[int, int]) -> tuple[Image.Image, str]:
    """A mask as an 8-bit 'L' image of `size`, and a warning ('' if none).

    Painted masks (RGBA layers) count their alpha; others their brightness. An empty mask is
    refused; a mask covering everything is accepted with a warning (the background becomes part
    of the character).
    """
    mask = read_image(source, "mask") if not isinstance(source, Image.Image) else to_rgb(source, "mask")
    if mask.mode == "RGBA" and np.asarray(mask.getchannel("A")).min() < 255:
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
