"""The page of a preview start served before the model has loaded (issue 19), in a real browser:
it says "Model loading…", the line goes once the model is there, and the example cast (encoded
then) appears without a reload. The model's load is held on an event, not raced."""

from __future__ import annotations

import threading

import pytest

from anystory.model_loading import ModelLoading
from anystory.studio import Studio

from .browser_support import browser, open_page, shot
from .ui_support import IGNORE_GRADIO_WARNINGS, gradio_temp, launch, preview_pipe

__all__ = ["browser", "gradio_temp", "preview_pipe"]  # fixtures used by name
pytestmark = [IGNORE_GRADIO_WARNINGS, pytest.mark.browser, pytest.mark.slow]


def test_the_page_says_model_loading_then_shows_the_cast(browser, gradio_temp, preview_pipe, tmp_path):
    from playwright.sync_api import expect

    release = threading.Event()

    def load():
        release.wait(120)
        return preview_pipe

    loading = ModelLoading(load, default_router="prompt")
    studio = Studio(tmp_path / "data", loading, preview=True)
    loading.then(lambda pipeline: studio.add_example_cast())  # as app.py does in an empty folder
    loading.start()
    demo, url = launch(studio)
    try:
        page = open_page(browser, url)
        expect(page.locator("#model-status")).to_contain_text("Model loading")
        shot(page, "model-loading")
        release.set()
        expect(page.locator("#model-status")).to_have_count(0)
        expect(page.locator("#cast-table")).to_contain_text("Mia")
        shot(page, "model-loaded")
        page.close()
    finally:
        release.set()
        demo.close()
        studio.close()
