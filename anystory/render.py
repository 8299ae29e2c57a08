"""Inspect and export: route overlays, story layouts, PNG / PDF / CBZ files (PRODUCT.md steps 3-4).

The router says, for every latent position of a panel, which character (or the background) owns
it. `overlay` draws that over the image so a writer can see *why* a character ended up where it
did; `select_route_maps` picks the steps / layer resolutions to look at from a recorded run.
The layout and export half turns the active panels into a strip, printable pages, a PDF and a
comic-book archive.

Pillow + numpy only: this module never imports torch, so the UI and the exports work without it
(torch tensors on the CPU are accepted wherever an array is, through `np.asarray`).

Every file is written to a temporary name in the destination folder and then `os.replace`d onto
its final name, so a crash never leaves half a file behind.
"""

from __future__ import annotations

import io
import math
import re
import time
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

from .files import atomic_path

__all__ = [
    "BACKGROUND_COLOUR",
    "export_cbz",
    "export_pdf",
    "export_png",
    "load_route_maps",
    "overlay",
    "page_grid",
    "palette",
    "record_grids",
    "record_sites",
    "record_steps",
    "safe_filename",
    "select_route_maps",
    "strip",
]

RGB = tuple[int, int, int]

# The background slot: a neutral grey that no character colour uses.
BACKGROUND_COLOUR: RGB = (150, 150, 150)

# Okabe & Ito (2008), the usual colour-blind-safe set, minus black; then Paul Tol's "muted" set.
_BASE_COLOURS: tuple[RGB, ...] = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
    (51, 34, 136),  # indigo
    (68, 170, 153),  # teal
    (153, 153, 51),  # olive
    (136, 34, 85),  # wine
    (221, 204, 119),  # sand
    (170, 68, 153),  # purple
    (136, 204, 238),  # cyan
)

_LEGEND_INK: RGB = (25, 25, 25)
MAX_EXPANDED_GATES = 1 << 31  # one-hot gates a route-map file may expand to (~200x a 25-step 1024x1024 record)
_FORMAT_VERSION = 1


# -- colours ----------------------------------------------------------------------------------


def palette(n: int) -> list[RGB]:
    """`n` distinct character colours, colour-blind-safe ones first.

    The first 14 come from fixed published palettes so a character keeps its colour from run to
    run; past that, golden-angle hues fill in. None equals `BACKGROUND_COLOUR`.
    """
    if n < 0:
        raise ValueError(f"palette size must be >= 0, got {n}")
    colours = list(_BASE_COLOURS[:n])
    seen = set(colours) | {BACKGROUND_COLOUR}
    k = 0
    while len(colours) < n:
        hue = (k * 0.618033988749895) % 1.0
        value = (0.92, 0.72, 0.55)[(k // 7) % 3]
        saturation = (0.75, 0.55, 0.9)[(k // 21) % 3]
        colour = _hsv_to_rgb(hue, saturation, value)
        k += 1
        if colour not in seen:
            seen.add(colour)
            colours.append(colour)
    return colours


def _hsv_to_rgb(h: float, s: float, v: float) -> RGB:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return (round(r * 255), round(g * 255), round(b * 255))


# -- text -------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, int(size)))


def _clean_text(text: object, font) -> str:
    """Text any font can draw without raising: no lone surrogates, no control characters."""
    text = str(text).encode("utf-8", "replace").decode("utf-8")
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)
    if font is not None and not isinstance(font, ImageFont.FreeTypeFont):  # no FreeType: Latin-1 only
        text = text.encode("latin-1", "replace").decode("latin-1")
    return text


def _text_width(font, text: str) -> float:
    return font.getlength(text) if text else 0.0


def _fit(font, text: str, width: float, ellipsis: str = "...") -> str:
    """The longest prefix of `text` (plus an ellipsis when cut) that fits `width` pixels."""
    if _text_width(font, text) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _text_width(font, text[:mid].rstrip() + ellipsis) <= width:
            lo = mid
        else:
            hi = mid - 1
    return (text[:lo].rstrip() + ellipsis) if lo else (ellipsis if _text_width(font, ellipsis) <= width else "")


def _wrap(text: str | None, font, width: float, max_lines: int | None = None) -> list[str]:
    """Greedy word wrap by pixel width; words wider than a line (or scripts without spaces) are
    broken between characters; past `max_lines` the last line ends in an ellipsis."""
    if not text:
        return []
    width = max(width, 1.0)
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        paragraph = _clean_text(paragraph, font)
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if _text_width(font, candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
                line = ""
            while _text_width(font, word) > width and len(word) > 1:
                cut = len(_fit(font, word, width, ellipsis="")) or 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        if max_lines:
            lines[-1] = _fit(font, lines[-1] + " ...", width)
    return lines


def _line_height(font) -> int:
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (font.size, 0)
    return int(ascent + descent) + 2


def _ink_for(background: RGB) -> RGB:
    """Dark text on light paper, light text on dark paper."""
    r, g, b = background[:3]
    return _LEGEND_INK if 0.299 * r + 0.587 * g + 0.114 * b >= 128 else (240, 240, 240)


def _draw_lines(
    draw: ImageDraw.ImageDraw, lines: list[str], font, box_left: int, top: int, box_width: int, fill: RGB
) -> None:
    """Each line centred horizontally in [box_left, box_left + box_width)."""
    step = _line_height(font)
    for i, line in enumerate(lines):
        x = box_left + max(0, (box_width - _text_width(font, line)) / 2)
        draw.text((x, top + i * step), line, font=font, fill=fill)


# -- images -----------------------------------------------------------------------------------


def _as_rgb(image: Image.Image, background: RGB = (255, 255, 255)) -> Image.Image:
    """RGB copy; transparent parts become `background` (PDF pages and overlays have no alpha)."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", image.size, tuple(background[:3]))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max() if values.size and values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _resize_to_height(image: Image.Image, height: int) -> Image.Image:
    if image.height == height:
        return image
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _fit_into(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scaled (up or down) to fit the box, aspect ratio kept."""
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def _paper(background) -> RGB:
    """An RGB triple from a triple, a grey level or a colour name ("white", "#f0e8d8")."""
    if isinstance(background, str):
        return ImageColor.getrgb(background)[:3]
    if isinstance(background, int):
        return (background, background, background)
    r, g, b = (int(c) for c in tuple(background)[:3])
    return (r, g, b)


def _check_captions(captions: Sequence[str | None] | None, count: int) -> list[str]:
    if captions is None:
        return [""] * count
    captions = list(captions)
    if len(captions) != count:
        raise ValueError(f"{len(captions)} captions for {count} images")
    return ["" if c is None else str(c) for c in captions]


# -- overlay ----------------------------------------------------------------------------------


def _is_one_hot(maps: np.ndarray) -> bool:
    if maps.dtype == bool:
        return bool((maps.sum(axis=0) == 1).all())
    binary = (maps == 0) | (maps == 1)
    return bool(binary.all() and (maps.sum(axis=0) == 1).all())


def _upscale_index(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upscale of an [h, w] label map to (W, H): crisp cell edges."""
    width, height = size
    h, w = labels.shape
    rows = (np.arange(height) * h) // height
    cols = (np.arange(width) * w) // width
    return labels[rows[:, None], cols[None, :]]


def _upscale_soft(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upscale of every slot of a soft [S, h, w] map to [S, H, W]."""
    return np.stack(
        [
            np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
            for m in maps
        ]
    )


def _borders(labels: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels within `thickness` of a change of label (both sides of every edge)."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    grown = edge.copy()
    for _ in range(max(0, thickness - 1)):
        step = grown.copy()
        step[1:, :] |= grown[:-1, :]
        step[:-1, :] |= grown[1:, :]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    return grown


def overlay(
    image: Image.Image,
    route_maps: np.ndarray,
    names: list[str],
    opacity: float = 0.45,
    legend: bool = True,
    *,
    outline: int | None = None,
    background_label: str = "background",
    show: Sequence[int] | None = None,
    hatch_background: bool = False,
) -> Image.Image:
    """The panel with each character's region tinted in its colour, outlined, plus a legend.

    `show`: the character slots to draw (None: all); the others are left as the image is.
    `hatch_background`: the background slot is drawn as thin grey diagonal hatching, so the
    regions no character owns are visible too.

    route_maps: [S, h, w], S = len(names) + 1 (characters in order, background last), at any
    grid. One-hot maps are upscaled nearest (crisp cells) and each owned pixel is blended with
    its character's colour at `opacity`; soft maps (e.g. the no-routing baseline, where every
    character is 1 everywhere) are upscaled bilinearly and the character colours mixed in
    proportion to their share. Background pixels are left untouched. Region borders get a line
    in the owner's colour, `outline` pixels wide (None: scaled to the image; 0: none). The
    legend strip is added below the image, so the result is taller than the input when
    `legend` is on. Returns a new RGB image.
    """
    maps = np.asarray(route_maps)
    if maps.ndim != 3:
        raise ValueError(f"route_maps must be [slots, h, w], got shape {maps.shape}")
    names = [str(n) for n in names]
    if maps.shape[0] != len(names) + 1:
        raise ValueError(
            f"route_maps has {maps.shape[0]} slots but {len(names)} names were given; "
            f"expected {len(names) + 1} slots (one per character, then the background)"
        )
    if maps.shape[1] < 1 or maps.shape[2] < 1:
        raise ValueError(f"route_maps has an empty grid: {maps.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")

    base = _as_rgb(image)
    size = base.size
    num_characters = len(names)
    colours = np.array(palette(num_characters) + [BACKGROUND_COLOUR], dtype=np.float32)
    pixels = np.asarray(base, dtype=np.float32)

    if _is_one_hot(maps):
        labels = _upscale_index(maps.argmax(axis=0), size)
        weights = None
    else:
        soft = np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)
        weights = _upscale_soft(soft, size)  # [S, H, W]
        weights = weights / np.maximum(weights.sum(axis=0, keepdims=True), 1.0)
        labels = np.where(weights.sum(axis=0) > 0, weights.argmax(axis=0), num_characters)

    if weights is None:
        is_character = labels < num_characters
        tinted = pixels * (1 - opacity) + colours[labels] * opacity
        out = np.where(is_character[..., None], tinted, pixels)
    else:
        share = weights[:num_characters]  # [N, H, W]
        character_share = share.sum(axis=0)[..., None]
        mix = np.tensordot(share, colours[:num_characters], axes=(0, 0)) if num_characters else 0.0
        out = pixels * (1 - opacity * character_share) + opacity * mix

    shown = np.ones(num_characters + 1, dtype=bool)
    if show is not None:
        shown[:num_characters] = False
        shown[[int(i) for i in show if 0 <= int(i) < num_characters]] = True
    out = np.where(shown[labels][..., None], out, pixels)  # hidden characters: the image as it is
    if hatch_background:
        spacing = max(6, round(min(size) / 40))
        ys, xs = np.indices(labels.shape)
        hatch = ((xs + ys) % spacing < max(1, spacing // 6)) & (labels == num_characters)
        out = np.where(hatch[..., None], pixels * 0.35 + np.array(_HATCH_INK, dtype=np.float32) * 0.65, out)

    thickness = max(2, round(min(size) / 160)) if outline is None else int(outline)
    if thickness > 0 and num_characters:
        edge = _borders(labels, thickness) & (labels < num_characters) & shown[labels]
        inner = _borders(labels, max(1, thickness // 2)) & edge
        out = np.where(edge[..., None], colours[labels], out)
        # a dark line along the colour line: the border reads on light and on busy pictures alike
        out = np.where((edge & ~inner)[..., None], colours[labels] * 0.35, out)

    result = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")
    if not legend:
        return result
    entries = [entry for i, entry in enumerate(zip(palette(num_characters), names)) if shown[i]]
    entries.append((BACKGROUND_COLOUR, background_label))
    strip_image = _legend(entries, size[0])
    framed = Image.new("RGB", (size[0], size[1] + strip_image.height), (255, 255, 255))
    framed.paste(result, (0, 0))
    framed.paste(strip_image, (0, size[1]))
    return framed


_HATCH_INK = (110, 110, 110)


def _legend(entries: list[tuple[RGB, str]], width: int) -> Image.Image:
    """A white strip `width` wide: swatch + name per entry, flowing onto more rows as needed."""
    font = _font(max(10, round(width / 36)))
    pad = max(3, font.size // 2 if hasattr(font, "size") else 5)
    swatch = max(6, _line_height(font) - 4)
    row_height = max(swatch, _line_height(font)) + pad
    usable = max(1, width - 2 * pad)

    placed: list[tuple[int, int, RGB, str]] = []  # x, row, colour, text
    x, row = pad, 0
    for colour, name in entries:
        text = _clean_text(name, font)
        text = _fit(font, text, max(0, usable - swatch - pad))
        item = swatch + pad // 2 + math.ceil(_text_width(font, text))
        if x > pad and x + item > width - pad:
            x, row = pad, row + 1
        placed.append((x, row, colour, text))
        x += item + 2 * pad

    height = (row + 1) * row_height + pad
    legend = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for x, row, colour, text in placed:
        top = pad + row * row_height
        swatch_top = top + (row_height - pad - swatch) // 2
        draw.rectangle([x, swatch_top, x + swatch - 1, swatch_top + swatch - 1], fill=colour, outline=(60, 60, 60))
        text_top = top + (row_height - pad - _line_height(font)) // 2
        draw.text((x + swatch + pad // 2, text_top), text, font=font, fill=_LEGEND_INK)
    return legend


# -- recorded routes --------------------------------------------------------------------------


def _entry_grid(entry: dict) -> tuple[int, int]:
    h, w = entry["grid"]
    return (int(h), int(w))


def record_grids(record: Iterable[dict]) -> list[tuple[int, int]]:
    """The layer resolutions present in a record, smallest first."""
    return sorted({_entry_grid(e) for e in record}, key=lambda g: (g[0] * g[1], g))


def record_steps(record: Iterable[dict]) -> list[int]:
    """The denoising steps present in a record, in order."""
    return sorted({int(e["step"]) for e in record})


def record_sites(record: Iterable[dict]) -> list[int]:
    """The attention sites (layers) present in a record, in order."""
    return sorted({int(e["site"]) for e in record})


@lru_cache(maxsize=64)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of adaptive average pooling (same cells as torch's)."""
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -(-((i + 1) * n_in) // n_out)
        weights[i, start:end] = 1.0 / (end - start)
    weights.flags.writeable = False  # shared through the cache
    return weights


def _area_resize(maps: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """[S, h, w] -> [S, H, W] by area averaging (block means down, cell copies up)."""
    _, h, w = maps.shape
    if (h, w) == tuple(out_hw):
        return maps.astype(np.float64)
    rows, cols = _area_matrix(h, out_hw[0]), _area_matrix(w, out_hw[1])
    resized = np.matmul(rows, maps.astype(np.float64))  # [H, h] @ [S, h, w] -> [S, H, w]
    return np.matmul(resized, np.ascontiguousarray(cols.T))  # -> [S, H, W]


def _entry_gates(entry: dict, image_index: int) -> np.ndarray:
    gates = np.asarray(entry["gates"])
    if gates.ndim == 4:  # the pipeline records [batch, S, h, w]
        gates = gates[image_index]
    if gates.ndim != 3:
        raise ValueError(f"recorded gates must be [S, h, w] or [batch, S, h, w], got shape {gates.shape}")
    if tuple(gates.shape[1:]) != _entry_grid(entry):
        raise ValueError(f"recorded gates of shape {gates.shape} do not match their grid {_entry_grid(entry)}")
    return gates


def select_route_maps(
    record: list[dict],
    steps: tuple[int, int] | None = None,
    grid: tuple[int, int] | None = None,
    out_hw: tuple[int, int] | None = None,
    *,
    sites: Iterable[int] | None = None,
    image_index: int = 0,
) -> np.ndarray:
    """One-hot route map [S, H, W] from the recorded steps / layers a user picked to inspect.

    Keeps entries with steps[0] <= step < steps[1], grid == `grid` and site in `sites` (None:
    all), area-resizes each to `out_hw` (default: the largest selected grid), sums the votes
    and gives each position to the slot with the most; a tie goes to the slot of the latest
    selected entry (like the pipeline's final map), then to the lower slot. Batched gates
    [batch, S, h, w] (as the pipeline records them) are read at `image_index`.
    """
    record = list(record)
    if not record:
        raise ValueError(
            "the route record is empty: generate with the route record turned on to inspect steps and layers"
        )
    wanted_grid = None if grid is None else (int(grid[0]), int(grid[1]))
    wanted_sites = None if sites is None else {int(s) for s in sites}
    chosen = [
        e
        for e in record
        if (steps is None or steps[0] <= int(e["step"]) < steps[1])
        and (wanted_grid is None or _entry_grid(e) == wanted_grid)
        and (wanted_sites is None or int(e["site"]) in wanted_sites)
    ]
    if not chosen:
        parts = []
        if steps is not None:
            parts.append(f"steps [{steps[0]}, {steps[1]})")
        if wanted_grid is not None:
            parts.append(f"grid {wanted_grid[0]}x{wanted_grid[1]}")
        if wanted_sites is not None:
            parts.append(f"sites {sorted(wanted_sites)}")
        grids = ", ".join(f"{h}x{w}" for h, w in record_grids(record))
        raise ValueError(
            f"no recorded routes for {' and '.join(parts)}; "
            f"recorded grids: {grids}; recorded steps: {record_steps(record)}; recorded sites: {record_sites(record)}"
        )

    if out_hw is None:
        out_hw = max((_entry_grid(e) for e in chosen), key=lambda g: (g[0] * g[1], g))
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    if out_hw[0] < 1 or out_hw[1] < 1:
        raise ValueError(f"out_hw must be positive, got {out_hw}")

    # Area resizing is linear, so summing each grid's gates first and resizing the sums once
    # gives the same votes as resizing every entry (and is far faster for long records).
    sums: dict[tuple[int, int], np.ndarray] = {}
    num_slots = None
    for entry in chosen:
        gates = _entry_gates(entry, image_index)
        if num_slots is None:
            num_slots = gates.shape[0]
        elif gates.shape[0] != num_slots:
            raise ValueError(f"recorded entries disagree on the number of slots: {num_slots} vs {gates.shape[0]}")
        grid_key = _entry_grid(entry)
        if grid_key in sums:
            sums[grid_key] += gates
        else:
            sums[grid_key] = gates.astype(np.float64)
    votes = sum(_area_resize(total, out_hw) for total in sums.values())
    latest = _area_resize(_entry_gates(chosen[-1], image_index), out_hw)
    top = votes.max(axis=0, keepdims=True)
    is_top = votes >= top - 1e-9 * len(chosen)
    winner = np.argmax(np.where(is_top, 1.0 + latest, 0.0), axis=0)
    return np.moveaxis(np.eye(votes.shape[0], dtype=np.float32)[winner], -1, 0)


# -- files ------------------------------------------------------------------------------------


def _atomic_write(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Run `write(temporary_path)`, then move the result onto `path` (see files.atomic_path)."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def route_maps_bytes(final: np.ndarray, record: list[dict] | None = None) -> bytes:
    """The bytes of a panel version's route-map file: one compressed .npz that loads without pickle.

    The record is stored grouped by grid: one-hot gates as a stacked array of slot indices
    (uint8 when S <= 256), anything else as the stacked arrays themselves, plus the steps,
    sites and original order, so `load_route_maps` gives back exactly what was saved.
    """
    final_array = np.asarray(final)
    if final_array.dtype == object:
        raise ValueError("route maps must be a numeric or bool array")
    arrays: dict[str, np.ndarray] = {
        "format": np.array(_FORMAT_VERSION),
        "final": final_array,
        "has_record": np.array(record is not None),
    }
    groups: dict[tuple, list[tuple[int, dict, np.ndarray]]] = {}
    for order, entry in enumerate(record or []):
        gates = np.asarray(entry["gates"])
        if gates.dtype == object:
            raise ValueError("recorded gates must be a numeric or bool array")
        key = (_entry_grid(entry), gates.shape, gates.dtype.str)
        groups.setdefault(key, []).append((order, entry, gates))
    arrays["record_groups"] = np.array(len(groups))
    for k, ((grid, shape, _), members) in enumerate(groups.items()):
        prefix = f"g{k}_"
        arrays[prefix + "grid"] = np.array(grid, dtype=np.int64)
        arrays[prefix + "order"] = np.array([m[0] for m in members], dtype=np.int64)
        arrays[prefix + "steps"] = np.array([int(m[1]["step"]) for m in members], dtype=np.int64)
        arrays[prefix + "sites"] = np.array([int(m[1]["site"]) for m in members], dtype=np.int64)
        stacked = np.stack([m[2] for m in members])
        slot_axis = stacked.ndim - 3
        one_hot = (
            stacked.dtype == bool
            and len(shape) >= 3
            and shape[-3] >= 1
            and bool((stacked.sum(axis=slot_axis) == 1).all())
        )
        if one_hot:
            num_slots = shape[-3]
            index_type = np.uint8 if num_slots <= 256 else np.uint16
            arrays[prefix + "slots"] = stacked.argmax(axis=slot_axis).astype(index_type)
            arrays[prefix + "num_slots"] = np.array(num_slots)
        else:
            arrays[prefix + "gates"] = stacked

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def load_route_maps(path: Path) -> tuple[np.ndarray, list[dict] | None]:
    """The (final map, record or None) saved from `route_maps_bytes`; never unpickles anything."""
    with np.load(Path(path), allow_pickle=False) as data:
        version = int(data["format"]) if "format" in data.files else -1
        if version != _FORMAT_VERSION:
            raise ValueError(f"{path}: not a route-map file of format {_FORMAT_VERSION} (found {version})")
        final = data["final"]
        if not bool(data["has_record"]):
            return final, None
        entries: list[tuple[int, dict]] = []
        for k in range(int(data["record_groups"])):
            prefix = f"g{k}_"
            grid = tuple(int(v) for v in data[prefix + "grid"])
            if prefix + "slots" in data.files:
                num_slots = int(data[prefix + "num_slots"])
                indices = data[prefix + "slots"]
                if not 1 <= num_slots <= 65536 or indices.size * num_slots > MAX_EXPANDED_GATES:
                    raise ValueError(f"{path}: the route record claims {num_slots} slots over {indices.size} sites")
                one_hot = indices.astype(np.int64)[..., None] == np.arange(num_slots)  # no num_slots² eye
                gates = np.moveaxis(one_hot, -1, -3)
            else:
                gates = data[prefix + "gates"]
            for order, step, site, entry_gates in zip(
                data[prefix + "order"], data[prefix + "steps"], data[prefix + "sites"], gates
            ):
                entries.append(
                    (
                        int(order),
                        {
                            "step": int(step),
                            "site": int(site),
                            "grid": grid,
                            "gates": np.ascontiguousarray(entry_gates),
                        },
                    )
                )
    entries.sort(key=lambda item: item[0])
    return final, [entry for _, entry in entries]


def export_png(image: Image.Image, path: Path) -> Path:
    """One image as a PNG file."""
    image = _png_ready(image)
    return _atomic_write(path, lambda temporary: image.save(temporary, format="PNG"))


def _png_ready(image: Image.Image) -> Image.Image:
    return image if image.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16") else _as_rgb(image)


def export_pdf(pages: list[Image.Image], path: Path, resolution: float = 200.0, *, title: str = "") -> Path:
    """A multi-page PDF, one page per image, sized by `resolution` (dots per inch)."""
    pages = list(pages)
    if not pages:
        raise ValueError("a PDF needs at least one page")
    if resolution <= 0:
        raise ValueError(f"resolution must be > 0, got {resolution}")
    flat = [_as_rgb(page) for page in pages]
    options: dict = {"format": "PDF", "resolution": float(resolution), "save_all": True, "append_images": flat[1:]}
    if title:
        options["title"] = _clean_text(title, None)
    return _atomic_write(path, lambda temporary: flat[0].save(temporary, **options))


def export_cbz(images: list[Image.Image], path: Path, title: str = "", *, manga: bool = False) -> Path:
    """A comic-book archive: 001.png, 002.png, ... (stored, PNG is already compressed) and a
    ComicInfo.xml with the title and page count, for comic readers; `manga` tells them to turn
    the pages right to left (ComicInfo's Manga="YesAndRightToLeft")."""
    images = list(images)
    if not images:
        raise ValueError("a CBZ needs at least one image")
    digits = max(3, len(str(len(images))))
    members: list[tuple[str, bytes, tuple[int, int]]] = []
    for number, image in enumerate(images, start=1):
        buffer = io.BytesIO()
        _png_ready(image).save(buffer, format="PNG")
        members.append((f"{number:0{digits}d}.png", buffer.getvalue(), image.size))

    def write(temporary: Path) -> None:
        with zipfile.ZipFile(temporary, "w") as archive:
            for name, data, _ in members:
                archive.writestr(zipfile.ZipInfo(name, date_time=_zip_time()), data, compress_type=zipfile.ZIP_STORED)
            info = zipfile.ZipInfo("ComicInfo.xml", date_time=_zip_time())
            archive.writestr(info, _comic_info(title, members, manga), compress_type=zipfile.ZIP_DEFLATED)

    return _atomic_write(path, write)


def _zip_time() -> tuple[int, int, int, int, int, int]:
    now = time.localtime()
    return (max(1980, now.tm_year), now.tm_mon, now.tm_mday, now.tm_hour, now.tm_min, now.tm_sec)


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _comic_info(title: str, members: list[tuple[str, bytes, tuple[int, int]]], manga: bool = False) -> str:
    clean_title = _XML_INVALID.sub("", str(title).encode("utf-8", "replace").decode("utf-8"))
    pages = "\n".join(
        f'    <Page Image="{i}" ImageWidth="{w}" ImageHeight="{h}" ImageSize="{len(data)}"'
        + (' Type="FrontCover"' if i == 0 else "")
        + " />"
        for i, (_, data, (w, h)) in enumerate(members)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<ComicInfo xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema">\n'
        f"  <Title>{xml_escape(clean_title)}</Title>\n"
        f"  <PageCount>{len(members)}</PageCount>\n"
        + ("  <Manga>YesAndRightToLeft</Manga>\n" if manga else "")
        + "  <Pages>\n"
        f"{pages}\n"
        "  </Pages>\n"
        "</ComicInfo>\n"
    )


# -- layouts ----------------------------------------------------------------------------------


def strip(
    images: list[Image.Image],
    captions: list[str] | None = None,
    gap: int = 16,
    background=(255, 255, 255),
    *,
    height: int | None = None,
) -> Image.Image:
    """Panels side by side, left to right, for sharing a short story as one picture.

    Every panel is scaled (aspect kept) to one height: `height` if given, else the tallest
    panel's, so no panel loses detail. `gap` pixels separate panels and frame the strip.
    Captions (None or "" for none) are wrapped to their panel's width and centred under it;
    the caption band is as tall as the longest caption and absent when there are none.
    """
    images = list(images)
    if not images:
        raise ValueError("a strip needs at least one image")
    captions = _check_captions(captions, len(images))
    gap = max(0, int(gap))
    paper = _paper(background)
    target = int(height) if height is not None else max(image.height for image in images)
    if target < 1:
        raise ValueError(f"strip height must be >= 1, got {target}")
    panels = [_resize_to_height(_as_rgb(image, paper), target) for image in images]

    font = _font(max(12, round(target / 32)))
    wrapped = [_wrap(caption, font, panel.width) for caption, panel in zip(captions, panels)]
    lines = max(len(w) for w in wrapped)
    caption_band = lines * _line_height(font) + gap // 2 if lines else 0

    width = sum(panel.width for panel in panels) + gap * (len(panels) + 1)
    canvas = Image.new("RGB", (width, target + caption_band + 2 * gap), paper)
    draw = ImageDraw.Draw(canvas)
    ink = _ink_for(paper)
    x = gap
    for panel, caption_lines in zip(panels, wrapped):
        canvas.paste(panel, (x, gap))
        _draw_lines(draw, caption_lines, font, x, gap + target + gap // 2, panel.width, ink)
        x += panel.width + gap
    return canvas


def page_grid(
    images: list[Image.Image],
    columns: int = 2,
    rows: int = 3,
    captions: list[str] | None = None,
    page_size: tuple[int, int] = (1654, 2339),
    margin: int = 60,
    *,
    gap: int = 40,
    caption_lines: int = 3,
    background=(255, 255, 255),
) -> list[Image.Image]:
    """Printable pages (A4 at 200 dpi by default), `columns` x `rows` panels each, as many
    pages as the panels need. Panels keep their aspect ratio and are centred in their cell;
    captions are wrapped under each panel, at most `caption_lines` lines (then an ellipsis)."""
    images = list(images)
    if not images:
        raise ValueError("a page grid needs at least one image")
    if columns < 1 or rows < 1:
        raise ValueError(f"columns and rows must be >= 1, got {columns}x{rows}")
    captions = _check_captions(captions, len(images))
    page_width, page_height = int(page_size[0]), int(page_size[1])
    paper = _paper(background)
    font = _font(max(12, round(page_width / 60)))
    line_height = _line_height(font)
    caption_band = (caption_lines * line_height + gap // 4) if any(captions) and caption_lines > 0 else 0

    cell_width = (page_width - 2 * margin - (columns - 1) * gap) // columns
    cell_height = (page_height - 2 * margin - (rows - 1) * gap) // rows
    picture_height = cell_height - caption_band
    if cell_width < 1 or picture_height < 1:
        raise ValueError(
            f"a {page_width}x{page_height} page with margin {margin} and gap {gap} has no room for "
            f"{columns}x{rows} panels{' with captions' if caption_band else ''}"
        )

    per_page = columns * rows
    pages: list[Image.Image] = []
    ink = _ink_for(paper)
    for first in range(0, len(images), per_page):
        page = Image.new("RGB", (page_width, page_height), paper)
        draw = ImageDraw.Draw(page)
        for slot, index in enumerate(range(first, min(first + per_page, len(images)))):
            row, column = divmod(slot, columns)
            left = margin + column * (cell_width + gap)
            top = margin + row * (cell_height + gap)
            panel = _fit_into(_as_rgb(images[index], paper), cell_width, picture_height)
            page.paste(panel, (left + (cell_width - panel.width) // 2, top + (picture_height - panel.height) // 2))
            lines = _wrap(captions[index], font, cell_width, max_lines=caption_lines)
            _draw_lines(draw, lines, font, left, top + picture_height + gap // 4, cell_width, ink)
        pages.append(page)
    return pages


# -- file names -------------------------------------------------------------------------------

_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{p}{d}" for p in ("COM", "LPT") for d in "0123456789"
}


def safe_filename(text: str, default: str = "story", max_length: int = 80) -> str:
    """A file name stem made from a story or character title, safe on every common OS.

    Keeps letters, digits and combining marks of any script plus '-', '_' and spaces; every
    other run of characters (slashes, dots, quotes, emoji, controls) becomes one '_'. Never
    empty (falls back to `default`, then "story"), never "." / "..", no leading or trailing
    space, '_' or '-', at most `max_length` characters (and 255 UTF-8 bytes), and Windows
    device names (CON, NUL, COM1, ...) get a trailing '_'.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    text = unicodedata.normalize("NFKC", str(text or "").encode("utf-8", "replace").decode("utf-8"))
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if category[0] in "LNM" or ch in "-_":
            kept.append(ch)
        elif ch == " " or category == "Zs":
            kept.append(" ")
        else:
            kept.append("\0")
    name = re.sub("\0+", "_", "".join(kept))
    name = re.sub(" +", " ", name)
    name = re.sub(r"[ _]*_[ _]*", "_", name)
    name = name.strip(" _-")
    name = name[:max_length].rstrip(" _-")
    while len(name.encode("utf-8")) > 255:
        name = name[:-1].rstrip(" _-")
    if not name:
        fallback = safe_filename(default, "story", max_length) if default and default != text else ""
        return fallback or "story"[:max_length]
    if name.upper() in _WINDOWS_RESERVED:
        name = name[: max_length - 1] + "_" if len(name) >= max_length else name + "_"
    return name
