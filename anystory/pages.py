"""Comic and picture-book pages: panels laid out in cells, with gutters, borders, page numbers and
an optional title page with the cast (issue 16). Every export of pages (PDF, CBZ, PNG pages) is
made from these pictures. Pillow only; files are written by render.py's atomic exports.

A layout is a page template (cells as fractions of the area inside the margins, in reading
order) repeated as often as the panels need; "webtoon" is one tall strip instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from . import fonts

Box = tuple[float, float, float, float]

# Cells of one page as (x0, y0, x1, y1) fractions, in reading order.
TEMPLATES: dict[str, list[Box]] = {
    "grid": [(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0, 0.5, 0.5, 1), (0.5, 0.5, 1, 1)],
    "tiers": [(0, 0, 0.5, 1 / 3), (0.5, 0, 1, 1 / 3), (0, 1 / 3, 1, 2 / 3), (0, 2 / 3, 0.5, 1), (0.5, 2 / 3, 1, 1)],
    "splash": [(0, 0, 1, 0.62), (0, 0.62, 1 / 3, 1), (1 / 3, 0.62, 2 / 3, 1), (2 / 3, 0.62, 1, 1)],
    "book": [(0, 0, 1, 0.82)],  # the caption goes below, in the rest of the page
    # manga: read right to left, top to bottom
    "manga": [(0.5, 0, 1, 0.5), (0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1), (0, 0.5, 0.5, 1)],
}
LAYOUTS = ("grid", "tiers", "splash", "book", "webtoon", "manga")
LAYOUT_NAMES = {
    "grid": "2x2 grid",
    "tiers": "three tiers",
    "splash": "splash + strip",
    "book": "picture book (one panel a page, caption below)",
    "webtoon": "vertical scroll strip (webtoon)",
    "manga": "manga (right to left)",
}
RTL_LAYOUTS = ("manga",)
PAGE_SIZE = (1240, 1754)  # A4 at 150 dpi
WEBTOON_WIDTH = 800
WEBTOON_GUTTER = 24
LETTERING = {"page": 19, "webtoon": 20}  # px of a bubble's text on a 1240 px page / an 800 px strip
INK = (20, 20, 20)


FITS = ("auto", "crop", "fit")
# "auto" crops a picture to fill its cell when the two shapes are this close (a crop then cuts at
# most a fifth of one side); further apart, a crop would cut characters and bubbles, so the whole
# picture is shown as a smaller bordered panel centred in its cell.
CROP_LIMIT = 1.25


@dataclass
class PageItem:
    """One panel on a page: its picture (bubbles already drawn), the text under it in a picture
    book, and how it meets its cell: "crop" fills the cell (cutting what lies outside), "fit" shows
    the whole picture as a bordered panel centred in the cell, "auto" crops when the shapes are
    close (CROP_LIMIT) and the crop keeps `keep`, else fits. `keep` is a box of the picture (its
    bubbles) a crop must not cut."""

    image: Image.Image
    caption: str = ""
    fit: str = "auto"
    keep: tuple[int, int, int, int] | None = None


@dataclass
class TitlePage:
    title: str
    cast: list[tuple[str, Image.Image]] = field(default_factory=list)  # name, picture


def page_slots(count: int, layout: str) -> list[list[int]]:
    """Which panels go on each page, in the order of the page's cells (the reading order)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if count < 1:
        raise ValueError("pages need at least one panel with an image")
    if layout == "webtoon":
        return [list(range(count))]
    per_page = len(TEMPLATES[layout])
    return [list(range(first, min(first + per_page, count))) for first in range(0, count, per_page)]


def _drawable(text: str) -> str:
    """The text without characters no installed font has (a title's emoji): pages never fail
    on a title or a caption, lines are checked when they are saved."""
    missing = set(fonts.missing_glyphs(text))
    return "".join(ch for ch in text if ch not in missing)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int) -> None:
    """One line centred on xy[0], its top at xy[1], each character in a font that has it."""
    fonts.draw_line(draw, xy, text, size, fill=INK, align="centre")


def resolve_fit(fit: str, size: tuple[int, int], cell: tuple[int, int], keep=None) -> str:
    """Crop or fit (see PageItem) for a picture of `size` in a cell of `cell` (see PageItem)."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if fit != "auto":
        return fit
    ratio = (size[0] / size[1]) / (cell[0] / cell[1])
    if max(ratio, 1 / ratio) > CROP_LIMIT:
        return "fit"
    window = crop_window(size, cell, keep)
    if keep is not None and not _inside(keep, window):
        return "fit"
    return "crop"


def crop_window(size: tuple[int, int], cell: tuple[int, int], keep=None) -> tuple[float, float, float, float]:
    """The part of a picture of `size` a crop to the cell's shape shows, in the picture's pixels:
    centred, moved (as little as it takes) to hold the `keep` box where that box fits in it."""
    width, height = size
    scale = max(cell[0] / width, cell[1] / height)
    w, h = cell[0] / scale, cell[1] / scale
    left, top = (width - w) / 2, (height - h) / 2
    if keep is not None:
        left = _shifted(left, w, keep[0], keep[2], width)
        top = _shifted(top, h, keep[1], keep[3], height)
    return (left, top, left + w, top + h)


def _shifted(start: float, length: float, low: float, high: float, total: float) -> float:
    if high - low <= length:
        start = min(max(start, high - length), low)
    else:  # the box does not fit: centre on it
        start = (low + high - length) / 2
    return min(max(0.0, start), total - length)


def _inside(box, window) -> bool:
    x0, y0, x1, y1 = window
    return box[0] >= x0 - 0.5 and box[1] >= y0 - 0.5 and box[2] <= x1 + 0.5 and box[3] <= y1 + 0.5


def _place(item: PageItem, width: int, height: int, paper) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The cell: the picture scaled to cover it and cropped (crop), or scaled to fit inside it and
    centred on the paper (fit); and where the picture lies in the cell (what the border frames)."""
    image = item.image.convert("RGB")
    fit = resolve_fit(item.fit, image.size, (width, height), item.keep)
    if fit == "fit":
        scale = min(width / image.width, height / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        cell = Image.new("RGB", (width, height), paper)
        left, top = (width - size[0]) // 2, (height - size[1]) // 2
        cell.paste(image.resize(size, Image.LANCZOS), (left, top))
        return cell, (left, top, left + size[0], top + size[1])
    window = crop_window(image.size, (width, height), item.keep)
    cell = image.resize((width, height), Image.LANCZOS, box=window)
    return cell, (0, 0, width, height)


def _wrap(text: str, size: int, width: int) -> list[str]:
    lines, line = [], ""
    for word in _drawable(text).split():
        candidate = f"{line} {word}" if line else word
        if fonts.text_length(candidate, size) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


def cell_boxes(
    layout: str, page_size: tuple[int, int] = PAGE_SIZE, margin: int = 60, gutter: int = 24, numbers: bool = True
) -> list[tuple[int, int, int, int]]:
    """The cells of one page of a layout in page pixels (x0, y0, x1, y1), in reading order."""
    width, height = page_size
    inner_w, inner_h = width - 2 * margin, height - 2 * margin - (40 if numbers else 0)
    boxes = []
    for cell in TEMPLATES[layout]:
        boxes.append((
            margin + round(cell[0] * inner_w) + (gutter // 2 if cell[0] > 0 else 0),
            margin + round(cell[1] * inner_h) + (gutter // 2 if cell[1] > 0 else 0),
            margin + round(cell[2] * inner_w) - (gutter // 2 if cell[2] < 1 else 0),
            margin + round(cell[3] * inner_h) - (gutter // 2 if cell[3] < 1 else 0),
        ))  # fmt: skip
    return boxes


def shown_size(image_size: tuple[int, int], index: int, count: int, layout: str, fit: str = "auto") -> tuple[int, int]:
    """The size a panel's picture is shown at on its page: panel `index` of `count` in `layout`
    (scaled to cover its cell when it will be cropped, to fit inside it otherwise; the strip's
    width in a webtoon). Bubbles are placed at this size, so lettering is the same size on
    every panel of a page."""
    width, height = image_size
    if layout == "webtoon":
        scale = (WEBTOON_WIDTH - 2 * WEBTOON_GUTTER) / width
    else:
        page_of = page_slots(count, layout)
        cell_index = next(k for page in page_of for k, i in enumerate(page) if i == index)
        x0, y0, x1, y1 = cell_boxes(layout)[cell_index]
        cell = (x1 - x0, y1 - y0)
        cover = resolve_fit(fit, image_size, cell) == "crop"
        scale = (max if cover else min)(cell[0] / width, cell[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def compose_pages(
    items: list[PageItem],
    layout: str = "grid",
    *,
    title: TitlePage | None = None,
    page_size: tuple[int, int] = PAGE_SIZE,
    margin: int = 60,
    gutter: int = 24,
    border: int = 4,
    numbers: bool = True,
    paper=(255, 255, 255),
) -> list[Image.Image]:
    """The pages of a story in a layout (see LAYOUTS): an optional title page with the cast,
    then the panels in reading order, each in a bordered cell, page numbers at the foot."""
    slots = page_slots(len(items), layout)
    pages: list[Image.Image] = []
    if title is not None:
        pages.append(_title_page(title, page_size if layout != "webtoon" else (WEBTOON_WIDTH, WEBTOON_WIDTH), paper))
    if layout == "webtoon":
        pages.append(_webtoon(items, gutter, border, paper))
        return pages
    width, height = page_size
    inner_w = width - 2 * margin
    for page_index, indices in enumerate(slots):
        page = Image.new("RGB", page_size, paper)
        draw = ImageDraw.Draw(page)
        for (x0, y0, x1, y1), index in zip(cell_boxes(layout, page_size, margin, gutter, numbers), indices):
            item = items[index]
            cell, (px0, py0, px1, py1) = _place(item, x1 - x0, y1 - y0, paper)
            page.paste(cell, (x0, y0))
            if border:  # round the picture: a fitted picture is a smaller panel centred in its cell
                frame = (x0 + px0 - border, y0 + py0 - border, x0 + px1 + border - 1, y0 + py1 + border - 1)
                draw.rectangle(frame, outline=INK, width=border)
            if layout == "book" and item.caption:
                size = max(14, width // 40)
                step = round(size * 1.3)
                for k, line in enumerate(_wrap(item.caption, size, inner_w)[: max(1, (height - y1 - 110) // step)]):
                    _text(draw, (width / 2, y1 + 30 + k * step), line, size)
        if numbers:
            number = str(len(pages) + 1)
            _text(draw, (width / 2, height - margin / 2 - 20), number, max(12, width // 60))
        pages.append(page)
    return pages


def _webtoon(items: list[PageItem], gutter: int, border: int, paper) -> Image.Image:
    """One tall strip: every panel at the strip's width, one under the other."""
    width = WEBTOON_WIDTH
    pictures = []
    for item in items:
        image = item.image.convert("RGB")
        inner = width - 2 * gutter
        pictures.append(image.resize((inner, max(1, round(image.height * inner / image.width))), Image.LANCZOS))
    height = sum(p.height for p in pictures) + gutter * (len(pictures) * 3 + 1)
    strip = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(strip)
    y = gutter
    for picture in pictures:
        strip.paste(picture, (gutter, y))
        if border:
            frame = (gutter - border, y - border, gutter + picture.width + border - 1, y + picture.height + border - 1)
            draw.rectangle(frame, outline=INK, width=border)
        y += picture.height + 3 * gutter  # webtoons breathe: wide gaps between panels
    return strip


def _title_page(title: TitlePage, size: tuple[int, int], paper) -> Image.Image:
    """The story's title, large, and its cast: each character's picture with the name under it."""
    width, height = size
    page = Image.new("RGB", size, paper)
    draw = ImageDraw.Draw(page)
    size = max(24, width // 14)
    y = height // 6
    for line in _wrap(title.title, size, int(width * 0.85)):
        _text(draw, (width / 2, y), line, size)
        y += round(size * 1.25)
    if title.cast:
        names = max(12, width // 45)
        _text(draw, (width / 2, y + 30), "Cast", names)
        per_row = min(4, len(title.cast))
        side = min((width - 120) // per_row - 30, height // 5)
        top = y + 30 + round(names * 2)
        for k, (name, picture) in enumerate(title.cast):
            row, column = divmod(k, per_row)
            count = min(per_row, len(title.cast) - row * per_row)
            left = (width - count * (side + 30) + 30) // 2 + column * (side + 30)
            y0 = top + row * (side + names * 3)
            page.paste(_place(PageItem(picture, fit="fit"), side, side, paper)[0], (left, y0))
            draw.rectangle((left, y0, left + side - 1, y0 + side - 1), outline=INK, width=2)
            _text(draw, (left + side / 2, y0 + side + 8), _drawable(name), names)
    return page
