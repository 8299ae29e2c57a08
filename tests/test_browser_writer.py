"""The rough edges a first-time writer hits (issue 15), each seen in a real browser.

Preview-mode app on a temporary data folder with the example cast; screenshots go to
test-artifacts/ (gitignored).
"""

from __future__ import annotations

import pytest

from .browser_support import add_character, app, browser, fill, open_page, shot
from .ui_support import CAST, IGNORE_GRADIO_WARNINGS, gradio_temp, preview_pipe

__all__ = ["app", "browser", "gradio_temp", "preview_pipe"]  # fixtures used by name
pytestmark = [IGNORE_GRADIO_WARNINGS, pytest.mark.browser, pytest.mark.slow]


@pytest.mark.hostile
def test_a_bad_picture_is_refused_in_words_and_the_tab_keeps_working(app, browser, tmp_path):
    from playwright.sync_api import expect

    studio, url = app
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes((CAST / "mia.png").read_bytes()[:64] + b"garbage" * 200)  # a valid header, then noise
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture at all")
    page = open_page(browser, url)
    status = page.locator("#characters-status")
    for bad in (corrupt, text):
        fill(page, "character-name", "Zed")
        page.locator("#character-picture input[type=file]").set_input_files(str(bad))
        expect(status).to_contain_text("is not a readable picture")
        page.locator("#save-character").click()
        expect(status).to_contain_text("choose a reference picture")  # the bad one was taken away
        expect(page.locator(".error, [data-testid=error]")).to_have_count(0)
        shot(page, f"writer-1-bad-{bad.suffix[1:]}")
        page.locator("#new-character").click()
    assert "Zed" not in studio.character_names()
    expect(page.locator("#cast-gallery")).to_contain_text("Mia · ready")
    add_character(page, "Zed", "a tall man in a grey coat", CAST / "bolt.png")  # the tab still works
    expect(page.locator("#cast-gallery")).to_contain_text("Zed · ready")


def storyboard(page):
    page.locator("button[role=tab]:has-text('Storyboard')").first.click()


def test_an_empty_storyboard_offers_only_new_story(app, browser):
    from playwright.sync_api import expect

    _, url = app
    page = open_page(browser, url)
    storyboard(page)
    expect(page.locator("#panel-status")).to_contain_text("No story yet: type a title above and click New story")
    for button in ("add-panel", "duplicate-panel", "delete-panel", "save-panel", "generate-panel", "generate-all"):
        expect(page.locator(f"#{button}")).to_be_disabled()
    expect(page.locator("#create-story")).to_be_enabled()
    title_box, hint = page.locator("#story-title").bounding_box(), page.locator("#panel-status").bounding_box()
    assert abs(hint["y"] - title_box["y"]) < 250  # the hint sits by the title box, not a screen away
    shot(page, "writer-11-empty")
    fill(page, "story-title", "First")
    page.locator("#create-story").click()
    expect(page.locator("#generate-panel")).to_be_enabled()


def test_the_editor_fits_one_screen(app, browser):
    from playwright.sync_api import expect

    studio, url = app
    story = studio.create_story("One screen")
    studio.add_panel(story.id, "[Mia] reads")
    page = open_page(browser, url)
    storyboard(page)
    expect(page.locator("#panel-prompt textarea")).to_have_value("[Mia] reads")
    for part in ("panel-strip", "panel-prompt", "generate-panel", "generate-all", "active-image"):
        box = page.locator(f"#{part}").bounding_box()
        assert box is not None and box["y"] + min(box["height"], 80) <= 1000, (part, box)  # seen without scrolling
    shot(page, "writer-11-one-screen")


def test_named_characters_are_shown_in_the_panel(app, browser):
    from playwright.sync_api import expect

    studio, url = app
    story = studio.create_story("Named")
    studio.add_panel(story.id, "[Mia] waves at the sea")
    page = open_page(browser, url)
    storyboard(page)
    expect(page.locator("#panel-named")).to_contain_text("In this panel (named in the prompt): Mia")
    ticks = page.locator("#panel-characters")
    expect(ticks).to_contain_text("Rex")
    expect(ticks).not_to_contain_text("Mia")  # no empty box that would say Mia is not in the panel
    shot(page, "writer-8-named")


def test_panels_that_name_unknown_characters_need_attention(app, browser):
    from playwright.sync_api import expect

    studio, url = app
    story = studio.create_story("Stale")
    studio.add_panel(story.id, "[Rex] digs")
    page = open_page(browser, url)
    storyboard(page)
    status = page.locator("#storyboard-status")
    page.locator("#add-panel").click()
    expect(status).to_contain_text("added panel 2")
    fill(page, "panel-prompt", "[Nobody] waves")
    page.locator("#save-panel").click()
    expect(status).to_contain_text("saved panel 2 — needs attention: [Nobody] is not in the cast")
    expect(page.locator("#panel-strip")).to_contain_text("2 · needs attention")
    expect(page.locator("#panel-status")).to_contain_text("needs attention — [Nobody] is not in the cast")

    # delete Rex in the Characters tab: panel 1 needs attention too
    page.locator("button[role=tab]:has-text('Characters')").first.click()
    page.locator("#cast-gallery").get_by_text("Rex · ready").click()
    expect(page.locator("#character-form-title")).to_contain_text("Editing Rex")  # a busy server answers late
    page.locator("#delete-character").click()
    page.locator("#confirm-delete").click()
    expect(page.locator("#characters-status")).to_contain_text("deleted Rex")
    storyboard(page)
    expect(page.locator("#panel-strip")).to_contain_text("1 · needs attention")
    page.locator("#generate-all").click()
    expect(status).to_contain_text("nothing generated: 2 panel(s) need attention")
    expect(status).to_contain_text("skipped panel 1: [Rex] is not in the cast")
    expect(status).to_contain_text("skipped panel 2: [Nobody] is not in the cast")
    shot(page, "writer-4-attention")


def test_the_active_version_and_the_overlay_read_at_a_glance(app, browser):
    from playwright.sync_api import expect

    studio, url = app
    story = studio.create_story("Versions")
    panel = studio.add_panel(story.id, "[Mia] and [Rex] at the beach")
    studio.generate_panel(panel.id)
    studio.reroll_panel(panel.id)
    page = open_page(browser, url)
    storyboard(page)
    versions = page.locator("#version-gallery")
    expect(versions).to_contain_text("✓ v2 active")
    expect(page.locator("#make-active")).to_be_disabled()  # the inspected version is the active one
    versions.locator("img").first.click()
    expect(page.locator("#inspected-version")).to_contain_text("Inspecting v1 (not active)")
    expect(page.locator("#make-active")).to_be_enabled()

    legend = page.locator("#overlay-legend")
    for name in ("Mia", "Rex", "background"):
        expect(legend).to_contain_text(name)
    assert page.locator(".legend-entry").count() == 3  # one legend: the picture has none drawn in
    before = page.locator("#overlay-image img").get_attribute("src")
    page.locator("#overlay-shown").get_by_label("Mia").uncheck()
    expect(legend).not_to_contain_text("Mia")
    expect(page.locator("#overlay-image img")).not_to_have_attribute("src", before)
    shot(page, "writer-6-overlay")


def test_generate_all_reports_on_the_strip_which_panel_is_drawn(app, browser):
    from playwright.sync_api import expect

    from .ui_support import HeldAtFirstStep

    studio, url = app
    held = studio.pipeline = HeldAtFirstStep(studio.pipeline)
    story = studio.create_story("Progress")
    for prompt in ("[Mia] reads", "[Rex] sleeps"):
        studio.add_panel(story.id, prompt)
    page = open_page(browser, url)
    storyboard(page)
    status = page.locator("#storyboard-status")
    page.locator("#save-panel").click()
    expect(status).to_contain_text("saved panel 1")  # a line from before the run...
    page.locator("#generate-all").click()
    expect(status).to_contain_text("Generating the panels that need it")  # ...is not left standing
    assert held.reached.wait(60)
    expect(page.locator("#panel-strip")).to_contain_text("panel 1 of 2")  # progress drawn on the strip
    expect(page.locator("#active-image")).not_to_contain_text("panel 1 of 2")
    shot(page, "writer-9-progress")
    page.locator("#cancel-generation").click()
    expect(status).to_contain_text("generation cancelled")


def test_the_cast_table_shows_where_each_character_is_used_uncut(app, browser):
    from playwright.sync_api import expect

    studio, url = app
    story = studio.create_story("The lighthouse")
    for prompt in ("[Mia] climbs the stairs", "[Mia] and [Rex] at the top"):
        studio.add_panel(story.id, prompt)
    page = open_page(browser, url)
    table = page.locator("#cast-table")
    expect(table).to_contain_text("The lighthouse: panels 1, 2")
    expect(table).to_contain_text("The lighthouse: panel 2")
    cut = page.evaluate(
        """() => [...document.querySelectorAll('#cast-table td, #cast-table th')]
               .filter(c => c.innerText.trim() && c.scrollWidth > c.clientWidth + 1).map(c => c.innerText)"""
    )
    assert cut == [], cut
    shot(page, "writer-11-cast-table")


def test_adding_a_line_shows_its_bubble_and_the_toggle_shows_the_clean_image(app, browser):
    """Issue 16: a writer adds a line in the browser and sees its bubble over the active image."""
    from playwright.sync_api import expect

    studio, url = app
    story = studio.create_story("Bubbles")
    panel = studio.add_panel(story.id, "[Mia] waves", width=256, height=256)
    studio.generate_panel(panel.id)
    page = open_page(browser, url)
    storyboard(page)
    image = page.locator("#active-image img")
    expect(image).to_be_visible()
    clean = image.get_attribute("src")
    page.locator("#line-speaker input").click()
    page.get_by_role("option", name="Mia").click()
    fill(page, "line-text", "Hello, Rex!")
    page.locator("#add-line").click()
    expect(page.locator("#line-list")).to_contain_text("Mia (speech): Hello, Rex!")
    expect(image).not_to_have_attribute("src", clean)
    assert [line["text"] for line in studio.panel_lines(panel.id)] == ["Hello, Rex!"]
    assert studio.get_panel(panel.id).status == "ready"  # the line outdates nothing
    shot(page, "writer-bubbles")
    before = studio.panel_bubbles(panel.id)[0].box
    page.locator("#line-dx input[type=number]").fill("0.1")
    page.locator("#nudge-line").click()
    expect(page.locator("#storyboard-status")).to_contain_text("moved the bubble")
    assert studio.panel_lines(panel.id)[0]["offset"] == [0.1, 0.0]
    assert studio.panel_bubbles(panel.id)[0].box[0] in (before[0] + 26, 256 - (before[2] - before[0]))
    with_bubble = image.get_attribute("src")
    page.locator("#show-bubbles input").uncheck()
    expect(image).not_to_have_attribute("src", with_bubble)
    # the live page preview: a manga page, bubbles and all
    page.locator("#files-part").get_by_text("Export and import").click()
    page.locator("#page-layout input").click()
    page.get_by_role("option", name="manga: right to left").click()
    page.locator("#title-page input").check()
    page.locator("#preview-pages").click()
    expect(page.locator("#storyboard-status")).to_contain_text("2 page(s)")
    expect(page.locator("#page-preview img")).to_have_count(2)
    shot(page, "writer-page-preview")


def test_a_style_picked_in_the_browser_is_what_the_model_saw(app, browser):
    from playwright.sync_api import expect

    studio, url = app
    story = studio.create_story("Styled")
    panel = studio.add_panel(story.id, "[Mia] waves")
    page = open_page(browser, url)
    storyboard(page)
    page.locator("#style-part").get_by_text("Style and negative prompt").click()
    page.locator("#story-style input").click()
    page.get_by_role("option", name="Watercolour picture book").click()
    fill(page, "panel-negative", "blurry hands")
    page.locator("#save-style").click()
    expect(page.locator("#storyboard-status")).to_contain_text("saved the style")
    assert studio.get_story(story.id).style == "watercolour" and studio.get_panel(panel.id).negative == "blurry hands"
    page.locator("#generate-panel").click()
    expect(page.locator("#panel-status")).to_contain_text("children's picture book illustration", timeout=120_000)
    expect(page.locator("#panel-status")).to_contain_text("blurry hands")


def test_a_pasted_script_becomes_panels_and_an_unknown_name_changes_nothing(app, browser):
    from playwright.sync_api import expect

    studio, url = app
    page = open_page(browser, url)
    storyboard(page)
    page.locator("#files-part").get_by_text("Export and import").click()
    status = page.locator("#storyboard-status")
    fill(page, "script-text", "Mia meets Bob.\nBob: Hi!")
    page.locator("#import-script").click()
    expect(status).to_contain_text("not in the cast: Bob (panel 1)")
    assert studio.stories() == []
    fill(page, "script-text", "The girl walks Rex.\nMia: Come on!\n\nRex sleeps.\nNarrator: Later.")
    fill(page, "script-aliases", "the girl = Mia")
    page.locator("#import-script").click()
    expect(status).to_contain_text("2 panel(s)")
    [story] = studio.stories()
    assert [p.prompt for p in studio.panels(story.id)] == ["[Mia] walks [Rex].", "[Rex] sleeps."]
    expect(page.locator("#line-list")).to_contain_text("Mia (speech): Come on!")
