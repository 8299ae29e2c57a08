"""Text in any script for bubbles and pages: each character drawn by the first installed font
that has its glyph (font fallback per run), right-to-left runs laid out right to left.

A line is cut into runs of one font and one direction. Directions follow a small part of the
Unicode bidi algorithm (enough for a line that mixes Latin, CJK and Arabic/Hebrew): the line's
base direction is its first strong character's; a run of neutral characters (spaces,
punctuation) takes the direction of the text on both its sides when they agree, else the base
direction; runs against the base direction are shown in reverse order. Each right-to-left run is
shaped by Pillow's libraqm layout (joined Arabic letters) when Pillow has it; without it the run's
characters are only reversed (letters unjoined; see docs/FONTS.md). Glyphs no installed font has
(most colour emoji) are refused by name.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageDraw, ImageFont, features

# Tried in this order for each character. Debian packages (install.sh): fonts-dejavu-core (Latin,
# Greek, Cyrillic, Arabic, Hebrew, symbols), fonts-noto-cjk (Chinese, Japanese, Korean).
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
SHAPES_RTL = features.check("raqm")  # libraqm: shaping and right-to-left layout of a run
_RTL_CLASSES = ("R", "AL")
_LTR_CLASSES = ("L", "EN", "AN")  # numbers read left to right, also inside Arabic text


@dataclass
class Run:
    """Characters drawn by one font in one direction."""

    text: str
    path: str
    rtl: bool = False


@lru_cache(maxsize=256)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=8)
def _notdef(path: str) -> bytes:
    """The 'missing glyph' box of a font, to tell a missing glyph from a real one."""
    return bytes(load_font(path, 24).getmask("\U0010fffd"))


@lru_cache(maxsize=8192)
def has_glyph(path: str, ch: str) -> bool:
    if ch.isspace() or unicodedata.category(ch) in ("Mn", "Me", "Cf", "Cc"):
        return True
    return bytes(load_font(path, 24).getmask(ch)) != _notdef(path)


def available_fonts(bold: bool = False) -> list[str]:
    return [p for p in dict.fromkeys(BOLD_FONT_FILES if bold else FONT_FILES) if Path(p).is_file()]


def _direction(ch: str) -> bool | None:
    """True for a strong right-to-left character, False for strong left-to-right, None neutral."""
    kind = unicodedata.bidirectional(ch)
    if kind in _RTL_CLASSES:
        return True
    if kind in _LTR_CLASSES:
        return False
    return None


def base_rtl(text: str) -> bool:
    """The direction of a line: that of its first strong character (left to right if none)."""
    return next((d for d in map(_direction, text) if d is not None), False)


def missing_glyphs(text: str, bold: bool = False) -> list[str]:
    fonts = available_fonts(bold)
    return [ch for ch in dict.fromkeys(text) if not any(has_glyph(p, ch) for p in fonts)]


def check_drawable(text: str, bold: bool = False) -> None:
    """ValueError naming the characters no installed font can draw (an emoji, a script whose
    font is not installed)."""
    if not available_fonts(bold):
        raise ValueError("no font for text is installed: install fonts-dejavu-core (see install.sh)")
    missing = missing_glyphs(text, bold)
    if missing:
        shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(
            f"no installed font can draw {shown}{more}: remove it from the line, or install a font that has it "
            "(install.sh installs fonts-dejavu-core and fonts-noto-cjk; colour emoji are not supported)"
        )


def split_runs(text: str, bold: bool = False) -> list[Run]:
    """The line as runs in reading (logical) order; ValueError when a glyph has no font."""
    return [Run(r.text, r.path, r.rtl) for r in _split_runs(text, bold)]


@lru_cache(maxsize=4096)
def _split_runs(text: str, bold: bool) -> tuple[Run, ...]:
    check_drawable(text, bold)
    fonts = available_fonts(bold)
    strong = [_direction(ch) for ch in text]
    base = base_rtl(text)
    resolved: list[bool] = []
    for i, direction in enumerate(strong):
        if direction is None:  # a neutral: the direction on both sides when they agree, else the base
            before = next((d for d in reversed(strong[:i]) if d is not None), base)
            after = next((d for d in strong[i + 1 :] if d is not None), base)
            direction = before if before == after else base
        resolved.append(direction)
    runs: list[Run] = []
    for ch, rtl in zip(text, resolved):
        current = runs[-1] if runs else None
        if current is not None and _direction(ch) is None and has_glyph(current.path, ch):
            path = current.path  # a neutral (space, punctuation) stays in the run's font
        else:  # a letter goes to the first font that has it (Latin after CJK: back to DejaVu)
            path = next(p for p in fonts if has_glyph(p, ch))
        if current is not None and current.rtl == rtl and current.path == path:
            current.text += ch
        else:
            runs.append(Run(ch, path, rtl))
    return tuple(runs)


def visual_runs(text: str, bold: bool = False) -> list[Run]:
    """The runs in the order they are drawn, left to right: runs against the line's direction
    are reversed as a group (the whole line, for a right-to-left line)."""
    runs = split_runs(text, bold)
    base = base_rtl(text)
    if base:
        runs = runs[::-1]
    out: list[Run] = []
    group: list[Run] = []
    for run in runs:
        if run.rtl != base:
            group.append(run)
            continue
        out += group[::-1]
        group = []
        out.append(run)
    return out + group[::-1]


def _run_args(run: Run) -> tuple[str, dict]:
    if not run.rtl:
        return run.text, {}
    if SHAPES_RTL:
        return run.text, {"direction": "rtl"}
    return run.text[::-1], {}  # no libraqm: right to left by reversing, letters not joined


@lru_cache(maxsize=65536)
def text_length(text: str, size: int, bold: bool = False) -> float:
    """The width of a line in pixels at `size`, every run in its own font."""
    total = 0.0
    for run in _split_runs(text, bold):
        shown, kwargs = _run_args(run)
        total += load_font(run.path, size).getlength(shown, **kwargs)
    return total


def line_step(text: str, size: int, bold: bool = False) -> int:
    """The distance between baselines for text at `size`: the tallest font the text uses."""
    paths = {run.path for run in _split_runs(text, bold)} or set(available_fonts(bold)[:1])
    return max(int(sum(load_font(p, size).getmetrics()) * 1.08) + 1 for p in paths)


def draw_line(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    size: int,
    *,
    bold: bool = False,
    fill=(20, 20, 20),
    align: str = "left",
    **kwargs,
) -> None:
    """Draw one line from xy (its top; left, centre or right edge by `align`), run by run. All
    runs share the baseline of the tallest font's ascent."""
    width = text_length(text, size, bold)
    x = xy[0] - {"left": 0.0, "centre": width / 2, "right": width}[align]
    runs = visual_runs(text, bold)
    ascent = max(load_font(run.path, size).getmetrics()[0] for run in runs) if runs else 0
    for run in runs:
        font = load_font(run.path, size)
        shown, extra = _run_args(run)
        draw.text((x, xy[1] + ascent), shown, font=font, fill=fill, anchor="ls", **extra, **kwargs)
        x += font.getlength(shown, **extra)
