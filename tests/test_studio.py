"""The Studio service: encode once, bad input, generation, versions, routes, exports."""

import io
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from anystory.images import ImageInputError
from anystory.studio import CharacterInUse, GenerationCancelled, Studio, StudioError
from anystory.tiny import synthetic_subject


@pytest.fixture
def studio(public_pipe, tmp_path):
    studio = Studio(tmp_path / "data", public_pipe, preview=True)
    studio.panel_defaults.update(width=64, height=64, steps=3)
    return studio


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def cast(studio):
    mia = studio.add_character("Mia", "a young woman with a red scarf", png(synthetic_subject(1)))
    rex = studio.add_character("Rex", "a small brown dog", png(synthetic_subject(2)))
    return mia, rex


# -- encode once ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_eight_panels_with_two_characters_encode_twice(studio):
    mia, rex = cast(studio)
    story = studio.create_story("The walk")
    for i in range(8):
        studio.add_panel(story.id, f"[Mia] and [Rex] at the park, scene {i}")
    studio.generate_story(story.id)
    assert studio.encode_count == 2
    assert all(p.status == "ready" for p in studio.panels(story.id))


def test_a_new_studio_reads_encodings_from_disk(studio, public_pipe):
    mia, _ = cast(studio)
    again = Studio(studio.data_dir, public_pipe, preview=True)
    again.character_encoding("mia")
    assert again.encode_count == 0


def test_stale_encoding_is_encoded_again_with_a_note(studio):
    mia, _ = cast(studio)
    studio._library.set_encoding(
        mia.id, studio._library.read_encoding(mia.id), "other-weights"
    )  # as other weights would
    assert [c.name for c in studio.stale_characters()] == ["Mia"]
    studio.notes = []
    studio.character_encoding(mia.id)
    assert studio.encode_count == 3 and "encoded again" in studio.notes[0]
    assert studio.stale_characters() == []


@pytest.mark.hostile
def test_a_failed_encode_marks_the_character_failed_and_re_encode_retries(studio, monkeypatch):
    mia, _ = cast(studio)
    real = studio.pipeline.encode_subject

    def broken(*args, **kwargs):
        raise RuntimeError("the encoder ran out of memory")

    monkeypatch.setattr(studio.pipeline, "encode_subject", broken)
    with pytest.raises(StudioError, match="Mia could not be encoded: the encoder ran out of memory"):
        studio.reencode_character("Mia")
    assert studio.encoding_status(studio.get_character("Mia")) == "failed"
    monkeypatch.setattr(studio.pipeline, "encode_subject", real)
    assert studio.encoding_status(studio.reencode_character("Mia")) == "ready"


# -- characters: bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is not a picture at all", "not a readable picture"),
        (png(synthetic_subject(1))[:200], "not a readable picture"),
        (png(Image.new("RGB", (1, 1))), "too small"),
        (b"\x89PNG" + b"0" * (21 * 2**20), "the limit is 20 MB"),
    ],
)
@pytest.mark.hostile
def test_bad_pictures_are_refused_and_nothing_is_written(studio, data, message):
    with pytest.raises(ImageInputError, match=message):
        studio.add_character("Mia", "", data)
    assert studio.characters() == [] and studio.encode_count == 0


@pytest.mark.hostile
def test_decompression_bomb_is_refused_before_decoding(studio):
    bomb = png(Image.new("1", (9000, 9000)))  # tiny file, 81 megapixels
    assert len(bomb) < 2**20
    with pytest.raises(ImageInputError, match="megapixels"):
        studio.add_character("Mia", "", bomb)


@pytest.mark.hostile
def test_large_pictures_are_downscaled(studio):
    big = Image.new("RGB", (5000, 1000), (10, 200, 30))
    character = studio.add_character("Wide", "", png(big))
    assert max(Image.open(character.image_path).size) == 4096


@pytest.mark.hostile
def test_masks(studio):
    picture = synthetic_subject(1, alpha=False)
    with pytest.raises(ImageInputError, match="mask is empty"):
        studio.add_character("Mia", "", png(picture), mask=png(Image.new("L", picture.size, 0)))
    with pytest.raises(ImageInputError, match="must match"):
        studio.add_character("Mia", "", png(picture), mask=png(Image.new("L", (20, 20), 255)))
    studio.add_character("Mia", "", png(picture), mask=png(Image.new("L", picture.size, 255)))
    assert "whole picture" in studio.notes[0]
    preview, _ = studio.mask_preview(png(synthetic_subject(2)))
    assert preview.size == synthetic_subject(2).size


def test_notes_belong_to_the_thread_that_made_them(studio):
    """Each browser request runs in its own worker thread: one writer's notes never reach another."""
    picture = synthetic_subject(1, alpha=False)
    studio.add_character("Ada", "", png(picture), mask=png(Image.new("L", picture.size, 255)))
    assert "whole picture" in studio.notes[0]
    seen = []
    other = threading.Thread(target=lambda: seen.append(list(studio.notes)))
    other.start()
    other.join()
    assert seen == [[]] and "whole picture" in studio.notes[0]


@pytest.mark.hostile
def test_names(studio):
    cast(studio)
    with pytest.raises(ValueError, match="Mia"):
        studio.add_character("mia", "", png(synthetic_subject(3)))
    with pytest.raises(ValueError):
        studio.add_character("   ", "", png(synthetic_subject(3)))
    odd = studio.add_character('Zoë "Z" / 🐉', "a dragon", png(synthetic_subject(3)))
    assert studio.get_character(odd.id).name == 'Zoë "Z" / 🐉'


@pytest.mark.hostile
def test_failed_encoding_writes_nothing(studio, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(studio.pipeline, "encode_subject", broken)
    with pytest.raises(RuntimeError):
        studio.add_character("Mia", "", png(synthetic_subject(1)))
    assert studio.characters() == []
    assert not any((studio.data_dir / "characters").glob("*/*"))


@pytest.mark.hostile
def test_concurrent_adds(studio):
    """Four adds released together by a barrier (two of them under one name): the distinct names
    are all added, and exactly one of the two same-name adds wins."""
    barrier = threading.Barrier(4)
    errors = []

    def add(name, seed):
        barrier.wait(timeout=30)
        try:
            studio.add_character(name, "", png(synthetic_subject(seed)))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    jobs = [("C0", 0), ("C1", 1), ("Twin", 2), ("twin", 3)]
    threads = [threading.Thread(target=add, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and "already exists" in str(errors[0])
    names = sorted(c.name for c in studio.characters())
    assert names[:2] == ["C0", "C1"] and len(names) == 3 and names[2].casefold() == "twin"


# -- deleting ------------------------------------------------------------------------------------


@pytest.mark.hostile
def test_delete_names_the_panels_that_use_the_character(studio):
    mia, rex = cast(studio)
    story = studio.create_story("The walk")
    studio.add_panel(story.id, "[Mia] alone")
    panel = studio.add_panel(story.id, "a park", characters=[rex.id])
    with pytest.raises(CharacterInUse, match="“The walk” panel 2"):
        studio.delete_character(rex.id)
    studio.delete_character(rex.id, force=True)
    assert studio.get_panel(panel.id).characters == []


@pytest.mark.hostile
def test_delete_while_a_generation_uses_it(studio):
    mia, _ = cast(studio)
    studio._busy = {mia.id}
    with pytest.raises(CharacterInUse, match="running now"):
        studio.delete_character(mia.id, force=True)


@pytest.mark.hostile
def test_deleted_character_named_in_a_prompt(studio):
    mia, rex = cast(studio)
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Rex] runs")
    studio.delete_character(rex.id, force=True)
    with pytest.raises(StudioError, match=r"\[Rex\].*known characters: Mia"):
        studio.generate_panel(panel.id)


# -- generation ----------------------------------------------------------------------------------


def test_generation_keeps_versions_with_routes(studio):
    mia, rex = cast(studio)
    story = studio.create_story("The walk")
    panel = studio.add_panel(story.id, "[Mia] walks [Rex] in the rain")
    first = studio.generate_panel(panel.id)
    assert first.settings["model_prompt"] == "a young woman with a red scarf walks a small brown dog in the rain"
    assert first.settings["subject_names"] == ["Mia", "Rex"] and first.settings["router_used"] == "prompt"
    overlay = studio.version_overlay(first.id)
    assert overlay.height > 64  # the image plus a legend
    grids, steps = studio.route_record_choices(first.id)
    assert grids and steps == [0, 1, 2]
    studio.version_overlay(first.id, steps=(1, 3), grid=grids[-1])

    second = studio.reroll_panel(panel.id)
    assert second.settings["seed"] != first.settings["seed"]
    assert [v.id for v in studio.versions(panel.id)] == [first.id, second.id]
    assert studio.set_active_version(panel.id, first.id).active_version_id == first.id


@pytest.mark.slow
def test_reroll_keeps_the_other_panels(studio):
    cast(studio)
    story = studio.create_story("s")
    a = studio.add_panel(story.id, "[Mia] reads")
    b = studio.add_panel(story.id, "[Rex] sleeps")
    studio.generate_story(story.id)
    before = studio.get_panel(a.id)
    studio.reroll_panel(b.id)
    assert studio.get_panel(a.id).active_version_id == before.active_version_id
    assert len(studio.versions(a.id)) == 1 and len(studio.versions(b.id)) == 2


@pytest.mark.slow
def test_generate_all_skips_up_to_date_panels(studio):
    cast(studio)
    story = studio.create_story("s")
    a = studio.add_panel(story.id, "[Mia] reads")
    studio.add_panel(story.id, "[Rex] sleeps")
    assert len(studio.generate_story(story.id)) == 2
    assert studio.generate_story(story.id) == []
    studio.update_panel(a.id, prompt="[Mia] writes")
    assert [v.panel_id for v in studio.generate_story(story.id)] == [a.id]


def test_ticked_characters_join_the_prompt(studio):
    mia, rex = cast(studio)
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Mia] in a garden", characters=[rex.id])
    plan = studio.plan_panel(panel)
    assert plan.prompt == "a young woman with a red scarf in a garden, a small brown dog"
    assert plan.character_ids == [mia.id, rex.id] and plan.phrases[1] == "a small brown dog"


@pytest.mark.hostile
def test_long_prompt_warns_with_the_models_own_tokenizer(studio, public_pipe, tmp_path):
    real = Studio(tmp_path / "real", public_pipe)  # not preview: the tokenizer is the model's
    cast(real)
    story = real.create_story("s")
    panel = real.add_panel(story.id, "[Mia] " + "walks slowly " * 60)
    assert "the rest is ignored" in real.plan_panel(panel).warnings[0]
    # The preview's tiny tokenizer splits words into letters: it would call a prompt that fits a
    # real CLIP window too long, so preview says nothing about length.
    studio.add_example_cast()
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Bolt], [Mia] and [Rex] watch the storm from the window")
    assert len(studio.pipeline.tokenizer(studio.plan_panel(panel).prompt).input_ids) > 77
    assert studio.plan_panel(panel).warnings == []


@pytest.mark.hostile
def test_names_are_checked_before_the_encoder_runs(studio):
    cast(studio)
    before = studio.encode_count
    for name, message in (("mia", "already exists"), ("", "cannot be empty"), ("[Zed]", "cannot contain")):
        with pytest.raises(ValueError, match=message):
            studio.add_character(name, "", png(synthetic_subject(3)))
    with pytest.raises(ValueError, match="already exists"):
        studio.update_character("Rex", name="MIA", image=png(synthetic_subject(4)))
    assert studio.encode_count == before


def test_every_export_keeps_its_own_file(studio, generated):
    written = [studio.export_story(generated.id, fmt)[0] for fmt in ("strip", "grid", "strip", "pdf", "project")]
    assert len({p.name for p in written}) == 5 and all(p.is_file() for p in written)
    assert [p.name.split(" - ")[1] for p in written] == ["strip", "pages", "strip", "pdf", "project"]
    assert set(studio.exports()) >= set(written)


@pytest.mark.hostile
@pytest.mark.slow
def test_layout_router_needs_boxes(studio):
    mia, rex = cast(studio)
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Mia] and [Rex]", router="layout", layout={mia.id: [0, 0, 0.5, 1]})
    with pytest.raises(StudioError, match="none for Rex"):
        studio.generate_panel(panel.id)
    studio.update_panel(panel.id, layout={mia.id: [0, 0, 0.5, 1], rex.id: [0.5, 0, 1, 1]})
    version = studio.generate_panel(panel.id)
    assert version.settings["router_used"] == "layout"


@pytest.mark.hostile
@pytest.mark.slow
def test_cancel_keeps_earlier_versions(studio):
    cast(studio)
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Mia] reads")
    first = studio.generate_panel(panel.id)
    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationCancelled):
        studio.generate_panel(panel.id, cancel=stop)
    after = studio.get_panel(panel.id)
    assert after.status == "failed" and "cancelled" in after.error
    assert after.active_version_id == first.id and len(studio.versions(panel.id)) == 1


@pytest.mark.hostile
def test_failure_is_marked_with_its_reason(studio, monkeypatch):
    cast(studio)
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Mia] reads")

    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(type(studio.pipeline), "__call__", oom)
    with pytest.raises(StudioError, match="smaller size"):
        studio.generate_panel(panel.id)
    assert "smaller size" in studio.get_panel(panel.id).error


@pytest.mark.slow
def test_progress_is_reported(studio):
    cast(studio)
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Mia] reads")
    seen = []
    studio.generate_panel(panel.id, progress=lambda f, text: seen.append(f))
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_panel_without_characters(studio):
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "an empty street")
    version = studio.generate_panel(panel.id)
    assert version.route_map_path is None
    with pytest.raises(StudioError, match="no routes"):
        studio.version_overlay(version.id)


# -- exports -------------------------------------------------------------------------------------


@pytest.fixture
def generated(studio):
    cast(studio)
    story = studio.create_story("The walk / part 1")
    for prompt in ("[Mia] reads", "[Rex] sleeps", "[Mia] and [Rex] play"):
        studio.add_panel(story.id, prompt)
    studio.generate_story(story.id)
    return story


def test_exports(studio, generated, tmp_path):
    (strip,) = studio.export_story(generated.id, "strip")
    assert strip.parent == studio.data_dir / "exports" and "/" not in strip.name
    assert Image.open(strip).width > 3 * 64
    (pdf,) = studio.export_story(generated.id, "pdf", tmp_path / "walk.pdf", overlay=True)
    assert pdf.read_bytes().count(b"/Type /Page\n") + pdf.read_bytes().count(b"/Type /Page ") >= 1
    (cbz,) = studio.export_story(generated.id, "cbz", tmp_path / "walk.cbz")
    with zipfile.ZipFile(cbz) as archive:
        pages = [n for n in archive.namelist() if n.endswith(".png")]
        assert len(pages) == 3 and Image.open(archive.open(pages[0])).size == (64, 64)
    (grid,) = studio.export_story(generated.id, "grid", tmp_path / "grid.png", captions=False)
    assert Image.open(grid).size == (1654, 2339)
    with pytest.raises(StudioError, match="unknown export format"):
        studio.export_story(generated.id, "gif")


def test_project_archive_imports_into_an_empty_folder(studio, generated, tmp_path, public_pipe):
    (archive,) = studio.export_story(generated.id, "project", tmp_path / "walk.zip")
    other = Studio(tmp_path / "other", public_pipe, preview=True)
    story = other.import_project(archive)
    assert story.title == generated.title
    ours, theirs = studio.panels(generated.id), other.panels(story.id)
    assert [p.prompt for p in ours] == [p.prompt for p in theirs]
    for a, b in zip(ours, theirs):
        va, vb = studio.get_version(a.active_version_id), other.get_version(b.active_version_id)
        assert va.image_path.read_bytes() == vb.image_path.read_bytes()
    assert other.encode_count == 0 and other.stale_characters() == []
    assert np.array_equal(np.asarray(other.version_overlay(theirs[2].active_version_id)),
                          np.asarray(studio.version_overlay(ours[2].active_version_id)))  # fmt: skip


# -- lines and bubbles (issue 16) ------------------------------------------------------------------


def test_lines_become_bubbles_by_the_routed_speaker_on_a_generated_version(studio, tmp_path, public_pipe):
    from anystory import render
    from anystory.bubbles import labels_at

    mia, rex = cast(studio)
    story = studio.create_story("Talk")
    boxes = {mia.id: [0.0, 0.45, 0.45, 1.0], rex.id: [0.55, 0.45, 1.0, 1.0]}
    panel = studio.add_panel(story.id, "[Mia] talks to [Rex]", router="layout", layout=boxes, width=256, height=256)
    version = studio.generate_panel(panel.id)
    studio.add_line(panel.id, "Sit!", "Mia")
    studio.add_line(panel.id, "Woof.", rex.id, "speech")
    studio.add_line(panel.id, "That evening...")
    assert studio.get_panel(panel.id).status == "ready"  # lines never outdate the picture
    assert [(line["name"], line["kind"]) for line in studio.panel_lines(panel.id)] == [
        ("Mia", "speech"), ("Rex", "speech"), ("", "caption")]  # fmt: skip

    maps, _ = render.load_route_maps(version.route_map_path)
    labels = labels_at(maps, (256, 256))
    speech = studio.panel_bubbles(panel.id)
    for bubble, slot in ((speech[0], 0), (speech[1], 1)):
        x0, y0, x1, y1 = bubble.box
        assert not (labels[y0:y1, x0:x1] == 1 - slot).any()  # covers nobody else
        ys, xs = np.nonzero(labels == slot)
        assert x0 <= xs.max() + 26 and x1 >= xs.min() - 26 and y1 >= ys.min() - 26  # by its speaker
        assert labels[bubble.tail[1], bubble.tail[0]] == slot
    assert speech[2].kind == "caption" and speech[2].box[:2] < (13, 13)

    clean = studio.panel_picture(panel.id, bubbles=False)
    assert np.array_equal(np.asarray(clean), np.asarray(studio.version_image(version.id)))
    drawn = studio.panel_picture(panel.id)
    assert not np.array_equal(np.asarray(drawn), np.asarray(clean))
    assert version.image_path.read_bytes() == studio.get_version(version.id).image_path.read_bytes()

    # a nudge is kept and survives a re-roll where the speaker is still there
    studio.nudge_line(panel.id, 0, 0.05, 0.0)
    studio.reroll_panel(panel.id)
    assert studio.panel_lines(panel.id)[0]["offset"] == [0.05, 0.0]
    assert studio.panel_bubbles(panel.id)[0].speaker_seen

    with pytest.raises(StudioError, match="not in this panel's cast"):
        studio.add_line(studio.add_panel(story.id, "[Mia] alone").id, "Woof", "Rex")
    with pytest.raises(ValueError, match="no installed font"):
        studio.add_line(panel.id, "party \U0001f389", "Mia")
    assert len(studio.panel_lines(panel.id)) == 3
    assert studio.line_warnings(panel.id) == []
    studio.add_line(panel.id, "word " * 99, "Mia")  # too long for a 256 px panel even at the smallest text
    [warning] = studio.line_warnings(panel.id)
    assert warning.startswith("line 4 does not fit panel 1") and "cut" in warning
    studio.remove_line(panel.id, 3)

    (archive,) = studio.export_story(story.id, "project", tmp_path / "talk.zip")
    other = Studio(tmp_path / "other", public_pipe, preview=True)
    imported = other.panels(other.import_project(archive).id)[0]
    assert [line["text"] for line in other.panel_lines(imported.id)] == ["Sit!", "Woof.", "That evening..."]


@pytest.mark.slow
def test_page_exports_carry_bubbles_in_every_layout(studio, tmp_path):
    mia, rex = cast(studio)
    story = studio.create_story("Pages")
    for n in range(5):
        panel = studio.add_panel(story.id, f"[Mia] and [Rex], scene {n}", router="layout",
                                 layout={mia.id: [0, 0.4, 0.45, 1], rex.id: [0.55, 0.4, 1, 1]})  # fmt: skip
        studio.add_line(panel.id, f"Line {n}", "Mia")
        studio.add_line(panel.id, f"Narration {n}")
    studio.generate_story(story.id)
    (pdf,) = studio.export_story(story.id, "pdf", tmp_path / "p.pdf", layout="tiers", title_page=True)
    assert pdf.read_bytes().count(b"/Type /Page\n") + pdf.read_bytes().count(b"/Type /Page ") >= 1
    (cbz,) = studio.export_story(story.id, "cbz", tmp_path / "p.cbz", layout="manga")
    with zipfile.ZipFile(cbz) as archive:
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == 2  # 4 a page
        assert b"<Manga>YesAndRightToLeft</Manga>" in archive.read("ComicInfo.xml")  # readers turn pages RTL
    pngs = studio.export_story(story.id, "grid", tmp_path / "p.png", layout="book")
    assert len(pngs) == 5
    clean = studio.story_pages(story.id, "book", bubbles=False)
    drawn = [Image.open(p) for p in pngs]
    assert all(np.asarray(a).tolist() != np.asarray(b).tolist() for a, b in zip(clean, drawn))
    with pytest.raises(StudioError, match="unknown layout"):
        studio.story_pages(story.id, "spiral")
    for fit in ("auto", "crop", "fit"):
        assert len(studio.story_pages(story.id, "grid", fit=fit)) == 2
    with pytest.raises(StudioError, match="fit must be one of auto, crop, fit"):
        studio.story_pages(story.id, "grid", fit="stretch")


# -- styles (issue 16) ------------------------------------------------------------------------------


def test_styles_are_data_shown_in_what_the_model_saw_and_a_panel_can_override(studio, tmp_path):
    import json

    from anystory.styles import load_styles

    assert len(studio.style_choices()) >= 8 and ("Manga", "manga") in studio.style_choices()
    mia, _ = cast(studio)
    story = studio.create_story("Styled")
    studio.set_story_style(story.id, "comic", "rain")
    panel = studio.add_panel(story.id, "[Mia] reads", negative="hands")
    version = studio.generate_panel(panel.id)
    template = studio.styles["comic"].prompt
    assert version.settings["model_prompt"] == template.replace("{prompt}", "a young woman with a red scarf reads")
    assert version.settings["model_negative"].endswith("watermark, rain, hands")
    studio.update_panel(panel.id, style="pixel_art")
    assert studio.get_panel(panel.id).status == "outdated"
    assert studio.generate_panel(panel.id).settings["model_prompt"].startswith("pixel art, a young woman")
    studio.set_story_style(story.id, "manga", "")
    assert studio.get_panel(panel.id).status == "outdated"  # the story's negative prompt changed
    with pytest.raises(StudioError, match="unknown style"):
        studio.update_panel(panel.id, style="oil")
    with pytest.raises(StudioError, match="unknown style"):
        studio.set_story_style(story.id, "oil")
    bad = tmp_path / "styles.json"
    bad.write_text(json.dumps({"format": "anystory.styles", "styles": [{"id": "x", "label": "X", "prompt": "no slot",
                                                                         "negative": ""}]}))  # fmt: skip
    with pytest.raises(ValueError, match="no {prompt}"):
        load_styles(bad)


def test_a_panel_keeps_its_own_page_fit_over_the_exports(studio, tmp_path):
    """Issue 16: fit or crop per panel. A wide panel set to "fit" is drawn whole even in an export
    that crops; "" follows the export; the choice outdates nothing and travels with the project."""
    from anystory import pages as pg
    from anystory.story import PAGE_FITS

    assert PAGE_FITS == pg.FITS  # storage's copy of the choices is the pages module's
    story = studio.create_story("Fits")
    wide = studio.add_panel(story.id, "a wide view of the sea", width=128, height=64)
    studio.generate_panel(wide.id)
    cropped = studio.story_pages(story.id, "book", fit="crop")
    fitted = studio.story_pages(story.id, "book", fit="fit")
    assert [np.asarray(p).tobytes() for p in cropped] != [np.asarray(p).tobytes() for p in fitted]

    panel = studio.set_panel_page_fit(wide.id, "fit")
    assert panel.page_fit == "fit" and panel.status == "ready"  # a layer of the page, not of the image
    assert [np.asarray(p).tobytes() for p in studio.story_pages(story.id, "book", fit="crop")] == [
        np.asarray(p).tobytes() for p in fitted
    ]
    with pytest.raises(StudioError, match="page fit must be one of auto, crop, fit"):
        studio.set_panel_page_fit(wide.id, "stretch")
    assert studio.get_panel(wide.id).page_fit == "fit"  # the refused choice changed nothing
    assert studio.duplicate_panel(wide.id).page_fit == "fit"

    (archive,) = studio.export_story(story.id, "project", tmp_path / "fits.zip")
    other = Studio(tmp_path / "other", studio.pipeline, preview=True)
    assert [p.page_fit for p in other.panels(other.import_project(archive).id)] == ["fit", "fit"]
    studio.set_panel_page_fit(wide.id, "")
    assert [np.asarray(p).tobytes() for p in studio.story_pages(story.id, "book", fit="crop")][:1] == [
        np.asarray(p).tobytes() for p in cropped
    ][:1]
