"""Inspect and export (PRODUCT.md steps 3-4): overlays, recorded routes, layouts, files."""

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anystory.render import (
    BACKGROUND_COLOUR,
    export_cbz,
    export_pdf,
    export_png,
    load_route_maps,
    overlay,
    page_grid,
    palette,
    record_grids,
    record_sites,
    record_steps,
    route_maps_bytes,
    safe_filename,
    select_route_maps,
    strip,
)

GREY = (100, 100, 100)


def write_route_maps(path, final, record=None):
    """What storage does with a version's routes: the bytes, written to a file."""
    path.write_bytes(route_maps_bytes(final, record))


def one_hot(labels, slots: int) -> np.ndarray:
    """[h, w] slot indices -> one-hot [S, h, w] bool."""
    labels = np.asarray(labels)
    return np.moveaxis(np.eye(slots, dtype=bool)[labels], -1, 0)


def three_regions(h: int = 8, w: int = 8) -> np.ndarray:
    """Character 0 on the left half, character 1 top right, background bottom right."""
    labels = np.full((h, w), 2)
    labels[:, : w // 2] = 0
    labels[: h // 2, w // 2 :] = 1
    return one_hot(labels, 3)


def grey_image(size=(64, 64), colour=GREY) -> Image.Image:
    return Image.new("RGB", size, colour)


def blend(base, colour, opacity=0.45):
    return np.array(base) * (1 - opacity) + np.array(colour) * opacity


# -- palette ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 3, 7, 14, 15, 60])
def test_palette_gives_n_distinct_colours_none_of_them_the_background(n):
    colours = palette(n)
    assert len(colours) == n
    assert len(set(colours)) == n
    assert BACKGROUND_COLOUR not in colours
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colours)


def test_palette_is_stable_and_rejects_negative_sizes():
    assert palette(5) == palette(9)[:5]
    with pytest.raises(ValueError):
        palette(-1)


# -- overlay ---------------------------------------------------------------------------------------


def test_overlay_size_is_image_plus_legend():
    image = grey_image((96, 64))
    with_legend = overlay(image, three_regions(), ["Ann", "Bob"])
    assert with_legend.mode == "RGB"
    assert with_legend.width == 96 and with_legend.height > 64
    without = overlay(image, three_regions(), ["Ann", "Bob"], legend=False)
    assert without.size == (96, 64)
    assert np.array_equal(np.asarray(with_legend)[:64], np.asarray(without))


def test_overlay_tints_character_regions_and_leaves_the_background():
    colours = palette(2)
    out = np.asarray(overlay(grey_image(), three_regions(), ["Ann", "Bob"], legend=False)).astype(float)
    # inside regions, away from the outlines
    assert np.abs(out[32, 12] - blend(GREY, colours[0])).max() <= 1
    assert np.abs(out[12, 48] - blend(GREY, colours[1])).max() <= 1
    assert np.array_equal(out[48:, 40:], np.full((16, 24, 3), GREY))  # background untouched
    assert not np.array_equal(out[32, 12], out[12, 48])


def test_overlay_hatches_the_background_and_draws_only_the_characters_asked_for():
    image = grey_image()
    maps = three_regions(64, 64)  # at the image's own size: masks index its pixels
    plain = np.asarray(image).astype(int)
    hatched = np.asarray(overlay(image, maps, ["Ann", "Bob"], legend=False, hatch_background=True)).astype(int)
    background = maps[2]
    changed = np.any(hatched != plain, axis=-1)
    assert 0.05 < changed[background.astype(bool)].mean() < 0.5  # thin lines over the background, not a fill
    only_bob = np.asarray(overlay(image, maps, ["Ann", "Bob"], legend=False, show=[1])).astype(int)
    assert np.array_equal(only_bob[maps[0].astype(bool)], plain[maps[0].astype(bool)])  # Ann hidden: untouched
    assert not np.array_equal(only_bob[maps[1].astype(bool)], plain[maps[1].astype(bool)])
    legend = overlay(image, maps, ["Ann", "Bob"], show=[1])
    assert legend.height > image.height  # the legend below lists the shown character and the background


def test_overlay_upscales_one_hot_maps_nearest_so_edges_stay_crisp():
    labels = np.array([[0, 1], [2, 2]])
    out = np.asarray(overlay(grey_image((40, 40)), one_hot(labels, 3), ["A", "B"], legend=False, outline=0))
    left, right = palette(2)
    expect = np.zeros((40, 40, 3))
    expect[:20, :20] = blend(GREY, left)
    expect[:20, 20:] = blend(GREY, right)
    expect[20:] = GREY
    assert np.abs(out - expect).max() <= 1


def test_overlay_outlines_region_borders_in_the_owner_colour():
    colours = palette(2)
    out = np.asarray(overlay(grey_image(), three_regions(), ["Ann", "Bob"], legend=False, outline=2))
    assert tuple(out[10, 31]) == colours[0]  # character 0 side of the 0|1 border
    assert tuple(out[10, 32]) == colours[1]  # character 1 side
    assert tuple(out[50, 33]) == GREY  # background side is not painted


def test_overlay_accepts_float_one_hot_and_any_grid_shape():
    maps = three_regions(3, 5).astype(np.float32)
    out = overlay(grey_image((100, 60)), maps, ["Ann", "Bob"])
    assert out.width == 100


def test_overlay_blends_soft_maps():
    colours = palette(3)
    # the no-routing baseline: every character everywhere, no background
    maps = np.ones((4, 6, 6), dtype=np.float32)
    maps[3] = 0
    out = np.asarray(overlay(grey_image(), maps, ["A", "B", "C"], legend=False)).astype(float)
    mix = np.mean(colours, axis=0)
    assert np.abs(out[30, 30] - blend(GREY, mix)).max() <= 1
    assert np.abs(out - out[0, 0]).max() <= 1  # uniform: nothing owns a region, nothing outlined
    # half-and-half between a character and the background: half the tint
    half = np.zeros((2, 4, 4), dtype=np.float32)
    half[:] = 0.5
    out = np.asarray(overlay(grey_image(), half, ["A"], legend=False)).astype(float)
    assert np.abs(out[30, 30] - blend(GREY, colours[0], 0.45 * 0.5)).max() <= 1


def test_overlay_soft_maps_are_upscaled_smoothly():
    maps = np.zeros((2, 2, 2), dtype=np.float32)
    maps[0, :, 0] = 1.0  # character on the left column, background on the right
    maps[1, :, 1] = 1.0
    maps[0, 0, 0] = 0.5  # not one-hot any more
    maps[1, 0, 0] = 0.5
    out = np.asarray(overlay(grey_image(), maps, ["A"], legend=False, outline=0)).astype(float)
    row = out[48, :, 0]
    distinct = len(np.unique(np.round(row)))
    assert distinct > 3  # a ramp, not a step


def test_legend_shows_every_name():
    image = grey_image((160, 80))
    a = np.asarray(overlay(image, three_regions(), ["Ann", "Bob"]))
    b = np.asarray(overlay(image, three_regions(), ["Ann", "Zed"]))
    c = np.asarray(overlay(image, three_regions(), ["Xyz", "Bob"]))
    assert np.array_equal(a[:80], b[:80])
    assert not np.array_equal(a[80:], b[80:])
    assert not np.array_equal(a[80:], c[80:])
    legend = a[80:]
    for colour in palette(2) + [BACKGROUND_COLOUR]:  # a swatch per entry
        assert (legend == colour).all(axis=-1).sum() >= 9


def test_legend_wraps_onto_more_rows_for_many_names():
    names = [f"Character number {i}" for i in range(12)]
    maps = one_hot(np.arange(13).repeat(5)[:64].reshape(8, 8) % 13, 13)
    few = overlay(grey_image((200, 100)), three_regions(), ["A", "B"])
    many = overlay(grey_image((200, 100)), maps, names)
    assert many.width == 200 and many.height > few.height


@pytest.mark.parametrize(
    "names",
    [
        ["🐶 Rex", 'Ann "the brave"'],
        ["O'Brien", "日本語の名前"],
        ["line\nbreak", "tab\there\x00nul"],
        ["\ud800 lone surrogate", "عربي"],
        ["", "x" * 500],
        ["👩‍👩‍👧 family", "Zoë ﬁ ᾯ"],
    ],
)
@pytest.mark.hostile
def test_overlay_never_crashes_on_unicode_names(names):
    out = overlay(grey_image((48, 48)), three_regions(), names)
    assert out.width == 48


def test_overlay_with_no_characters_draws_the_background_only():
    maps = np.ones((1, 4, 4), dtype=bool)
    out = overlay(grey_image(), maps, [], legend=False)
    assert np.array_equal(np.asarray(out), np.asarray(grey_image()))
    assert overlay(grey_image(), maps, []).height > 64


def test_overlay_flattens_transparent_images():
    rgba = Image.new("RGBA", (32, 32), (10, 20, 30, 0))
    out = overlay(rgba, three_regions(), ["A", "B"], legend=False)
    assert out.mode == "RGB" and out.size == (32, 32)
    assert tuple(np.asarray(out)[28, 28]) == (255, 255, 255)


@pytest.mark.hostile
def test_overlay_rejects_wrong_shapes_and_opacity():
    with pytest.raises(ValueError, match="3 slots but 3 names"):
        overlay(grey_image(), three_regions(), ["A", "B", "C"])
    with pytest.raises(ValueError, match="slots"):
        overlay(grey_image(), three_regions()[None], ["A", "B"])
    with pytest.raises(ValueError, match="opacity"):
        overlay(grey_image(), three_regions(), ["A", "B"], opacity=1.5)


# -- recorded routes -------------------------------------------------------------------------------


def entry(step, site, labels, slots=3):
    labels = np.asarray(labels)
    return {"step": step, "site": site, "grid": labels.shape, "gates": one_hot(labels, slots)}


def sample_record():
    """Steps 0-2, sites 0-2 at grids 4x4, 2x2, 4x4; slot 0 left / 1 right, except step 2."""
    left_right = np.array([[0, 0, 1, 1]] * 4)
    record = []
    for step in range(3):
        record.append(entry(step, 0, left_right if step < 2 else np.full((4, 4), 2)))
        record.append(entry(step, 1, np.array([[0, 1], [0, 1]])))
        record.append(entry(step, 2, left_right))
    return record


def test_record_lists_grids_steps_and_sites():
    record = sample_record()
    assert record_grids(record) == [(2, 2), (4, 4)]
    assert record_steps(record) == [0, 1, 2]
    assert record_sites(record) == [0, 1, 2]


def test_select_route_maps_filters_steps_and_grids():
    record = sample_record()
    all_steps = select_route_maps(record)
    assert all_steps.shape == (3, 4, 4)  # the largest grid by default
    assert np.array_equal(all_steps.sum(0), np.ones((4, 4)))
    assert np.array_equal(all_steps[0], np.array([[1, 1, 0, 0]] * 4))

    last_step_fine = select_route_maps(record, steps=(2, 3), grid=(4, 4), sites=[0])
    assert np.array_equal(last_step_fine[2], np.ones((4, 4)))

    coarse = select_route_maps(record, grid=(2, 2))
    assert coarse.shape == (3, 2, 2)
    assert np.array_equal(coarse[1], [[0, 1], [0, 1]])

    upscaled = select_route_maps(record, grid=(2, 2), out_hw=(6, 6))
    assert upscaled.shape == (3, 6, 6)
    assert np.array_equal(upscaled[0], np.array([[1, 1, 1, 0, 0, 0]] * 6))


def test_select_route_maps_takes_the_majority():
    a = np.zeros((2, 2), dtype=int)
    b = np.ones((2, 2), dtype=int)
    record = [entry(0, 0, a), entry(1, 0, b), entry(2, 0, b)]
    assert np.array_equal(select_route_maps(record)[1], np.ones((2, 2)))
    assert np.array_equal(select_route_maps(record, steps=(0, 1))[0], np.ones((2, 2)))
    # a 1-1 tie goes to the latest entry, whatever the slot order
    assert np.array_equal(select_route_maps(record[:2])[1], np.ones((2, 2)))
    assert np.array_equal(select_route_maps([record[1], record[0]])[0], np.ones((2, 2)))


def test_select_route_maps_votes_by_area_across_grids():
    fine = np.array([[0, 0, 0, 1], [0, 0, 0, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    coarse = np.array([[1, 1], [2, 2]])  # says the top-left quarter is character 1
    chosen = select_route_maps([entry(0, 0, fine), entry(0, 1, coarse)], out_hw=(2, 2))
    # top-left cell: fine votes 1.0 for slot 0, coarse votes 1.0 for slot 1 -> tie -> latest (coarse)
    assert chosen[:, 0, 0].argmax() == 1
    # top-right cell: fine votes 0.5/0.5 for slots 0/1, coarse 1.0 for 1 -> slot 1
    assert chosen[:, 0, 1].argmax() == 1
    assert np.array_equal(chosen[2, 1], [1, 1])


def test_select_route_maps_reads_batched_gates():
    a, b = one_hot(np.zeros((2, 2), dtype=int), 3), one_hot(np.full((2, 2), 2), 3)
    record = [{"step": 0, "site": 0, "grid": (2, 2), "gates": np.stack([a, b])}]
    assert select_route_maps(record)[0].all()
    assert select_route_maps(record, image_index=1)[2].all()


def test_select_route_maps_explains_an_empty_selection():
    record = sample_record()
    with pytest.raises(ValueError) as caught:
        select_route_maps(record, steps=(5, 9), grid=(8, 8))
    message = str(caught.value)
    assert "steps [5, 9)" in message and "8x8" in message
    assert "2x2, 4x4" in message and "[0, 1, 2]" in message
    with pytest.raises(ValueError, match="empty"):
        select_route_maps([])


# -- saved routes ----------------------------------------------------------------------------------


def assert_same_record(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["step"] == y["step"] and x["site"] == y["site"]
        assert tuple(x["grid"]) == tuple(y["grid"])
        assert np.asarray(x["gates"]).dtype == y["gates"].dtype
        assert np.array_equal(np.asarray(x["gates"]), y["gates"])


def test_route_maps_round_trip_exactly(tmp_path, monkeypatch):
    record = sample_record()
    record.append({"step": 3, "site": 4, "grid": (2, 2), "gates": np.ones((3, 2, 2), dtype=bool)})  # not one-hot
    record.append({"step": 3, "site": 5, "grid": (1, 3), "gates": np.stack([one_hot([[0, 1, 2]], 3)] * 2)})  # batched
    final = select_route_maps(record[:9])
    path = tmp_path / "panel-1.routes.npz"

    real_load = np.load
    calls = []

    def checked_load(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", checked_load)
    write_route_maps(path, final, record)
    loaded_final, loaded_record = load_route_maps(path)
    assert calls == [False]
    assert loaded_final.dtype == final.dtype and np.array_equal(loaded_final, final)
    assert_same_record(record, loaded_record)
    with real_load(path, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
        assert any(data[k].dtype == np.uint8 for k in data.files)  # one-hot stored as slot indices


def test_route_maps_without_record(tmp_path):
    path = tmp_path / "r.npz"
    write_route_maps(path, np.ones((2, 4, 4), dtype=bool))
    final, record = load_route_maps(path)
    assert record is None and final.dtype == bool and final.shape == (2, 4, 4)
    write_route_maps(path, np.zeros((2, 4, 4), dtype=np.float32), [])
    final, record = load_route_maps(path)
    assert record == [] and final.dtype == np.float32


def test_route_maps_file_is_replaced_whole(tmp_path):
    path = tmp_path / "r.npz"
    write_route_maps(path, np.ones((2, 2, 2)), sample_record())
    write_route_maps(path, np.zeros((2, 2, 2)))
    assert load_route_maps(path)[1] is None
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]  # no temporary files left
    with pytest.raises(ValueError):
        write_route_maps(path, np.array([object()], dtype=object))
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]


@pytest.mark.hostile
def test_route_maps_reject_foreign_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.ones(3))
    with pytest.raises(ValueError, match="format"):
        load_route_maps(path)


# -- layouts ---------------------------------------------------------------------------------------


def panels(count: int, size=(120, 80)) -> list[Image.Image]:
    return [Image.new("RGB", size, (20 * i % 255, 80, 160)) for i in range(count)]


def test_strip_lays_panels_left_to_right_at_the_tallest_height():
    images = [Image.new("RGB", (100, 50), "red"), Image.new("RGB", (40, 100), "blue"), Image.new("RGBA", (30, 30), (0, 255, 0, 255))]
    out = strip(images, gap=10)
    # heights scaled to 100: widths 200, 40, 100
    assert out.size == (200 + 40 + 100 + 4 * 10, 100 + 2 * 10)
    pixels = np.asarray(out)
    assert tuple(pixels[60, 110]) == (255, 0, 0)
    assert tuple(pixels[60, 230]) == (0, 0, 255)
    assert tuple(pixels[60, 300]) == (0, 255, 0)
    assert tuple(pixels[5, 5]) == (255, 255, 255)


def test_strip_captions_are_wrapped_under_each_panel():
    images = panels(2)
    plain = strip(images)
    short = strip(images, captions=["One", None])
    long = strip(images, captions=["A much longer caption that has to wrap onto several lines " * 2, ""])
    assert short.width == plain.width and short.height > plain.height
    assert long.height > short.height
    caption_band = np.asarray(short)[plain.height - 16 :]
    assert (caption_band < 128).any()  # ink
    assert strip(images, captions=["", None]).size == plain.size
    assert strip(images, height=40).height == 40 + 2 * 16
    with pytest.raises(ValueError):
        strip(images, captions=["only one"])
    with pytest.raises(ValueError):
        strip([])


@pytest.mark.parametrize("count, pages", [(1, 1), (6, 1), (7, 2), (12, 2), (13, 3)])
def test_page_grid_makes_as_many_pages_as_needed(count, pages):
    out = page_grid(panels(count), columns=2, rows=3)
    assert len(out) == pages
    assert all(page.size == (1654, 2339) and page.mode == "RGB" for page in out)


def test_page_grid_keeps_aspect_and_centres_panels():
    wide = Image.new("RGB", (400, 100), (255, 0, 0))
    (page,) = page_grid([wide], columns=1, rows=1, page_size=(500, 500), margin=50)
    pixels = np.asarray(page)
    red = np.argwhere((pixels == (255, 0, 0)).all(axis=-1))
    (top, left), (bottom, right) = red.min(0), red.max(0)
    assert (right - left + 1, bottom - top + 1) == (400, 100)
    assert (left, 500 - right - 1) == (50, 50)
    assert abs(top - (500 - bottom - 1)) <= 1


def test_page_grid_captions():
    images = panels(3)
    plain = page_grid(images, page_size=(800, 1000))[0]
    captioned = page_grid(images, captions=["First", "Second " * 40, None], page_size=(800, 1000))[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(captioned))
    with pytest.raises(ValueError):
        page_grid(images, captions=["x"])
    with pytest.raises(ValueError, match="no room"):
        page_grid(images, columns=10, rows=10, page_size=(200, 200), margin=60)


# -- exports ---------------------------------------------------------------------------------------


def test_export_png(tmp_path):
    path = export_png(Image.new("RGBA", (30, 20), (1, 2, 3, 4)), tmp_path / "sub" / "panel.png")
    assert path == tmp_path / "sub" / "panel.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (30, 20) and image.mode == "RGBA"
    assert sorted(p.name for p in path.parent.iterdir()) == ["panel.png"]


def test_export_pdf_has_one_page_per_image(tmp_path):
    pages = page_grid(panels(7), page_size=(400, 566), margin=20)
    pages.append(Image.new("RGBA", (200, 200), (0, 0, 0, 0)))
    path = export_pdf(pages, tmp_path / "story.pdf", resolution=100, title="Ann & the 🐶")
    data = path.read_bytes()
    assert data.startswith(b"%PDF-")
    assert b"%%EOF" in data[-32:]
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 3
    assert re.search(rb"/Count\s+3\b", data)
    assert [p.name for p in tmp_path.iterdir()] == ["story.pdf"]
    with pytest.raises(ValueError):
        export_pdf([], tmp_path / "empty.pdf")
    assert not (tmp_path / "empty.pdf").exists()


def test_export_pdf_page_size_follows_resolution(tmp_path):
    data = export_pdf([Image.new("RGB", (200, 100), "white")], tmp_path / "a.pdf", resolution=100).read_bytes()
    box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    assert box and (float(box.group(1)), float(box.group(2))) == (144.0, 72.0)  # 2 x 1 inch in points


def test_export_cbz_holds_numbered_pngs_in_order(tmp_path):
    sizes = [(30, 20), (40, 25), (50, 30)] + [(10, 10)] * 9
    images = [Image.new("RGB", size, (i * 20, 0, 0)) for i, size in enumerate(sizes)]
    path = export_cbz(images, tmp_path / "story.cbz", title='Ann & "Rex" <vol 1>')
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        pages = [n for n in names if n.endswith(".png")]
        assert pages == [f"{i:03d}.png" for i in range(1, 13)]
        assert "ComicInfo.xml" in names
        for name, size, i in zip(pages, sizes, range(12)):
            info = archive.getinfo(name)
            assert info.compress_type == zipfile.ZIP_STORED
            with archive.open(name) as member, Image.open(member) as image:
                assert image.format == "PNG" and image.size == size
                assert image.getpixel((0, 0))[0] == i * 20
        comic = archive.read("ComicInfo.xml").decode("utf-8")
    import xml.etree.ElementTree as ET

    root = ET.fromstring(comic)
    assert root.tag == "ComicInfo"
    assert root.findtext("Title") == 'Ann & "Rex" <vol 1>'
    assert root.findtext("PageCount") == "12"
    with pytest.raises(ValueError):
        export_cbz([], tmp_path / "none.cbz")


# -- file names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("My Story", "My Story"),
        ("../../etc/passwd", "etc_passwd"),
        ("a/b\\c", "a_b_c"),
        ("..", "story"),
        (".", "story"),
        ("", "story"),
        ("   ", "story"),
        ("🐶🐱", "story"),
        ("Rex 🐶 and Ann", "Rex_and Ann"),
        ("Ann's \"big\" day!", "Ann_s_big_day"),
        ("Zoë und Jürgen", "Zoë und Jürgen"),
        ("日本の物語", "日本の物語"),
        ("कहानी", "कहानी"),
        ("CON", "CON_"),
        ("nul", "nul_"),
        ("com1", "com1_"),
        ("LPT9", "LPT9_"),
        ("CONSOLE", "CONSOLE"),
        ("-rf", "rf"),
        ("tab\tand\nnewline\x00", "tab_and_newline"),
        ("a:b*c?d|e<f>g", "a_b_c_d_e_f_g"),
    ],
)
@pytest.mark.hostile
def test_safe_filename(text, expected):
    assert safe_filename(text) == expected


@pytest.mark.hostile
def test_safe_filename_limits_and_defaults():
    long = safe_filename("word " * 100)
    assert 0 < len(long) <= 80 and not long.endswith(" ")
    assert len(safe_filename("x" * 500, max_length=10)) == 10
    assert len(safe_filename("物" * 300, max_length=200).encode("utf-8")) <= 255
    assert safe_filename("", default="panel") == "panel"
    assert safe_filename("///", default="///") == "story"
    for text in ["../x", "a/b", "..", "CON.txt", "\\\\server\\share", "\ud800"]:
        name = safe_filename(text)
        assert name and name not in {".", ".."} and "/" not in name and "\\" not in name and "\0" not in name
    with pytest.raises(ValueError):
        safe_filename("x", max_length=0)


# -- the pipeline's own record ---------------------------------------------------------------------


def test_selection_over_a_pipeline_record_matches_the_pipelines_final_map(tmp_path):
    """Records made by the real route code (torch, [batch, S, h, w] gates) feed Inspect and Export."""
    from types import SimpleNamespace

    import torch

    from anystory.attention import InjectionContext
    from anystory.encoding import SubjectEncoding

    generator = torch.Generator().manual_seed(0)
    batch, slots, latent = 2, 4, (16, 12)
    subjects = [SubjectEncoding(torch.zeros(2, 8), torch.zeros(0)) for _ in range(slots - 1)]
    ctx = InjectionContext(subjects, SubjectEncoding(torch.zeros(2, 8), torch.zeros(0)), SimpleNamespace(exclusive=True), record_steps=True)
    for step in range(3):
        ctx.step = step
        ctx.begin_pass(latent)
        for site, grid in enumerate([(16, 12), (8, 6), (4, 3), (8, 6), (16, 12)]):
            labels = torch.randint(0, slots, (batch, grid[0] * grid[1]), generator=generator)
            routes = torch.nn.functional.one_hot(labels, slots).transpose(1, 2)  # [B, S, hw]
            ctx.publish_routes(site, routes, grid)
    final = ctx.route_maps()  # [B, S, h, w]

    record = ctx.record
    assert record_grids(record) == [(4, 3), (8, 6), (16, 12)] and record_steps(record) == [0, 1, 2]
    for image in range(batch):
        chosen = select_route_maps(record, image_index=image)
        assert np.array_equal(chosen, final[image].numpy())
        assert select_route_maps(record, steps=(2, 3), grid=(4, 3), image_index=image).shape == (slots, 4, 3)

    write_route_maps(tmp_path / "routes.npz", final[0].numpy(), record)
    loaded_final, loaded_record = load_route_maps(tmp_path / "routes.npz")
    assert np.array_equal(loaded_final, final[0].numpy())
    assert_same_record([{**e, "gates": e["gates"].numpy()} for e in record], loaded_record)
    assert np.array_equal(select_route_maps(loaded_record, image_index=1), final[1].numpy())

    image = Image.new("RGB", (96, 128), (90, 90, 90))
    shown = overlay(image, final[0], ["girl", "dog", "robot"])  # a torch tensor is fine too
    assert shown.width == 96 and shown.height > 128


@pytest.mark.hostile
def test_a_failed_export_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = export_png(Image.new("RGB", (8, 8), "red"), tmp_path / "panel.png")
    before = path.read_bytes()

    def crash(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half a fi")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", crash)
    for export in (
        lambda: export_png(Image.new("RGB", (8, 8), "blue"), path),
        lambda: export_pdf([Image.new("RGB", (8, 8))], tmp_path / "panel.png"),
    ):
        with pytest.raises(OSError, match="disk full"):
            export()
        assert path.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["panel.png"]
