"""Speech bubbles placed from route maps (issue 16): on hand-built maps, then drawn."""

import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw

from anystory import fonts
from anystory.bubbles import (
    MIN_FONT_SIZE,
    THOUGHT_RIM,
    LineSpec,
    check_line,
    draw_bubbles,
    fit_text,
    labels_at,
    place_bubbles,
)

SIZE = (512, 512)


def one_hot(labels, slots: int) -> np.ndarray:
    return np.moveaxis(np.eye(slots, dtype=bool)[np.asarray(labels)], -1, 0)


def two_people(h: int = 32, w: int = 32) -> np.ndarray:
    """Character 0 stands on the left, character 1 on the right, both from a third down; the
    top third is background (free space)."""
    labels = np.full((h, w), 2)
    labels[h // 3 :, 2 : w // 2 - 2] = 0
    labels[h // 3 :, w // 2 + 2 : w - 2] = 1
    return one_hot(labels, 3)


def region_box(maps, slot, size=SIZE):
    labels = labels_at(maps, (size[1], size[0]))
    ys, xs = np.nonzero(labels == slot)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def covered(maps, slot, box, size=SIZE) -> int:
    labels = labels_at(maps, (size[1], size[0]))
    x0, y0, x1, y1 = box
    return int((labels[y0:y1, x0:x1] == slot).sum())


def beside(box, region, slack: float) -> bool:
    """The box overlaps the region's bounding box grown by `slack` pixels."""
    return not (
        box[2] < region[0] - slack
        or box[0] > region[2] + slack
        or box[3] < region[1] - slack
        or box[1] > region[3] + slack
    )


@pytest.mark.parametrize("slot", [0, 1])
def test_bubble_lies_by_its_speaker_and_covers_nobody_else(slot):
    maps = two_people()
    [bubble] = place_bubbles(maps, SIZE, [LineSpec("speech", "Where did the dragon go?", slot)])
    other = 1 - slot
    assert covered(maps, other, bubble.box) == 0
    assert beside(bubble.box, region_box(maps, slot), slack=SIZE[0] * 0.08)
    # the tail points into the speaker's region
    labels = labels_at(maps, (SIZE[1], SIZE[0]))
    assert labels[bubble.tail[1], bubble.tail[0]] == slot
    assert bubble.speaker_seen


def test_two_speakers_read_left_to_right_and_right_to_left():
    maps = two_people()
    lines = [LineSpec("speech", "Hello!", 0), LineSpec("speech", "Hi there.", 1)]
    first, second = place_bubbles(maps, SIZE, lines)
    assert first.box[0] < second.box[0]
    for bubble, speaker in ((first, 0), (second, 1)):
        assert covered(maps, 1 - speaker, bubble.box) == 0
    # the bubbles do not overlap each other
    assert first.box[2] <= second.box[0] or first.box[3] <= second.box[1]
    # manga: the right one speaks first, so its bubble is read first (right-to-left)
    lines = [LineSpec("speech", "Hello!", 1), LineSpec("speech", "Hi there.", 0)]
    first, second = place_bubbles(maps, SIZE, lines, rtl=True)
    assert first.box[0] > second.box[0]


def test_narration_goes_to_a_caption_box_in_a_corner():
    maps = two_people()
    caption, bubble = place_bubbles(
        maps, SIZE, [LineSpec("caption", "Meanwhile, far away..."), LineSpec("speech", "Hm.", 0)]
    )
    assert caption.kind == "caption" and caption.tail is None
    assert caption.box[0] < SIZE[0] * 0.05 and caption.box[1] < SIZE[1] * 0.05  # top-left corner
    [rtl] = place_bubbles(maps, SIZE, [LineSpec("caption", "Meanwhile")], rtl=True)
    assert rtl.box[2] > SIZE[0] * 0.95 and rtl.box[1] < SIZE[1] * 0.05  # top-right for manga
    # the speech bubble keeps clear of the caption
    assert bubble.box[1] >= caption.box[3] or bubble.box[0] >= caption.box[2]


def test_no_free_space_still_places_and_a_missing_speaker_gets_no_tail():
    labels = np.zeros((16, 16), dtype=int)
    labels[:, 8:] = 1
    maps = one_hot(labels, 3)  # the two characters fill the picture
    [bubble] = place_bubbles(maps, SIZE, [LineSpec("speech", "Crowded in here", 0)])
    assert covered(maps, 1, bubble.box) <= covered(maps, 0, bubble.box)
    [lost] = place_bubbles(None, SIZE, [LineSpec("speech", "Who said that?", 0)])
    assert lost.tail is None and not lost.speaker_seen


def test_a_nudge_moves_the_bubble_by_that_fraction():
    maps = two_people()
    [plain] = place_bubbles(maps, SIZE, [LineSpec("speech", "Hi", 0)])
    [moved] = place_bubbles(maps, SIZE, [LineSpec("speech", "Hi", 0, offset=(0.1, 0.05))])
    assert (moved.box[0] - plain.box[0], moved.box[1] - plain.box[1]) == (51, 26)


def test_long_text_wraps_and_shrinks_to_fit():
    text = "word " * 120
    [bubble] = place_bubbles(two_people(), SIZE, [LineSpec("speech", text, 0)])
    x0, y0, x1, y1 = bubble.box
    assert 0 <= x0 < x1 <= SIZE[0] and 0 <= y0 < y1 <= SIZE[1]
    assert len(bubble.lines) > 1 and " ".join(bubble.lines).split() == text.split()  # all of it, wrapped
    assert not bubble.warning


def boxes_apart(a, b) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_a_long_line_on_a_small_panel_wraps_shrinks_and_grows_before_it_is_cut():
    small = (128, 128)
    text = "I told you the map was upside down, and now we are lost in the forest again!"
    short = fit_text("Hi!", "speech", small)
    fit = fit_text(text, "speech", small)
    assert not fit.truncated and "…" not in "".join(fit.lines)
    assert " ".join(fit.lines).split() == text.split()  # every word, wrapped
    assert MIN_FONT_SIZE <= fit.font_size < short.font_size  # shrunk, not below the legible minimum
    assert fit.size[0] > 0.40 * small[0]  # the bubble grew past its usual share of the panel
    assert fit.size[0] <= small[0] and fit.size[1] <= small[1]
    for line in fit.lines:  # the text stays inside the ellipse's text block
        assert fonts.text_length(line, fit.font_size) <= fit.size[0] / 1.42
    [bubble] = place_bubbles(two_people(), small, [LineSpec("speech", text, 0)])
    assert not bubble.warning and " ".join(bubble.lines).split() == text.split()
    # only when even the smallest text in the largest bubble cannot hold it is it cut, and said so
    [cut] = place_bubbles(two_people(), small, [LineSpec("speech", "word " * 90, 0)])
    assert cut.font_size == MIN_FONT_SIZE and cut.lines[-1].endswith("…")
    assert "does not fit" in cut.warning


@pytest.mark.parametrize("rtl", [False, True])
@pytest.mark.parametrize("size", [(512, 512), (256, 256), (768, 512)])
def test_several_lines_in_one_panel_never_overlap_and_keep_reading_order(size, rtl):
    maps = two_people()
    lines = [
        LineSpec("caption", "Meanwhile, at the edge of the old forest..."),
        LineSpec("speech", "Did you hear that noise behind the trees?", 0),
        LineSpec("speech", "It was only the wind. Keep walking.", 1),
        LineSpec("thought", "I do not think it was the wind at all.", 0),
    ]
    bubbles = place_bubbles(maps, size, lines, rtl=rtl)
    assert [b.index for b in bubbles] == [0, 1, 2, 3] and not any(b.warning for b in bubbles)
    caption, *speech = bubbles
    for a, b in itertools.combinations(bubbles, 2):
        assert boxes_apart(a.box, b.box), (a.box, b.box)
    labels = labels_at(maps, (size[1], size[0]))
    for bubble, slot in zip(speech, (0, 1, 0)):
        assert covered(maps, 1 - slot, bubble.box, size) == 0  # free space exists: nobody else covered
        assert beside(bubble.box, region_box(maps, slot, size), slack=size[0] * 0.08)
        assert labels[bubble.tail[1], bubble.tail[0]] == slot  # the tail points at the speaker
    # reading order: each bubble comes after the one before (next row, or further along the row)
    for before, after in zip(speech, speech[1:]):
        centre_b = ((before.box[0] + before.box[2]) / 2, (before.box[1] + before.box[3]) / 2)
        centre_a = ((after.box[0] + after.box[2]) / 2, (after.box[1] + after.box[3]) / 2)
        along = centre_a[0] < centre_b[0] if rtl else centre_a[0] > centre_b[0]
        assert centre_a[1] > before.box[3] - (before.box[3] - before.box[1]) / 2 or along


def test_a_crowded_panel_shrinks_text_to_keep_bubbles_apart():
    maps = two_people()
    lines = [LineSpec("caption", "Later.")] + [
        LineSpec("speech", f"This is line number {k}, said with some words.", k % 2) for k in range(5)
    ]
    bubbles = place_bubbles(maps, (192, 192), lines)
    for a, b in itertools.combinations(bubbles, 2):
        assert boxes_apart(a.box, b.box) or "overlaps" in a.warning + b.warning
    assert all(b.font_size >= MIN_FONT_SIZE for b in bubbles)


def test_narration_after_the_dialogue_goes_to_a_bottom_corner():
    lines = [LineSpec("speech", "Good night.", 0), LineSpec("caption", "And so the day ended.")]
    _, caption = place_bubbles(two_people(), SIZE, lines)
    assert caption.box[3] > SIZE[1] * 0.95 and caption.box[0] < SIZE[0] * 0.05  # bottom-left
    _, caption = place_bubbles(two_people(), SIZE, lines, rtl=True)
    assert caption.box[3] > SIZE[1] * 0.95 and caption.box[2] > SIZE[0] * 0.95  # bottom-right for manga


def test_a_line_mixing_scripts_renders_run_by_run_with_font_fallback():
    text = "Hello 你好 مرحبا!"
    assert check_line("speech", text) == text  # one font cannot draw all of it; together they can
    runs = fonts.split_runs(text)
    by_font: dict[str, str] = {}
    for run in runs:
        by_font[run.path.rsplit("/", 1)[-1]] = by_font.get(run.path.rsplit("/", 1)[-1], "") + run.text
    assert "Hello " in by_font["DejaVuSans.ttf"] and "你好" in by_font["NotoSansCJK-Regular.ttc"]
    assert [run.rtl for run in runs if "مرحبا" in run.text] == [True]
    # drawn: CJK glyphs appear (not empty boxes): the drawing differs from the same line without them
    image = Image.new("RGB", (400, 60), (255, 255, 255))

    def drawn(line):
        out = image.copy()
        fonts.draw_line(ImageDraw.Draw(out), (10, 10), line, 24)
        return np.asarray(out)

    assert (drawn(text) != 255).any()
    mixed_width = fonts.text_length(text, 24)
    parts = fonts.text_length("Hello ", 24) + fonts.text_length("你好 ", 24) + fonts.text_length("مرحبا!", 24)
    assert abs(mixed_width - parts) < 3
    # Arabic reads right to left: in an Arabic line the first word is drawn rightmost
    line = "مرحبا Hello"
    order = [run.text.strip() for run in fonts.visual_runs(line)]
    assert order == ["Hello", "مرحبا"]
    in_latin = [run.text.strip() for run in fonts.visual_runs("Hi سلام عليكم you")]
    assert in_latin == ["Hi", "سلام عليكم", "you"]  # an Arabic phrase inside Latin keeps its place
    # a glyph no font has is refused by name
    with pytest.raises(ValueError, match=r"'\U0001f409' \(U\+1F409\)"):
        check_line("speech", "Here be 🐉 dragons")


def test_drawing_is_a_layer_and_scripts_render_or_are_refused_clearly(tmp_path):
    image = Image.new("RGB", SIZE, (40, 90, 160))
    lines = [
        LineSpec("caption", "Chapter one"),
        LineSpec("speech", "Hello, world!", 0),
        LineSpec("thought", "مرحبا بالعالم", 1),
        LineSpec("sfx", "BOOM"),
    ]
    bubbles = place_bubbles(two_people(), SIZE, lines)
    drawn = draw_bubbles(image, bubbles)
    assert image.getpixel((5, 5)) == (40, 90, 160)  # the picture itself is untouched
    speech = next(b for b in bubbles if b.kind == "speech")
    inside = (speech.box[0] + (speech.box[2] - speech.box[0]) // 12, (speech.box[1] + speech.box[3]) // 2)
    assert drawn.getpixel(inside) == (255, 255, 255)  # inside the ellipse, left of the text
    with pytest.raises(ValueError, match="no installed font can draw"):
        check_line("speech", "party \U0001f389")
    with pytest.raises(ValueError, match="kind"):
        check_line("shout", "Hey")
    drawn.save(tmp_path / "bubbles.png")
    try:  # CJK draws with fonts-noto-cjk (install.sh); without it the line is refused, by name
        assert check_line("speech", "  你好  ") == "你好"
    except ValueError as err:
        assert "'你' (U+4F60)" in str(err) and "fonts-noto-cjk" in str(err)


@pytest.mark.parametrize("size", [(128, 128), (256, 256), (256, 384)])
def test_words_are_not_cut_in_two_when_a_smaller_size_keeps_them_whole(size):
    for kind, text in (("sfx", "WHOOSH"), ("sfx", "CRACKLE"), ("thought", "in grandmother's book: مرحبا بالعالم")):
        fit = fit_text(text, kind, size)
        assert " ".join(fit.lines).split() == text.split()  # every word whole, on one line or another
    chinese = fit_text("我们又在森林里迷路了，地图是倒着的。" * 2, "speech", (128, 128))
    assert len(chinese.lines) > 1 and not chinese.truncated  # no spaces: it breaks between characters


@pytest.mark.parametrize("size", [(128, 128), (256, 256), (512, 384)])
def test_text_stays_inside_its_bubble(size):
    """Every line's text block lies inside the clear middle of its bubble: the ellipse of a
    speech bubble, the ellipse inside a thought cloud's scallops, the caption's rectangle."""
    lines = [
        LineSpec("caption", "Meanwhile, at the edge of the old forest..."),
        LineSpec("speech", "Did you hear that noise behind the trees? 你好", 0),
        LineSpec("thought", "I have seen this tree before, in grandmother's book: مرحبا بالعالم", 1),
        LineSpec("speech", "Hello?", 0),
    ]
    for bubble in place_bubbles(two_people(), size, lines):
        x0, y0, x1, y1 = bubble.box
        step = fonts.line_step("".join(bubble.lines), bubble.font_size)
        half_w = max(fonts.text_length(line, bubble.font_size) for line in bubble.lines) / 2
        half_h = len(bubble.lines) * step / 2
        rx, ry = (x1 - x0) / 2, (y1 - y0) / 2
        if bubble.kind == "caption":
            assert half_w <= rx and half_h <= ry
            continue
        if bubble.kind == "thought":
            rim = max(3.0, min(rx, ry) * THOUGHT_RIM)
            rx, ry = rx - rim, ry - rim
        assert (half_w / rx) ** 2 + (half_h / ry) ** 2 <= 1.0 + 1e-6, bubble  # the block's corners


def test_a_preferred_text_size_letters_every_panel_alike():
    """Pages letter every panel at one size (pages.LETTERING) where the panel has room."""
    for size in [(400, 400), (700, 500), (300, 500)]:
        bubbles = place_bubbles(two_people(), size, [LineSpec("speech", "Hello there!", 0)], text_size=19)
        assert bubbles[0].font_size == 19


def test_keeping_heads_clear_does_not_wrap_round_the_picture():
    """A head at the top edge keeps the top clear, not the bottom (a mask grown without wrapping)."""
    from anystory.bubbles import _dilate

    mask = np.zeros((10, 10), dtype=bool)
    mask[0, 0] = True
    grown = _dilate(mask, 2)
    assert grown[:3, :3].all() and grown.sum() == 9
