"""The whole app: a banner in preview mode, the Characters and Storyboard tabs, the named API.

demo = build_app(studio)            # studio: anystory.studio.Studio
demo.launch(**launch_options(studio))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from .api import register_api
from .characters import EXAMPLE_CAST_DIR, add_example_cast, build_characters_tab
from .storyboard import build_storyboard_tab

PREVIEW_BANNER = "Preview mode: tiny random model, images are not meaningful"
MAX_FILE_SIZE = "20mb"


def banner_html(text: str) -> str:
    return (
        '<div id="preview-banner" role="status" style="background:#fff3cd;color:#664d03;border:1px solid #ffda6a;'
        f'border-radius:8px;padding:10px 14px;font-weight:600">⚠ {text}</div>'
    )


def build_app(studio, *, example_cast_dir: Path | None = EXAMPLE_CAST_DIR) -> gr.Blocks:
    """The Gradio app around one Studio; queued so that one generation runs at a time."""
    with gr.Blocks(title="AnyStory Studio") as demo:
        if studio.preview:
            gr.HTML(banner_html(PREVIEW_BANNER))
        gr.Markdown(
            "# AnyStory Studio\n"
            "Keep a cast of characters and draw them consistently across the panels of a story. "
            "Add characters in **Characters**, then write panels that name them as `[Name]` in **Storyboard**."
        )
        register_api(studio)  # first, so that the named endpoints keep their names
        with gr.Tabs():
            with gr.Tab("Characters", id="characters", elem_id="tab-characters") as characters_item:
                characters = build_characters_tab(studio, example_cast_dir=example_cast_dir)
            with gr.Tab("Storyboard", id="storyboard", elem_id="tab-storyboard") as storyboard_item:
                storyboard = build_storyboard_tab(studio)

        private: dict[str, Any] = {"api_visibility": "private"}
        demo.load(characters.refresh, characters.refresh_inputs, characters.refresh_outputs, **private)
        demo.load(storyboard.refresh, storyboard.inputs, storyboard.outputs, **private)
        characters_item.select(characters.refresh, characters.refresh_inputs, characters.refresh_outputs, **private)
        storyboard_item.select(storyboard.refresh, storyboard.inputs, storyboard.outputs, **private)
    demo.queue(default_concurrency_limit=1)
    return demo


def launch_options(studio) -> dict[str, Any]:
    """Safe launch settings: 20 MB uploads, and only the app's own exports folder served."""
    studio.exports_dir.mkdir(parents=True, exist_ok=True)
    return {"max_file_size": MAX_FILE_SIZE, "allowed_paths": [str(studio.exports_dir)]}


__all__ = ["PREVIEW_BANNER", "add_example_cast", "build_app", "launch_options"]
