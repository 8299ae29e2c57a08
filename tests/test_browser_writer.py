"""The rough edges a first-time writer hits (issue 15), each seen in a real browser.

Preview-mode app on a temporary data folder with the example cast; screenshots go to
test-artifacts/ (gitignored).
"""

from __future__ import annotations

import pytest

from .browser_support import add_character, browser, fill, open_page, shot
from .ui_support import CAST, IGNORE_GRADIO_WARNINGS, gradio_temp, launch, preview_pipe, preview_studio

__all__ = ["browser", "gradio_temp", "preview_pipe"]  # fixtures used by name
pytestmark = [IGNORE_GRADIO_WARNINGS, pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def app(browser, gradio_temp, preview_pipe, tmp_path):
    studio = preview_studio(tmp_path / "data", preview_pipe)
    studio.add_example_cast()
    demo, url = launch(studio)
    try:
        yield studio, url
    finally:
        demo.close()


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
