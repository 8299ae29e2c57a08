"""Speech bubbles placed from the router's maps, drawn as a layer over a panel's image.

The router says which character owns every latent cell of a panel; a speaker's bubble goes near
the top of the speaker's region, on space no other character owns where there is any, with its
tail at the speaker. Narration goes to a caption box in a corner. Several bubbles follow the
lines' order in reading order (left-to-right, top-to-bottom; right-to-left for manga).

Pure functions over arrays (numpy + Pillow, never torch): `place_bubbles` returns boxes and tail
points, `draw_bubbles` draws them on a copy of the image; the version's picture is never changed.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KINDS = ("speech", "thought", "caption", "sfx")
MAX_LINE_CHARS = 500

# Fonts tried in order for each line: the first that has every glyph of the text draws it.
# Debian packages (install.sh): fonts-dejavu-core (Latin, Greek, Cyrillic, Arabic, Hebrew),
# fonts-noto-cjk (Chinese, Japanese, Korean). Licences: docs/FONTS.md.
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)
BOLD_FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    *FONT_FILES,
)
INK = (20, 20, 20)
PAPER = (255, 255, 255)
CAPTION_PAPER = (255, 246, 200)
_WORK_SIDE = 96  # cells on the long side of the grid the placement searches


@dataclass
class LineSpec:
    """One line to place: its kind, text, the speaker's slot in the route maps (None: narration
    or a speaker the router did not place) and the writer's nudge (fractions of the image)."""

    kind: str
    text: str
    slot: int | None = None
    offset: tuple[float, float] = (0.0, 0.0)


@dataclass
class Bubble:
    index: int  # the line's index
    kind: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels
    tail: tuple[int, int] | None  # the tail's tip (at the speaker), None for captions
    lines: list[str] = field(default_factory=list)
    font_size: int = 12
    font_path: str = ""
    speaker_seen: bool = False  # the router placed the speaker in this image


# -- fonts --------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=8)
def _notdef(path: str) -> bytes:
    """The 'missing glyph' box of a font, to tell a missing glyph from a real one."""
    mask = load_font(path, 24).getmask("\U0010fffd")
    return bytes(mask)


def _has_glyph(path: str, ch: str) -> bool:
    if ch.isspace() or unicodedata.category(ch) in ("Mn", "Me", "Cf", "Cc"):
        return True
    return bytes(load_font(path, 24).getmask(ch)) != _notdef(path)


def available_fonts(bold: bool = False) -> list[str]:
    return [p for p in (BOLD_FONT_FILES if bold else FONT_FILES) if Path(p).is_file()]


def font_for(text: str, bold: bool = False) -> str:
    """The first installed font that draws every character of `text`; ValueError names the
    characters none can draw (an emoji, a script whose font is not installed)."""
    fonts = available_fonts(bold)
    if not fonts:
        raise ValueError("no font for bubbles is installed: install fonts-dejavu-core (see install.sh)")
    missing: list[str] = []
    for path in fonts:
        missing = [ch for ch in dict.fromkeys(text) if not _has_glyph(path, ch)]
        if not missing:
            return path
    shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in missing[:5])
    raise ValueError(
        f"no installed font can draw {shown}: remove it from the line, or install a font that has it "
        "(install.sh installs fonts-dejavu-core and fonts-noto-cjk; colour emoji are not supported)"
    )


def check_line(kind: str, text: str) -> str:
    """A line's text, checked: a known kind, some text, not too long, every glyph drawable."""
    if kind not in KINDS:
        raise ValueError(f"a line's kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a line needs some text")
    text = text.strip()
    if len(text) > MAX_LINE_CHARS:
        raise ValueError(f"a line has at most {MAX_LINE_CHARS} characters, this one {len(text)}")
    font_for(text, bold=kind == "sfx")
    return text


# -- regions --------------------------------------------------------------------------------------


def labels_at(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """[S, h, w] route maps -> [H, W] owner slot per cell (nearest), background = S - 1.
    Soft maps (no routing: everyone everywhere) give each cell to its strongest slot."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] < 1:
        raise ValueError(f"route maps must be [slots, h, w], got shape {maps.shape}")
    owner = maps.argmax(axis=0)
    height, width = shape
    ys = np.minimum((np.arange(height) + 0.5) * maps.shape[1] / height, maps.shape[1] - 1).astype(int)
    xs = np.minimum((np.arange(width) + 0.5) * maps.shape[2] / width, maps.shape[2] - 1).astype(int)
    return owner[ys][:, xs]


def _window_sums(mask: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """Cells set in every bh x bw window, indexed by the window's top-left cell."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), axis=0), axis=1)
    return integral[bh:, bw:] - integral[:-bh, bw:] - integral[bh:, :-bw] + integral[:-bh, :-bw]


def _dilate(mask: np.ndarray, by: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-by, by + 1):
        for dx in range(-by, by + 1):
            out |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out


# -- text fitting --------------------------------------------------------------------------------


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy wrap by pixel width; scripts without spaces (CJK) break between characters."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for ch in word:
                if line and font.getlength(line + ch) > width:
                    lines.append(line)
                    line = ""
                line += ch
        lines.append(line)
    return [line for line in lines if line] or [""]


def fit_text(text: str, kind: str, size: tuple[int, int]) -> tuple[list[str], int, str, tuple[int, int]]:
    """(wrapped lines, font size, font file, (box width, box height)) of a line on an image of
    `size`: the text wraps to at most ~40% of the width and shrinks until the box fits ~35% of
    the height (then the last lines are cut with an ellipsis)."""
    width, height = size
    path = font_for(text, bold=kind == "sfx")
    big = max(10, round(min(width, height) / (9 if kind == "sfx" else 20)))
    small = max(8, round(min(width, height) / 60))
    max_width = width * (0.45 if kind == "caption" else 0.40)
    font_size, lines = small, [text]
    for font_size in range(big, small - 1, -max(1, (big - small) // 8)):
        font = load_font(path, font_size)
        lines = _wrap(text, font, max_width)
        if len(lines) * _line_step(font) <= height * 0.35:
            break
    font = load_font(path, font_size)
    step = _line_step(font)
    most = max(1, int(height * 0.35 // step))
    if len(lines) > most:
        lines = lines[:most]
        lines[-1] = lines[-1].rstrip() + "…"
    text_w = max(font.getlength(line) for line in lines)
    text_h = len(lines) * step
    pad = font_size * 0.6
    if kind in ("speech", "thought"):  # an ellipse around the text block needs about sqrt(2) of it
        box = (text_w * 1.3 + 2 * pad, text_h * 1.3 + 2 * pad)
    elif kind == "caption":
        box = (text_w + 2 * pad, text_h + 1.4 * pad)
    else:
        box = (text_w + pad, text_h + pad)
    return lines, font_size, path, (min(width, round(box[0])), min(height, round(box[1])))


def _line_step(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return int((ascent + descent) * 1.08) + 1


# -- placement -------------------------------------------------------------------------------------


def speaker_anchor(labels: np.ndarray, slot: int) -> tuple[float, float] | None:
    """Where a tail points: the middle of the top of the slot's region (the head of a standing
    figure), a little inside it; in the labels' cells. None when the slot owns no cell."""
    ys, xs = np.nonzero(labels == slot)
    if len(ys) == 0:
        return None
    top, bottom = ys.min(), ys.max()
    band = ys <= top + max(1, (bottom - top) * 0.15)
    return float(xs[band].mean()) + 0.5, float(top + (bottom - top + 1) * 0.12) + 0.5


def place_bubbles(
    maps: np.ndarray | None, size: tuple[int, int], lines: list[LineSpec], *, rtl: bool = False
) -> list[Bubble]:
    """Boxes and tails for the lines on an image of `size` (width, height) routed as `maps`
    ([S, h, w], characters then the background; None: nobody placed)."""
    width, height = int(size[0]), int(size[1])
    scale = _WORK_SIDE / max(width, height)
    gw, gh = max(8, round(width * scale)), max(8, round(height * scale))
    sx, sy = width / gw, height / gh  # pixels per cell
    if maps is not None:
        labels = labels_at(maps, (gh, gw))
        background = np.asarray(maps).shape[0] - 1
    else:
        labels, background = np.zeros((gh, gw), dtype=np.int64), 0
    placed = np.zeros((gh, gw), dtype=bool)
    bubbles: list[Bubble | None] = [None] * len(lines)
    margin = max(1, round(gw / 48))

    corners = ["tl", "tr", "bl", "br"] if not rtl else ["tr", "tl", "br", "bl"]
    for index, line in enumerate(lines):  # captions first: they take corners, bubbles avoid them
        if line.kind != "caption":
            continue
        text, font_size, path, (bw, bh) = fit_text(line.text, line.kind, (width, height))
        corner = corners[min(sum(b is not None and b.kind == "caption" for b in bubbles), 3)]
        pad = round(min(width, height) * 0.02)
        x0 = pad if corner[1] == "l" else width - pad - bw
        y0 = pad if corner[0] == "t" else height - pad - bh
        box = _nudged((x0, y0, x0 + bw, y0 + bh), line.offset, width, height)
        bubbles[index] = Bubble(index, "caption", box, None, text, font_size, path, False)
        placed |= _cells(box, sx, sy, gw, gh, margin)

    previous: tuple[float, float] | None = None
    for index, line in enumerate(lines):
        if line.kind == "caption":
            continue
        text, font_size, path, (bw_px, bh_px) = fit_text(line.text, line.kind, (width, height))
        bw, bh = min(gw, max(1, int(np.ceil(bw_px / sx)))), min(gh, max(1, int(np.ceil(bh_px / sy))))
        has_slot = line.slot is not None and 0 <= line.slot < background
        anchor = speaker_anchor(labels, line.slot) if has_slot else None
        own = labels == line.slot if anchor is not None else np.zeros_like(placed)
        others = (labels != background) & ~own
        score = _score(own, others, placed, bw, bh, anchor, previous, rtl, margin)
        y, x = np.unravel_index(int(np.argmin(score)), score.shape)
        box = (round(x * sx), round(y * sy), min(width, round((x + bw) * sx)), min(height, round((y + bh) * sy)))
        box = _nudged(box, line.offset, width, height)
        tail = None
        if anchor is not None and line.kind in ("speech", "thought"):
            tail = (round(anchor[0] * sx), round(anchor[1] * sy))
        bubbles[index] = Bubble(index, line.kind, box, tail, text, font_size, path, anchor is not None)
        placed |= _cells(box, sx, sy, gw, gh, margin)
        previous = ((box[0] + box[2]) / 2 / sx, (box[1] + box[3]) / 2 / sy)
    return [b for b in bubbles if b is not None]


def _score(own, others, placed, bw, bh, anchor, previous, rtl: bool, margin: int) -> np.ndarray:
    """The cost of every top-left cell for a bw x bh bubble (lower is better). Covering another
    character or an earlier bubble costs most; then breaking reading order; then distance from
    the speaker's head and covering the speaker."""
    gh, gw = own.shape
    area = float(bw * bh)
    cost = 1000.0 * _window_sums(others, bh, bw) / area
    cost += 1000.0 * _window_sums(placed, bh, bw) / area
    cost += 8.0 * _window_sums(own, bh, bw) / area
    ys, xs = np.indices(cost.shape, dtype=np.float64)
    # keep a small margin from the frame where the image allows it
    inner = (xs >= margin) & (ys >= margin) & (xs + bw <= gw - margin) & (ys + bh <= gh - margin)
    cost += np.where(inner, 0.0, 0.5)
    cx, cy = xs + bw / 2, ys + bh / 2
    if anchor is not None:
        ax, ay = anchor
        dx = np.maximum(np.maximum(xs - ax, ax - (xs + bw)), 0)
        dy = np.maximum(np.maximum(ys - ay, ay - (ys + bh)), 0)
        cost += 10.0 * np.hypot(dx, dy) / np.hypot(gw, gh)
        cost += np.where(ys + bh > ay, 1.5, 0.0)  # a bubble reads best above the head, its tail showing
    else:
        cost += 2.0 * ys / gh  # nobody to point at: near the top
    if previous is not None:
        px, py = previous
        earlier_row = cy < py - bh / 2
        same_row = np.abs(cy - py) <= bh / 2
        backwards = (cx > px) if rtl else (cx < px)
        cost += np.where(earlier_row | (same_row & backwards), 20.0, 0.0)
    return cost


def _cells(box, sx: float, sy: float, gw: int, gh: int, margin: int) -> np.ndarray:
    mask = np.zeros((gh, gw), dtype=bool)
    x0, y0 = max(0, int(box[0] / sx) - margin), max(0, int(box[1] / sy) - margin)
    x1, y1 = min(gw, int(np.ceil(box[2] / sx)) + margin), min(gh, int(np.ceil(box[3] / sy)) + margin)
    mask[y0:y1, x0:x1] = True
    return mask


def _nudged(box, offset, width: int, height: int) -> tuple[int, int, int, int]:
    """The box moved by the writer's nudge (fractions of the image), kept inside the image."""
    dx, dy = round(float(offset[0]) * width), round(float(offset[1]) * height)
    bw, bh = box[2] - box[0], box[3] - box[1]
    x0 = min(max(0, box[0] + dx), max(0, width - bw))
    y0 = min(max(0, box[1] + dy), max(0, height - bh))
    return (x0, y0, x0 + bw, y0 + bh)


# -- drawing ---------------------------------------------------------------------------------------


def draw_bubbles(image: Image.Image, bubbles: list[Bubble]) -> Image.Image:
    """A copy of the image with the bubbles drawn over it (the image itself is left alone)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    outline = max(2, round(min(out.size) / 256))
    for bubble in bubbles:
        x0, y0, x1, y1 = bubble.box
        font = load_font(bubble.font_path, bubble.font_size)
        if bubble.kind == "caption":
            draw.rectangle(bubble.box, fill=CAPTION_PAPER, outline=INK, width=outline)
        elif bubble.kind in ("speech", "thought"):
            if bubble.tail is not None:
                _draw_tail(draw, bubble, outline)
            draw.ellipse(bubble.box, fill=PAPER, outline=INK, width=outline)
            if bubble.kind == "thought":  # a scalloped rim: small circles round the ellipse
                _scallops(draw, bubble.box, outline)
        _draw_text(draw, bubble, font, outline)
    return out


def _draw_tail(draw: ImageDraw.ImageDraw, bubble: Bubble, outline: int) -> None:
    x0, y0, x1, y1 = bubble.box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    tx, ty = bubble.tail
    vx, vy = tx - cx, ty - cy
    length = max(1e-6, float(np.hypot(vx, vy)))
    rx, ry = (x1 - x0) / 2, (y1 - y0) / 2
    # where the line from the centre to the tip leaves the ellipse
    t = 1.0 / max(1e-6, float(np.sqrt((vx / max(rx, 1)) ** 2 + (vy / max(ry, 1)) ** 2)))
    ex, ey = cx + vx * t, cy + vy * t
    if np.hypot(tx - cx, ty - cy) <= np.hypot(ex - cx, ey - cy):  # the tip is inside the bubble
        return
    base = max(6.0, min(rx, ry) * 0.45)
    nx, ny = -vy / length * base / 2, vx / length * base / 2
    inner = (cx + vx * t * 0.7, cy + vy * t * 0.7)
    if bubble.kind == "thought":
        for k, r in ((0.35, 0.10), (0.65, 0.07), (0.9, 0.045)):
            px, py = ex + (tx - ex) * k, ey + (ty - ey) * k
            rad = max(3.0, min(rx, ry) * r)
            draw.ellipse((px - rad, py - rad, px + rad, py + rad), fill=PAPER, outline=INK, width=outline)
        return
    points = [(inner[0] + nx, inner[1] + ny), (tx, ty), (inner[0] - nx, inner[1] - ny)]
    draw.polygon(points, fill=PAPER, outline=INK, width=outline)


def _scallops(draw: ImageDraw.ImageDraw, box, outline: int) -> None:
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    rad = max(3.0, min(rx, ry) * 0.18)
    for k in range(14):
        a = 2 * np.pi * k / 14
        px, py = cx + (rx - rad * 0.6) * np.cos(a), cy + (ry - rad * 0.6) * np.sin(a)
        draw.ellipse((px - rad, py - rad, px + rad, py + rad), fill=PAPER, outline=INK, width=outline)
    draw.ellipse((x0 + rad, y0 + rad, x1 - rad, y1 - rad), fill=PAPER)


def _draw_text(draw: ImageDraw.ImageDraw, bubble: Bubble, font, outline: int) -> None:
    x0, y0, x1, y1 = bubble.box
    step = _line_step(font)
    top = (y0 + y1) / 2 - len(bubble.lines) * step / 2
    for i, line in enumerate(bubble.lines):
        x = (x0 + x1) / 2 - font.getlength(line) / 2
        if bubble.kind == "sfx":
            draw.text((x, top + i * step), line, font=font, fill=(230, 40, 30), stroke_width=outline, stroke_fill=INK)
        else:
            draw.text((x, top + i * step), line, font=font, fill=INK)
