"""A real browser (Debian chromium via Playwright) drives the app through the writer's loop.

Preview-mode Studio on a temporary data folder: add two characters in the Characters tab, write a
two-panel story naming both, generate all, look at both images and the overlay legend, re-roll
panel 2 and switch its active version, export a PDF, export and re-import the project archive,
then restart the app on the same folder and find everything there. Screenshots go to
test-artifacts/ (gitignored). Without /usr/bin/chromium the test FAILS: CI installs it.
"""

from __future__ import annotations

import re

import pytest

from .browser_support import SLOW, add_character, browser, fill, open_page, shot, visit
from .ui_support import CAST, IGNORE_GRADIO_WARNINGS, HeldAtFirstStep, gradio_temp, launch, preview_pipe, preview_studio

__all__ = ["browser", "gradio_temp", "preview_pipe"]  # fixtures used by name
pytestmark = [IGNORE_GRADIO_WARNINGS, pytest.mark.browser, pytest.mark.slow]

def test_writer_loop_in_a_real_browser(browser, gradio_temp, preview_pipe, tmp_path):
    from playwright.sync_api import expect

    data_dir = tmp_path / "data"
    studio = preview_studio(data_dir, preview_pipe)
    demo, url = launch(studio)
    try:
        page = open_page(browser, url)
        expect(page.locator("#preview-banner")).to_contain_text(
            "Preview mode: a small model trained on a toy world of shapes"
        )

        # -- Characters tab: two characters; a missing optional package is a clear message --
        add_character(page, "Mia", "a young girl with a red scarf", CAST / "mia.png")
        page.locator("#auto-mask").click()
        expect(page.locator("#characters-status")).to_contain_text("rembg")
        add_character(page, "Rex", "a small brown dog", CAST / "rex.png")
        gallery = page.locator("#cast-gallery")
        expect(gallery).to_contain_text("Mia · ready")
        expect(gallery).to_contain_text("Rex · ready")
        shot(page, "1-characters")

        # -- Storyboard: a two-panel story naming both --
        page.locator("#tab-storyboard-button, button[role=tab]:has-text('Storyboard')").first.click()
        fill(page, "story-title", "The walk")
        page.locator("#create-story").click()
        status = page.locator("#storyboard-status")
        expect(status).to_contain_text("created “The walk”")
        fill(page, "panel-prompt", "[Mia] walks [Rex] in the park")
        page.locator("#save-panel").click()
        expect(status).to_contain_text("saved panel 1")
        page.locator("#add-panel").click()
        expect(status).to_contain_text("added panel 2")
        fill(page, "panel-prompt", "[Rex] sleeps next to [Mia]")
        page.locator("#generate-all").click()
        expect(status).to_contain_text("generated 2 panel(s)")
        strip = page.locator("#panel-strip")
        expect(strip.locator("img")).to_have_count(2)
        expect(strip).to_contain_text("1 · ready")
        expect(strip).to_contain_text("2 · ready")
        expect(page.locator("#active-image img")).to_be_visible()
        expect(page.locator("#overlay-image img")).to_be_visible()
        legend = page.locator("#overlay-legend")
        expect(legend).to_contain_text("Rex")
        expect(legend).to_contain_text("Mia")
        expect(legend).to_contain_text("background")
        shot(page, "2-generated")

        # -- Re-roll panel 2, then make its first version active again --
        panels = studio.panels(studio.stories()[0].id)
        first_version = panels[1].active_version_id
        page.locator("#reroll-panel").click()
        expect(status).to_contain_text("re-rolled panel 2")
        versions = page.locator("#version-gallery")
        expect(versions.locator("img")).to_have_count(2)
        assert studio.get_panel(panels[1].id).active_version_id != first_version
        versions.locator("img").first.click()
        expect(page.locator("#inspected-version")).to_contain_text("Inspecting v1 (not active)")
        page.locator("#make-active").click()
        expect(status).to_contain_text("made it the active version")
        expect(page.locator("#inspected-version")).to_contain_text("Inspecting v1 (the active version)")
        restored = studio.get_panel(panels[1].id)
        assert restored.active_version_id == first_version and restored.status == "ready"
        assert restored.seed == panels[1].seed  # the settings that made v1 are back
        expect(page.locator("#panel-seed input")).to_have_value(str(panels[1].seed))
        assert studio.get_panel(panels[0].id).active_version_id == panels[0].active_version_id
        shot(page, "3-versions")

        # -- Export a PDF, a PNG strip and PNG pages (each keeps its own file), the project archive; import it --
        exports = data_dir / "exports"
        page.locator("#files-part").get_by_text("Export and import").click()  # the part opens
        for choice, kind, suffix in (
            ("PDF", "pdf", ".pdf"),
            ("PNG strip", "strip", ".png"),
            ("PNG page grid", "pages", ".png"),
        ):
            page.locator("#export-format").get_by_text(choice, exact=True).click()
            page.locator("#export-story").click()
            expect(status).to_contain_text(
                re.compile(rf"exported The walk - {kind} - [0-9-]+ [0-9]+{re.escape(suffix)}")
            )
            expect(page.locator("#exported-files a").first).to_have_attribute(
                "href", re.compile(rf"{kind}.*{re.escape(suffix)}$")
            )
        (pdf,) = exports.glob("The walk - pdf - *.pdf")
        assert pdf.read_bytes().startswith(b"%PDF")
        assert (
            len(list(exports.glob("The walk - strip - *.png")))
            == 1
            == len(list(exports.glob("The walk - pages - *.png")))
        )
        page.locator("#export-format").get_by_text("Project archive", exact=False).click()
        page.locator("#export-story").click()
        expect(status).to_contain_text("exported The walk - project - ")
        (archive,) = exports.glob("The walk - project - *.zip")
        page.locator("#project-archive input[type=file]").set_input_files(str(archive))
        page.locator("#import-project").click()
        expect(status).to_contain_text("imported “The walk”")
        expect(page.locator("#panel-strip img")).to_have_count(2)
        shot(page, "4-imported")
        assert [s.title for s in studio.stories()] == ["The walk", "The walk"]
        page.close()
    finally:
        demo.close()

    # -- Restart on the same data folder: everything is still there --
    studio = preview_studio(data_dir, preview_pipe)
    demo, url = launch(studio)
    try:
        page = open_page(browser, url)
        expect(page.locator("#cast-gallery")).to_contain_text("Mia · ready")
        expect(page.locator("#cast-gallery")).to_contain_text("Rex · ready")
        page.locator("button[role=tab]:has-text('Storyboard')").first.click()
        expect(page.locator("#panel-strip img")).to_have_count(2)
        expect(page.locator("#panel-strip")).to_contain_text("2 · ready")
        page.locator("#panel-strip img").nth(1).click()
        expect(page.locator("#inspected-version")).to_contain_text(re.compile(r"Inspecting v1 \(the active version\)"))
        expect(page.locator("#overlay-legend")).to_contain_text("Mia")
        shot(page, "5-restarted")
        stories = studio.stories()
        assert [s.title for s in stories] == ["The walk", "The walk"]
        for story in stories:
            assert [p.status for p in studio.panels(story.id)] == ["ready", "ready"]
        assert studio.encode_count == 0  # encodings were read from disk, not made again
        page.close()
    finally:
        demo.close()


@pytest.mark.hostile
def test_cancel_stops_a_running_generation(browser, gradio_temp, preview_pipe, tmp_path):
    from playwright.sync_api import expect

    studio = preview_studio(tmp_path / "data", preview_pipe)
    studio.add_example_cast()
    held = studio.pipeline = HeldAtFirstStep(preview_pipe)
    story = studio.create_story("Slow")
    panel = studio.add_panel(story.id, "[Rex] runs", steps=20)
    demo, url = launch(studio)
    try:
        page = open_page(browser, url)
        page.locator("button[role=tab]:has-text('Storyboard')").first.click()
        expect(page.locator("#panel-prompt textarea")).to_have_value("[Rex] runs")
        page.locator("#generate-panel").click()
        assert held.reached.wait(timeout=SLOW / 1000), "the generation never reached its first step"
        page.locator("#cancel-generation").click()
        expect(page.get_by_text("Cancelling: the generation stops after the current step.")).to_be_visible()  # a toast
        status = page.locator("#storyboard-status")
        expect(status).to_contain_text("generation cancelled; the panel keeps its earlier versions")
        expect(page.locator("#panel-status")).to_contain_text("failed")
        shot(page, "6-cancelled")
        after = studio.get_panel(panel.id)
        assert after.status == "failed" and after.active_version_id is None
        page.close()
    finally:
        demo.close()


def test_workspaces_keep_visitors_apart(browser, gradio_temp, preview_pipe, tmp_path):
    """Two browsers (two Playwright contexts) on one app with workspaces: what one adds the other
    never sees; both start with the example cast; a reload keeps your work; deleting your
    workspace removes only yours."""
    from playwright.sync_api import expect

    from anystory.limits import Limits
    from anystory.workspaces import Workspaces
    from ui.session import WorkspaceSessions

    workspaces = Workspaces(tmp_path / "root", preview_pipe, preview=True, limits=Limits.hosted())
    sessions = WorkspaceSessions(workspaces)
    demo, url = launch(sessions)
    try:
        first, second = (browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(2))
        a, b = (visit(context, url) for context in (first, second))
        for page in (a, b):
            for name in ("Mia", "Rex", "Bolt"):
                expect(page.locator("#cast-gallery")).to_contain_text(f"{name} · ready")
        add_character(a, "Zed", "a tall man in a grey coat", CAST / "bolt.png")
        expect(a.locator("#cast-gallery")).to_contain_text("Zed · ready")
        b.reload()
        b.locator("#preview-banner").wait_for()
        expect(b.locator("#cast-gallery")).to_contain_text("Mia · ready")
        expect(b.locator("#cast-gallery")).not_to_contain_text("Zed")
        a.reload()  # the same browser finds the same workspace
        a.locator("#preview-banner").wait_for()
        expect(a.locator("#cast-gallery")).to_contain_text("Zed · ready")
        expect(a.locator("#workspace-status")).to_contain_text("Welcome back")
        shot(a, "7-workspace-a")

        a.locator("#workspace-bar").click()
        a.locator("#workspace-delete").click()
        a.locator("#workspace-confirm-delete").click()
        expect(a.locator("#workspace-status")).to_contain_text("your workspace was deleted")
        expect(a.locator("#cast-gallery")).not_to_contain_text("Zed")
        expect(a.locator("#cast-gallery")).to_contain_text("Mia · ready")
        shot(a, "8-workspace-deleted")
        assert workspaces.count() == 2  # b's and a's new one
        b.reload()
        b.locator("#preview-banner").wait_for()
        expect(b.locator("#workspace-status")).to_contain_text("Welcome back")
        first.close()
        second.close()
    finally:
        demo.close()
