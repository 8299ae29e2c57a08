"""A panel's control picture in the Studio: upload or edges from a photo, kind and strength kept
with the panel and with every version, a tiny ControlNet in preview mode, project archives."""

import io

import numpy as np
import pytest
from PIL import Image

from anystory.control_pictures import edge_map
from anystory.studio import Studio, StudioError
from anystory.tiny import synthetic_subject
from anystory.tiny_control import edge_picture


@pytest.fixture
def studio(public_pipe, tmp_path):
    studio = Studio(tmp_path / "data", public_pipe, preview=True)
    studio.panel_defaults.update(width=64, height=64, steps=2)
    return studio


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def photo() -> Image.Image:
    """A photo-like picture: a bright square on a dark ground (edges: the square's outline)."""
    pixels = np.full((64, 64, 3), 30, np.uint8)
    pixels[16:48, 16:48] = 220
    return Image.fromarray(pixels, "RGB")


def test_edges_from_a_photo_mark_its_outlines():
    edges = np.asarray(edge_map(photo()))[..., 0] > 0
    assert edges[16, 30] or edges[15, 30] or edges[17, 30]  # the top side of the square
    assert not edges[32, 32] and not edges[2, 2]  # flat inside and outside
    assert not np.asarray(edge_map(Image.new("RGB", (32, 32), (90, 90, 90)))).any()  # no edges in a flat picture


def test_a_panel_with_a_control_picture_generates_and_its_version_keeps_it(studio):
    mia = studio.add_character("Mia", "a young woman with a red scarf", png(synthetic_subject(1)))
    story = studio.create_story("Control")
    panel = studio.add_panel(story.id, "[Mia] raises her arm")
    plain = studio.generate_panel(panel.id)
    panel = studio.set_panel_control(panel.id, png(edge_picture(64)), "pose", 0.8)
    assert panel.control["kind"] == "pose" and panel.control["strength"] == 0.8 and panel.status == "outdated"
    version = studio.generate_panel(panel.id)
    assert version.settings["control"] == panel.control and mia.id in version.settings["subjects"]
    assert version.settings["controlnet_used"].endswith("tiny-controlnet")
    assert plain.settings["control"] == {} and plain.settings["controlnet_used"] is None
    with Image.open(version.image_path) as with_control, Image.open(plain.image_path) as without:
        assert np.abs(np.asarray(with_control, np.int16) - np.asarray(without, np.int16)).max() > 0
    # A new picture for the panel: the version still has (and shows) the one it was made with.
    studio.set_panel_control(panel.id, png(photo()), "edges", 1.0, edges_from_photo=True)
    kept = studio.control_picture(version.settings["control"])
    assert np.array_equal(np.asarray(kept), np.asarray(edge_picture(64)))
    assert studio.clear_panel_control(panel.id).control == {}


def test_strength_zero_equals_the_panel_without_control(studio):
    story = studio.create_story("Zero")
    panel = studio.add_panel(story.id, "a quiet street")
    without = studio.generate_panel(panel.id)
    studio.set_panel_control(panel.id, png(edge_picture(64)), "edges", 0.0)
    with_zero = studio.generate_panel(panel.id)
    with Image.open(without.image_path) as a, Image.open(with_zero.image_path) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_bad_control_input_is_refused_and_stores_nothing(studio):
    story = studio.create_story("Bad")
    panel = studio.add_panel(story.id, "a street")
    with pytest.raises(StudioError, match="control kind must be one of"):
        studio.set_panel_control(panel.id, png(edge_picture(64)), "normal")
    with pytest.raises(StudioError, match="between 0 and 2"):
        studio.set_panel_control(panel.id, png(edge_picture(64)), "pose", 3.0)
    with pytest.raises(StudioError, match="choose the kind 'edges'"):
        studio.set_panel_control(panel.id, png(photo()), "depth", edges_from_photo=True)
    with pytest.raises(ValueError, match="not a readable picture"):
        studio.set_panel_control(panel.id, b"not a picture", "pose")
    with pytest.raises(StudioError, match="no control picture"):
        studio.set_control_strength(panel.id, 0.5)
    assert studio.get_panel(panel.id).control == {} and not (studio.data_dir / "controls").exists()


def test_project_archives_carry_control_pictures(studio, public_pipe, tmp_path):
    story = studio.create_story("Carried")
    panel = studio.add_panel(story.id, "a street")
    studio.set_panel_control(panel.id, png(edge_picture(64, seed=3)), "scribble", 1.2)
    studio.generate_panel(panel.id)
    (archive,) = studio.export_story(story.id, "project")
    other = Studio(tmp_path / "other", public_pipe, preview=True)
    imported = other.panels(other.import_project(archive).id)[0]
    assert imported.control == studio.get_panel(panel.id).control
    assert np.array_equal(np.asarray(other.control_picture(imported.control)), np.asarray(edge_picture(64, seed=3)))
    version = other.versions(imported.id)[0]
    assert version.settings["control"] == imported.control


def test_a_drawn_scribble_becomes_white_strokes_on_black(studio):
    story = studio.create_story("Drawn")
    panel = studio.add_panel(story.id, "a cat on a wall")
    drawing = np.zeros((96, 96, 4), np.uint8)  # a transparent canvas, as the editor's
    drawing[40:44, 10:80] = (0, 0, 0, 255)  # one dark stroke
    panel = studio.set_panel_scribble(panel.id, Image.fromarray(drawing, "RGBA"), 0.7)
    assert panel.control["kind"] == "scribble" and panel.control["strength"] == 0.7
    stored = np.asarray(studio.control_picture(panel.control))[..., 0]
    assert stored[42, 40] == 255 and stored[10, 10] == 0 and (stored == 255).sum() == 4 * 70
    with pytest.raises(StudioError, match="the drawing is empty"):
        studio.set_panel_scribble(panel.id, Image.new("RGBA", (64, 64), (0, 0, 0, 0)))
    with pytest.raises(StudioError, match="draw the scribble first"):
        studio.set_panel_scribble(panel.id, None)
