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

import numpy as np
from PIL import Image, ImageDraw

from . import fonts

KINDS = ("speech", "thought", "caption", "sfx")
MAX_LINE_CHARS = 500
MIN_FONT_SIZE = 8  # px: the smallest text drawn, still legible on a 128 px panel
INK = (20, 20, 20)
PAPER = (255, 255, 255)
CAPTION_PAPER = (255, 246, 200)
THOUGHT_RIM = 0.16  # a thought bubble's scallops: their radius, as a share of the short half-axis
_WORK_SIDE = 96  # cells on the long side of the grid the placement searches
# How much of the image (width, height) a line's box may take: the first that the text fits at a
# comfortable size, then larger ones (the bubble grows before the text gets small).
_BUDGETS = {
    "speech": ((0.40, 0.35), (0.60, 0.50), (0.90, 0.80)),
    "thought": ((0.40, 0.35), (0.60, 0.50), (0.90, 0.80)),
    "caption": ((0.45, 0.30), (0.70, 0.45), (0.96, 0.60)),
    "sfx": ((0.50, 0.35), (0.70, 0.50), (0.90, 0.70)),
}


@dataclass
class LineSpec:
    """One line to place: its kind, text, the speaker's slot in the route maps (None: narration
    or a speaker the router did not place) and the writer's nudge (fractions of the image)."""

    kind: str
    text: str
    slot: int | None = None
    offset: tuple[float, float] = (0.0, 0.0)


@dataclass
class Fit:
    """A line's text laid out for a box: wrapped lines, font size, the box's pixel size, and
    whether it had to be cut (it did not fit even at the smallest font size in the largest box)."""

    lines: list[str]
    font_size: int
    size: tuple[int, int]
    truncated: bool = False


@dataclass
class Bubble:
    index: int  # the line's index
    kind: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels
    tail: tuple[int, int] | None  # the tail's tip (at the speaker), None for captions
    lines: list[str] = field(default_factory=list)
    font_size: int = 12
    bold: bool = False  # sound effects are drawn bold
    speaker_seen: bool = False  # the router placed the speaker in this image
    warning: str = ""  # why the line is not shown as the writer would expect (cut, or overlapping)


# -- text checks -------------------------------------------------------------------------------


def check_line(kind: str, text: str) -> str:
    """A line's text, checked: a known kind, some text, not too long, every glyph drawable by an
    installed font (each character may come from a different one: fonts.py)."""
    if kind not in KINDS:
        raise ValueError(f"a line's kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a line needs some text")
    text = text.strip()
    if len(text) > MAX_LINE_CHARS:
        raise ValueError(f"a line has at most {MAX_LINE_CHARS} characters, this one {len(text)}")
    fonts.check_drawable(text, bold=kind == "sfx")
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
    """The mask grown by `by` cells in every direction (a square), not wrapping round the edges."""
    height, width = mask.shape
    padded = np.pad(mask, by)
    out = np.zeros_like(mask)
    for dy in range(2 * by + 1):
        for dx in range(2 * by + 1):
            out |= padded[dy : dy + height, dx : dx + width]
    return out


# -- text fitting --------------------------------------------------------------------------------


def _wrap(text: str, size: int, bold: bool, width: float, split_words: bool = True) -> list[str] | None:
    """Greedy wrap by pixel width; scripts without spaces (CJK) break between characters. A
    word of another script too wide for a line is split only with `split_words` (else None:
    this size does not fit without cutting a word)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if fonts.text_length(candidate, size, bold) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            if fonts.text_length(word, size, bold) > width and not (split_words or _breaks_anywhere(word)):
                return None
            for ch in word:
                if line and fonts.text_length(line + ch, size, bold) > width:
                    lines.append(line)
                    line = ""
                line += ch
        lines.append(line)
    return [line for line in lines if line] or [""]


def _breaks_anywhere(word: str) -> bool:
    """Text written without spaces (Chinese, Japanese) may break between any two characters."""
    return any(unicodedata.east_asian_width(ch) in ("W", "F") for ch in word)


def _box_size(lines: list[str], font_size: int, kind: str) -> tuple[float, float]:
    """The box around wrapped text: an ellipse for speech and thought (sqrt 2 of the text block,
    so its corners stay inside), a padded rectangle for captions and sound effects."""
    bold = kind == "sfx"
    text_w = max(fonts.text_length(line, font_size, bold) for line in lines)
    text_h = len(lines) * fonts.line_step("".join(lines), font_size, bold)
    pad = font_size * 0.6
    if kind == "speech":
        return text_w * 1.42 + pad, text_h * 1.42 + pad
    if kind == "thought":  # the scalloped rim takes THOUGHT_RIM of the ellipse's short half-axis
        return text_w * 1.42 / (1 - THOUGHT_RIM) + pad, text_h * 1.42 / (1 - THOUGHT_RIM) + pad
    if kind == "caption":
        return text_w + 2 * pad, text_h + 1.4 * pad
    return text_w + pad, text_h + pad


def fit_text(
    text: str, kind: str, size: tuple[int, int], *, largest: int | None = None, text_size: int | None = None
) -> Fit:
    """The line laid out on an image of `size`: the text wraps in a box of about 40% of the
    image, shrinks to a comfortable size, then the box grows (up to most of the image), then the
    text shrinks to MIN_FONT_SIZE; only when even that does not fit are the last lines cut with
    an ellipsis (and the Fit says so). `text_size` is the preferred size of speech (pages letter
    every panel alike; by default it follows the image's size); `largest` caps the font size
    (to make room for others)."""
    width, height = size
    bold = kind == "sfx"
    if text_size is None:
        big = max(MIN_FONT_SIZE + 3, round(min(width, height) / {"sfx": 9, "caption": 24}.get(kind, 20)))
    else:
        big = max(MIN_FONT_SIZE, round(text_size * {"sfx": 3.0, "caption": 0.95}.get(kind, 1.0)))
    if largest is not None:
        big = max(MIN_FONT_SIZE, min(big, largest))
    comfortable = max(MIN_FONT_SIZE, round(big * 0.6))
    budgets = _BUDGETS[kind]
    step = max(1, (big - MIN_FONT_SIZE) // 12)
    tries = [(b, s) for b in budgets for s in range(big, comfortable - 1, -step)]
    tries += [(budgets[-1], s) for s in range(comfortable - 1, MIN_FONT_SIZE - 1, -step)]
    if tries[-1][1] != MIN_FONT_SIZE:
        tries.append((budgets[-1], MIN_FONT_SIZE))
    for split_words in (False, True):  # cutting a word in two only when nothing else fits
        for (fw, fh), font_size in tries:
            wrap_at = min(_text_width(kind, fw * width, font_size), _balanced_width(text, kind, font_size))
            lines = _wrap(text, font_size, bold, wrap_at, split_words)
            if lines is None:
                continue
            bw, bh = _box_size(lines, font_size, kind)
            if bw <= fw * width and bh <= fh * height:
                return Fit(lines, font_size, (round(bw), round(bh)))
    # even the smallest size in the largest box is too small: keep what fits, say it is cut
    fw, fh = budgets[-1]
    font_size = MIN_FONT_SIZE
    lines = _wrap(text, font_size, bold, _text_width(kind, fw * width, font_size))
    while len(lines) > 1 and _box_size(lines, font_size, kind)[1] > fh * height:
        lines = lines[:-1]
    lines[-1] = _ellipsised(lines[-1], font_size, bold, _text_width(kind, fw * width, font_size))
    bw, bh = _box_size(lines, font_size, kind)
    return Fit(lines, font_size, (min(width, round(bw)), min(height, round(bh))), truncated=True)


def _balanced_width(text: str, kind: str, font_size: int) -> float:
    """A line width that gives the text block a pleasant shape (about 2.5 wide to 1 high for a
    bubble, 4 to 1 for a caption box) instead of one long flat line; never below the longest word."""
    bold = kind == "sfx"
    total = fonts.text_length(" ".join(text.split()), font_size, bold)
    step = fonts.line_step(text, font_size, bold)
    aspect = {"caption": 4.0, "sfx": 8.0}.get(kind, 2.5)
    longest = max((fonts.text_length(word, font_size, bold) for word in text.split()), default=0.0)
    return max(float(np.sqrt(aspect * total * step)), longest, 4.0 * font_size)


def _text_width(kind: str, box_width: float, font_size: int) -> float:
    """The widest text line a box of `box_width` holds (the inverse of _box_size's width)."""
    pad = font_size * 0.6
    if kind == "speech":
        return (box_width - pad) / 1.42
    if kind == "thought":
        return (box_width - pad) * (1 - THOUGHT_RIM) / 1.42
    return box_width - (2 * pad if kind == "caption" else pad)


def _ellipsised(line: str, size: int, bold: bool, width: float) -> str:
    line = line.rstrip() + "…"
    while len(line) > 1 and fonts.text_length(line, size, bold) > width:
        line = line[:-2].rstrip() + "…"
    return line


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
    maps: np.ndarray | None,
    size: tuple[int, int],
    lines: list[LineSpec],
    *,
    rtl: bool = False,
    text_size: int | None = None,
) -> list[Bubble]:
    """Boxes and tails for the lines on an image of `size` (width, height) routed as `maps`
    ([S, h, w], characters then the background; None: nobody placed). `text_size`: the
    preferred size of the text in pixels (see fit_text).

    Captions go first, into corners (top ones, or bottom ones for narration after all the
    dialogue); then each other line in order, on space no earlier box takes (a hard rule while
    any such space exists, the text shrinking to make room), after the previous bubble in
    reading order, off other characters, near its speaker's head."""
    width, height = int(size[0]), int(size[1])
    scale = _WORK_SIDE / max(width, height)
    gw, gh = max(8, round(width * scale)), max(8, round(height * scale))
    grid = _Grid(width, height, gw, gh, max(1, round(gw / 48)))
    if maps is not None:
        labels = labels_at(maps, (gh, gw))
        background = np.asarray(maps).shape[0] - 1
    else:
        labels, background = np.zeros((gh, gw), dtype=np.int64), 0
    placed = np.zeros((gh, gw), dtype=bool)
    bubbles: list[Bubble | None] = [None] * len(lines)

    dialogue = [i for i, line in enumerate(lines) if line.kind != "caption"]
    for index, line in enumerate(lines):  # captions first: they take corners, bubbles avoid them
        if line.kind != "caption":
            continue
        closing = bool(dialogue) and index > dialogue[-1]  # narration after every line: at the foot
        corners = ["bl", "br", "tl", "tr"] if closing else ["tl", "tr", "bl", "br"]
        if rtl:
            corners = [c[0] + ("r" if c[1] == "l" else "l") for c in corners]
        bubbles[index] = _place_caption(index, line, grid, corners, placed, text_size)
        placed |= grid.cells(bubbles[index].box, margin=True)

    # the speakers' heads stay clear of every box, so that each tail can reach its speaker
    heads = np.zeros((gh, gw), dtype=bool)
    for line in lines:
        if line.kind in ("speech", "thought") and line.slot is not None and 0 <= line.slot < background:
            if (head := speaker_anchor(labels, line.slot)) is not None:
                heads[min(gh - 1, int(head[1])), min(gw - 1, int(head[0]))] = True
    heads = _dilate(heads, 4)  # about 4% of the panel round each head: room for the tails to show
    tails = np.zeros((gh, gw), dtype=bool)
    previous: tuple[float, float] | None = None
    for index in dialogue:
        line = lines[index]
        has_slot = line.slot is not None and 0 <= line.slot < background
        anchor = speaker_anchor(labels, line.slot) if has_slot else None
        own = labels == line.slot if anchor is not None else np.zeros_like(placed)
        others = (labels != background) & ~own
        if line.kind == "sfx":  # a sound effect is part of the picture: it may cross the art, not bubbles
            others = np.zeros_like(others)
        best = None  # (cost, fit, bw, bh, score, warning)
        preferred = None
        for fit in _fits(line.text, line.kind, (width, height), text_size):
            preferred = preferred or fit.font_size
            bw = min(gw, max(1, int(np.ceil(fit.size[0] / grid.sx))))
            bh = min(gh, max(1, int(np.ceil(fit.size[1] / grid.sy))))
            score = _score(own, others, placed, bw, bh, anchor, previous, rtl, grid.margin)
            score += 30.0 * (_window_sums(heads, bh, bw) > 0) + 40.0 * np.minimum(1, _window_sums(tails, bh, bw) / 3)
            free = _window_sums(placed, bh, bw) == 0
            shrink = 30.0 * (1 - fit.font_size / preferred)  # smaller text only where it buys a better place
            if free.any():
                score = np.where(free, score, np.inf)
                candidate = (float(score.min()) + shrink, fit, bw, bh, score, "")
            else:
                warning = "it overlaps another bubble: the panel has no free space left"
                candidate = (float(score.min()) + shrink + 1e6, fit, bw, bh, score, warning)
            if best is None or candidate[0] < best[0]:
                best = candidate
        _, fit, bw, bh, score, warning = best
        y, x = np.unravel_index(int(np.argmin(score)), score.shape)
        box = grid.box(x, y, bw, bh)
        box = _nudged(box, line.offset, width, height)
        tail = None
        if anchor is not None and line.kind in ("speech", "thought"):
            tail = (round(anchor[0] * grid.sx), round(anchor[1] * grid.sy))
            tails |= _segment(((box[0] + box[2]) / 2 / grid.sx, (box[1] + box[3]) / 2 / grid.sy), anchor, gw, gh)
        if fit.truncated:
            warning = "it does not fit even at the smallest text size, so it is cut"
        bubbles[index] = Bubble(
            index, line.kind, box, tail, fit.lines, fit.font_size, line.kind == "sfx", anchor is not None, warning
        )
        placed |= grid.cells(box, margin=True)
        previous = ((box[0] + box[2]) / 2 / grid.sx, (box[1] + box[3]) / 2 / grid.sy)
    return [b for b in bubbles if b is not None]


@dataclass
class _Grid:
    """The coarse grid placement searches: gw x gh cells over a width x height image."""

    width: int
    height: int
    gw: int
    gh: int
    margin: int  # cells kept free around a box

    @property
    def sx(self) -> float:
        return self.width / self.gw

    @property
    def sy(self) -> float:
        return self.height / self.gh

    def box(self, x: int, y: int, bw: int, bh: int) -> tuple[int, int, int, int]:
        return (
            round(x * self.sx),
            round(y * self.sy),
            min(self.width, round((x + bw) * self.sx)),
            min(self.height, round((y + bh) * self.sy)),
        )

    def cells(self, box, margin: bool = False) -> np.ndarray:
        return _cells(box, self.sx, self.sy, self.gw, self.gh, self.margin if margin else 0)


def _fits(text: str, kind: str, size: tuple[int, int], text_size: int | None):
    """The line's layouts from the preferred one down to the smallest text: a crowded panel
    takes the largest one that finds free space."""
    fit = fit_text(text, kind, size, text_size=text_size)
    yield fit
    while fit.font_size > MIN_FONT_SIZE:
        cap = max(MIN_FONT_SIZE, fit.font_size - max(1, fit.font_size // 8))
        smaller = fit_text(text, kind, size, largest=cap, text_size=text_size)
        if smaller.font_size >= fit.font_size:
            return
        fit = smaller
        yield fit


def _place_caption(
    index: int, line: LineSpec, grid: _Grid, corners: list[str], placed: np.ndarray, text_size: int | None
) -> Bubble:
    """A caption box in the first corner with room, the text shrinking until one has room."""
    width, height = grid.width, grid.height
    pad = round(min(width, height) * 0.02)
    fallback = None
    for fit in _fits(line.text, "caption", (width, height), text_size):
        bw, bh = fit.size
        for corner in corners:
            x0 = pad if corner[1] == "l" else width - pad - bw
            y0 = pad if corner[0] == "t" else height - pad - bh
            box = (max(0, x0), max(0, y0), max(0, x0) + bw, max(0, y0) + bh)
            warning = "it does not fit even at the smallest text size, so it is cut" if fit.truncated else ""
            if not (grid.cells(box) & placed).any():
                return Bubble(index, "caption", _nudged(box, line.offset, width, height), None, fit.lines,
                              fit.font_size, False, False, warning)  # fmt: skip
            fallback = Bubble(index, "caption", box, None, fit.lines, fit.font_size, False, False,
                              warning or "it overlaps another caption: the panel has no free corner left")  # fmt: skip
    fallback.box = _nudged(fallback.box, line.offset, width, height)
    return fallback


def _score(own, others, placed, bw, bh, anchor, previous, rtl: bool, margin: int) -> np.ndarray:
    """The cost of every top-left cell for a bw x bh bubble (lower is better). Covering another
    character or an earlier bubble costs most; then a tail crossing an earlier bubble; then
    breaking reading order; then distance from the speaker's head and covering the speaker."""
    gh, gw = own.shape
    area = float(bw * bh)
    cost = 1000.0 * _window_sums(others, bh, bw) / area
    cost += 1000.0 * _window_sums(placed, bh, bw) / area
    cost += 3.0 * _window_sums(own, bh, bw) / area  # over the speaker (not the head: see heads) is fine
    ys, xs = np.indices(cost.shape, dtype=np.float64)
    # keep a small margin from the frame where the image allows it
    inner = (xs >= margin) & (ys >= margin) & (xs + bw <= gw - margin) & (ys + bh <= gh - margin)
    cost += np.where(inner, 0.0, 0.5)
    cx, cy = xs + bw / 2, ys + bh / 2
    if anchor is not None:
        ax, ay = anchor
        dx = np.maximum(np.maximum(xs - ax, ax - (xs + bw)), 0)
        dy = np.maximum(np.maximum(ys - ay, ay - (ys + bh)), 0)
        cost += 30.0 * np.hypot(dx, dy) / np.hypot(gw, gh)  # far from the head: a long, hard-to-follow tail
        cost += np.where(ys + bh > ay, 6.0, 0.0)  # a bubble reads best above the head, its tail showing
        if placed.any():  # a tail across an earlier bubble would hide its text
            hits = np.zeros_like(cost)
            for t in np.linspace(0.5, 1.0, 9):
                px = np.clip((cx + (ax - cx) * t).astype(int), 0, gw - 1)
                py = np.clip((cy + (ay - cy) * t).astype(int), 0, gh - 1)
                hits += placed[py, px]
            cost += 40.0 * hits / 9
    else:
        cost += 2.0 * ys / gh  # nobody to point at: near the top
    if previous is not None:
        px, py = previous
        earlier_row = cy < py - bh / 2
        same_row = np.abs(cy - py) <= bh / 2
        backwards = (cx > px) if rtl else (cx < px)
        cost += np.where(earlier_row | (same_row & backwards), 40.0, 0.0)  # reading order beats closeness
    return cost


def _segment(start, end, gw: int, gh: int) -> np.ndarray:
    """The cells a straight tail from `start` to `end` (cell coordinates) crosses."""
    mask = np.zeros((gh, gw), dtype=bool)
    steps = int(max(abs(end[0] - start[0]), abs(end[1] - start[1]))) * 2 + 2
    for t in np.linspace(0.0, 1.0, steps):
        x, y = start[0] + (end[0] - start[0]) * t, start[1] + (end[1] - start[1]) * t
        mask[min(gh - 1, max(0, int(y))), min(gw - 1, max(0, int(x)))] = True
    return mask


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
    for bubble in bubbles:  # tails first: one crossing another bubble goes under it, not over its text
        if bubble.tail is not None and bubble.kind in ("speech", "thought"):
            _draw_tail(draw, bubble, outline)
    for bubble in bubbles:
        if bubble.kind == "caption":
            draw.rectangle(bubble.box, fill=CAPTION_PAPER, outline=INK, width=outline)
        elif bubble.kind == "speech":
            draw.ellipse(bubble.box, fill=PAPER, outline=INK, width=outline)
        elif bubble.kind == "thought":  # a cloud: a scalloped rim
            _scallops(draw, bubble.box, outline)
        _draw_text(draw, bubble, outline)
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
        for k, r in ((0.3, 0.16), (0.6, 0.11), (0.85, 0.07)):
            px, py = ex + (tx - ex) * k, ey + (ty - ey) * k
            rad = max(3.0, min(rx, ry) * r)
            draw.ellipse((px - rad, py - rad, px + rad, py + rad), fill=PAPER, outline=INK, width=outline)
        return
    points = [(inner[0] + nx, inner[1] + ny), (tx, ty), (inner[0] - nx, inner[1] - ny)]
    draw.polygon(points, fill=PAPER, outline=INK, width=outline)


def _scallops(draw: ImageDraw.ImageDraw, box, outline: int) -> None:
    """A cloud inside the box: circles along an inner ellipse, then that ellipse filled over
    their inner halves, so only the outer arcs show and the middle is clear for the text."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    rad = max(3.0, min(rx, ry) * THOUGHT_RIM)
    ax, ay = max(1.0, rx - rad), max(1.0, ry - rad)
    perimeter = np.pi * (3 * (ax + ay) - np.sqrt((3 * ax + ay) * (ax + 3 * ay)))
    count = max(8, int(perimeter / (1.5 * rad)))
    for k in range(count):
        a = 2 * np.pi * k / count
        px, py = cx + ax * np.cos(a), cy + ay * np.sin(a)
        draw.ellipse((px - rad, py - rad, px + rad, py + rad), fill=PAPER, outline=INK, width=outline)
    draw.ellipse((cx - ax, cy - ay, cx + ax, cy + ay), fill=PAPER)


def _draw_text(draw: ImageDraw.ImageDraw, bubble: Bubble, outline: int) -> None:
    x0, y0, x1, y1 = bubble.box
    step = fonts.line_step("".join(bubble.lines), bubble.font_size, bubble.bold)
    top = (y0 + y1) / 2 - len(bubble.lines) * step / 2
    for i, line in enumerate(bubble.lines):
        xy = ((x0 + x1) / 2, top + i * step)
        if bubble.kind == "sfx":
            fonts.draw_line(draw, xy, line, bubble.font_size, bold=True, fill=(230, 40, 30), align="centre",
                            stroke_width=outline, stroke_fill=INK)  # fmt: skip
        else:
            fonts.draw_line(draw, xy, line, bubble.font_size, fill=INK, align="centre")
