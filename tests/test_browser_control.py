"""A panel with a control picture, in a real browser: upload it, generate, and the version keeps
it (preview mode: a tiny ControlNet made offline from the tiny UNet)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anystory.tiny_control import edge_picture

from .browser_support import app, browser, open_page, shot
from .ui_support import IGNORE_GRADIO_WARNINGS, gradio_temp, preview_pipe

__all__ = ["app", "browser", "gradio_temp", "preview_pipe"]  # fixtures used by name
pytestmark = [IGNORE_GRADIO_WARNINGS, pytest.mark.browser, pytest.mark.slow]


def test_a_panel_with_a_control_picture_generates_and_keeps_it_in_its_version(app, browser, tmp_path):
    from playwright.sync_api import expect

    studio, url = app
    story = studio.create_story("Posed")
    panel = studio.add_panel(story.id, "[Mia] raises her arm")
    picture = tmp_path / "pose.png"
    edge_picture(64, seed=4).save(picture)
    page = open_page(browser, url)
    page.locator("button[role=tab]:has-text('Storyboard')").first.click()
    page.locator("#control-part").get_by_text("Control picture").click()
    expect(page.locator("#control-summary")).to_contain_text("No control picture")
    page.locator("#control-upload input[type=file]").set_input_files(str(picture))
    expect(page.locator("#control-upload img")).to_be_visible()
    page.locator("#control-kind").get_by_text("pose").click()
    page.locator("#control-apply").click()
    expect(page.locator("#storyboard-status")).to_contain_text("follows this pose picture")
    expect(page.locator("#control-summary")).to_contain_text("pose")
    expect(page.locator("#control-current img")).to_be_visible()
    control = studio.get_panel(panel.id).control
    assert control["kind"] == "pose" and control["strength"] == 1.0
    page.locator("#generate-panel").click()
    expect(page.locator("#panel-status")).to_contain_text("Control picture: pose, strength 1", timeout=120_000)
    shot(page, "control-generated")
    (version,) = studio.versions(panel.id)
    assert version.settings["control"] == control
    kept = studio.control_picture(version.settings["control"])
    assert np.array_equal(np.asarray(kept), np.asarray(Image.open(picture).convert("RGB")))
    page.locator("#control-remove").click()
    expect(page.locator("#control-summary")).to_contain_text("No control picture")
    assert studio.get_panel(panel.id).control == {} and studio.versions(panel.id)[0].settings["control"] == control


def test_a_scribble_drawn_in_the_editor_becomes_the_panels_control_picture(app, browser):
    from playwright.sync_api import expect

    studio, url = app
    story = studio.create_story("Drawn")
    panel = studio.add_panel(story.id, "[Rex] jumps")
    page = open_page(browser, url)
    page.locator("button[role=tab]:has-text('Storyboard')").first.click()
    page.locator("#control-part").get_by_text("Control picture").click()
    page.locator("#control-sketch button[aria-label=Brush]").click()  # the editor's draw tool
    canvas = page.locator("#control-sketch canvas").last  # the drawing layer, over the background
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 60, cy)
    page.mouse.down()
    for step in range(1, 13):
        page.mouse.move(cx - 60 + 10 * step, cy + 2 * (step % 2), steps=3)
    page.mouse.up()
    page.locator("#control-use-sketch").click()
    expect(page.locator("#storyboard-status")).to_contain_text("follows your scribble")
    shot(page, "control-scribble")
    control = studio.get_panel(panel.id).control
    assert control["kind"] == "scribble"
    strokes = np.asarray(studio.control_picture(control))[..., 0] == 255
    assert strokes.any() and strokes.mean() < 0.2  # a stroke, not a filled canvas
