"""Comic pages (issue 16): layouts give the right page count and reading order, RTL included."""

import pytest
from PIL import Image

from anystory.pages import LAYOUTS, TEMPLATES, PageItem, TitlePage, compose_pages, page_slots

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 200, 20), (200, 30, 200), (20, 200, 200), (120, 60, 10)]


def items(count: int, size=(200, 300)) -> list[PageItem]:
    return [PageItem(Image.new("RGB", size, COLOURS[i % len(COLOURS)]), f"caption {i}") for i in range(count)]


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
