"""Shared by the browser tests: Debian's chromium through Playwright, and the writer's gestures."""

from __future__ import annotations

from pathlib import Path

import pytest

from .ui_support import ARTIFACTS, launch, preview_studio

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SLOW = 60_000  # ms: generous waits for a busy CI machine


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser test needs Debian's chromium "
            "(apt-get install -y chromium chromium-driver; .ci/run installs it). Never `playwright install`."
        )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=SLOW)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def app(browser, gradio_temp, preview_pipe, tmp_path):
    """A preview-mode app on a temporary data folder with the example cast: (studio, url)."""
    studio = preview_studio(tmp_path / "data", preview_pipe)
    studio.add_example_cast()
    demo, url = launch(studio)
    try:
        yield studio, url
    finally:
        demo.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=True)


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(SLOW)
    page.goto(url)
    page.locator("#preview-banner").wait_for()
    return page


def fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def add_character(page, name: str, description: str, picture: Path) -> None:
    from playwright.sync_api import expect

    title = page.locator("#character-form-title")
    if "New character" not in title.inner_text():
        page.locator("#new-character").click()
        expect(title).to_contain_text("New character")
    fill(page, "character-name", name)
    fill(page, "character-description", description)
    page.locator("#character-picture input[type=file]").set_input_files(str(picture))
    expect(page.locator("#character-picture img")).to_be_visible()
    page.locator("#save-character").click()
    expect(page.locator("#characters-status")).to_contain_text(f"added {name}")


def visit(context, url: str):
    page = context.new_page()
    page.set_default_timeout(SLOW)
    page.goto(url)
    page.locator("#preview-banner").wait_for()
    return page
