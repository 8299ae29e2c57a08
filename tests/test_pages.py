"""Comic pages (issue 16): layouts give the right page count and reading order, RTL included."""

import pytest
from PIL import Image

from anystory.pages import (
    LAYOUTS,
    TEMPLATES,
    PageItem,
    TitlePage,
    cell_boxes,
    compose_pages,
    crop_window,
    page_slots,
    resolve_fit,
    shown_size,
)

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 200, 20), (200, 30, 200), (20, 200, 200), (120, 60, 10)]


def items(count: int, size=(200, 300), fit: str = "auto") -> list[PageItem]:
    return [PageItem(Image.new("RGB", size, COLOURS[i % len(COLOURS)]), f"caption {i}", fit) for i in range(count)]


def cell_centre(page: Image.Image, cell, margin=60, numbers=40):
    inner_w, inner_h = page.width - 2 * margin, page.height - 2 * margin - numbers
    return (margin + round((cell[0] + cell[2]) / 2 * inner_w), margin + round((cell[1] + cell[3]) / 2 * inner_h))


@pytest.mark.parametrize("layout, count, pages", [
    ("grid", 9, 3), ("tiers", 9, 2), ("splash", 4, 1), ("splash", 5, 2), ("book", 3, 3), ("webtoon", 7, 1),
    ("manga", 5, 2),
])  # fmt: skip
def test_page_count(layout, count, pages):
    assert len(page_slots(count, layout)) == pages
    assert len(compose_pages(items(count), layout)) == pages
    assert len(compose_pages(items(count), layout, title=TitlePage("A walk"))) == pages + 1


@pytest.mark.parametrize("layout", ["grid", "tiers", "splash", "manga", "book"])
def test_panels_are_in_reading_order(layout):
    count = len(TEMPLATES[layout]) + 1
    pages = compose_pages(items(count), layout)
    seen = []
    for page, slots in zip(pages, page_slots(count, layout)):
        for cell, index in zip(TEMPLATES[layout], slots):
            seen.append((page.getpixel(cell_centre(page, cell)), index))
    assert seen == [(COLOURS[i], i) for i in range(count)]


def test_manga_reads_right_to_left():
    [page] = compose_pages(items(2), "manga")
    right, left = (
        page.getpixel((page.width * 3 // 4, page.height // 4)),
        page.getpixel((page.width // 4, page.height // 4)),
    )
    assert right == COLOURS[0] and left == COLOURS[1]


def test_webtoon_stacks_panels_top_to_bottom_and_crop_or_fit_fills_the_cell():
    [strip] = compose_pages(items(3, size=(400, 200)), "webtoon")
    assert strip.width == 800 and strip.height > 3 * 380
    ys = [strip.getpixel((400, y)) for y in range(strip.height)]
    first = [ys.index(c) for c in COLOURS[:3]]
    assert first == sorted(first)
    wide = [PageItem(Image.new("RGB", (1000, 100), COLOURS[0]), fit="fit")]
    [page] = compose_pages(wide, "book")
    assert page.getpixel((page.width // 2, 120)) == (255, 255, 255)  # fit: paper above the wide picture
    [page] = compose_pages([PageItem(wide[0].image, fit="crop")], "book")
    assert page.getpixel((page.width // 2, 120)) == COLOURS[0]  # crop: the cell is filled


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="unknown layout"):
        compose_pages(items(1), "spiral")
    with pytest.raises(ValueError, match="at least one panel"):
        page_slots(0, "grid")
    assert set(LAYOUTS) >= {"grid", "tiers", "splash", "book", "webtoon", "manga"}


INK = (20, 20, 20)
PAPER = (255, 255, 255)


def book_cell(page_size=(1240, 1754), margin=60, numbers=40, gutter=24):
    """The one cell of a picture-book page, in page pixels (as compose_pages lays it out)."""
    inner_w, inner_h = page_size[0] - 2 * margin, page_size[1] - 2 * margin - numbers
    return margin, margin, margin + inner_w, margin + round(0.82 * inner_h) - gutter // 2


def test_fit_is_a_smaller_bordered_panel_centred_in_its_cell():
    wide = PageItem(Image.new("RGB", (1000, 250), COLOURS[0]), fit="fit")
    [page] = compose_pages([wide], "book", border=4)
    x0, y0, x1, y1 = book_cell()
    column = [page.getpixel((page.width // 2, y)) for y in range(y0 - 4, y1 + 4)]
    red = [y0 - 4 + k for k, c in enumerate(column) if c == COLOURS[0]]
    top, bottom = red[0], red[-1] + 1
    assert bottom - top == round((x1 - x0) * 250 / 1000)  # the whole picture, scaled to the cell's width
    assert abs((top - y0) - (y1 - bottom)) <= 1  # centred: equal paper above and below
    # the border frames the picture, not the cell: ink just outside the picture, paper at the cell's edge
    assert page.getpixel((page.width // 2, top - 2)) == INK and page.getpixel((page.width // 2, bottom + 1)) == INK
    assert page.getpixel((page.width // 2, y0 - 2)) == PAPER and page.getpixel((page.width // 2, y1 + 1)) == PAPER
    assert page.getpixel((x0 - 2, (top + bottom) // 2)) == INK  # full width: the sides are framed at the cell
    # nothing but paper between the frame and the cell (the letterbox is the page, not a grey band)
    assert set(column[4 : top - y0]) == {PAPER}


def test_crop_fills_the_cell_and_auto_crops_only_close_shapes():
    cell = (548, 785)  # a 2x2 grid cell on an A4 page
    assert resolve_fit("auto", (512, 768), cell) == "crop"  # 0.67 against 0.70: a crop cuts little
    assert resolve_fit("auto", (512, 512), cell) == "fit"  # square in a tall cell: a crop would cut 30%
    assert resolve_fit("auto", (1024, 512), (1120, 519)) == "crop"  # a wide picture in the wide tier
    assert resolve_fit("crop", (512, 512), cell) == "crop" and resolve_fit("fit", (512, 768), cell) == "fit"
    with pytest.raises(ValueError, match="fit must be one of"):
        resolve_fit("stretch", (1, 1), cell)
    [page] = compose_pages(items(1, size=(1000, 250), fit="crop"), "book")
    x0, y0, x1, y1 = book_cell()
    assert page.getpixel((page.width // 2, y0 + 2)) == COLOURS[0]  # crop: the cell is filled
    assert page.getpixel((page.width // 2, y0 - 2)) == INK  # and framed at the cell
    # auto on a picture-book page: the wide picture is fitted, the close one cropped
    [fitted] = compose_pages(items(1, size=(1000, 250)), "book")
    [cropped] = compose_pages(items(1, size=(1000, 1150)), "book")
    assert fitted.getpixel((page.width // 2, y0 + 2)) == PAPER
    assert cropped.getpixel((page.width // 2, y0 + 2)) == COLOURS[0]


def test_a_crop_keeps_the_bubbles_or_auto_fits_instead():
    size, cell = (800, 600), (600, 600)  # a 4:3 picture in a square cell: a crop shows 600 of 800 columns
    assert crop_window(size, cell) == (100.0, 0.0, 700.0, 600.0)  # centred
    assert crop_window(size, cell, keep=(20, 10, 300, 200)) == (20.0, 0.0, 620.0, 600.0)  # moved to keep it
    assert crop_window(size, cell, keep=(700, 10, 790, 200))[2] == 790.0  # as little as it takes
    assert resolve_fit("auto", size, cell, keep=(20, 10, 300, 200)) == "fit"  # 1.33: too far apart anyway
    near = (660, 600)  # 1.21 apart: auto crops, keeping the bubble box, unless the box is too wide for it
    assert resolve_fit("auto", size, near, keep=(0, 0, 300, 100)) == "crop"
    assert resolve_fit("auto", size, near, keep=(0, 0, 790, 100)) == "fit"
    picture = Image.new("RGB", size, COLOURS[2])
    picture.paste(COLOURS[0], (0, 0, 120, 120))  # "a bubble" in the top-left corner
    [page] = compose_pages([PageItem(picture, fit="crop", keep=(0, 0, 120, 120))], "book")
    x0, y0, _, _ = book_cell()
    assert page.getpixel((x0 + 5, y0 + 5)) == COLOURS[0]  # the corner bubble survived the crop
    [page] = compose_pages([PageItem(picture, fit="crop")], "book")
    assert page.getpixel((x0 + 5, y0 + 5)) == COLOURS[2]  # centred, it would have been cut


def test_shown_size_is_the_size_the_page_draws_a_panel_at():
    """Bubbles are drawn on the picture at the size its page shows it (sharp, lettered alike)."""
    [first, second, *_] = cell_boxes("grid")
    assert (first[2] - first[0], first[3] - first[1]) == (548, 785)
    assert shown_size((512, 512), 0, 4, "grid") == (548, 548)  # auto: too far apart, fitted to the width
    assert shown_size((512, 512), 0, 4, "grid", "crop") == (785, 785)  # covers the cell
    assert shown_size((512, 768), 1, 4, "grid") == (548, 822)  # close shapes: cropped, covering the cell
    assert shown_size((256, 128), 2, 3, "webtoon") == (752, 376)  # the strip's width
    [wide] = cell_boxes("tiers")[2:3]
    assert shown_size((1024, 512), 2, 5, "tiers") == (1120, 560) and wide[2] - wide[0] == 1120
