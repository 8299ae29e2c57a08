"""The whole app: a banner in preview mode, the Characters and Storyboard tabs, the named API.

demo = build_app(studio)            # studio: anystory.studio.Studio
demo.launch(**launch_options(studio))
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from .api import register_api
from .characters import build_characters_tab
from .session import Sessions
from .storyboard import build_storyboard_tab

PREVIEW_BANNER = "Preview mode: tiny random model, images are not meaningful"
MAX_FILE_SIZE = "20mb"


def banner_html(text: str) -> str:
    return (
        '<div id="preview-banner" role="status" style="background:#fff3cd;color:#664d03;border:1px solid #ffda6a;'
        f'border-radius:8px;padding:10px 14px;font-weight:600">⚠ {text}</div>'
    )


def sessions_for(studio) -> Sessions:
    """The app's way to find each caller's Studio."""
    return studio if isinstance(studio, Sessions) else Sessions(studio)


def build_app(studio, *, example_cast_dir=None) -> gr.Blocks:
    """The Gradio app around one Studio; queued so that one generation runs at a time."""
    sessions = sessions_for(studio)
    with gr.Blocks(title="AnyStory Studio") as demo:
        if sessions.preview:
            gr.HTML(banner_html(PREVIEW_BANNER))
        gr.Markdown(
            "# AnyStory Studio\n"
            "Keep a cast of characters and draw them consistently across the panels of a story. "
            "Add characters in **Characters**, then write panels that name them as `[Name]` in **Storyboard**."
        )
        register_api(sessions)  # first, so that the named endpoints keep their names
        with gr.Tabs():
            with gr.Tab("Characters", id="characters", elem_id="tab-characters") as characters_item:
                characters = build_characters_tab(sessions, example_cast_dir=example_cast_dir)
            with gr.Tab("Storyboard", id="storyboard", elem_id="tab-storyboard") as storyboard_item:
                storyboard = build_storyboard_tab(sessions)

        private: dict[str, Any] = {"api_visibility": "private"}
        for tab, item in ((characters, characters_item), (storyboard, storyboard_item)):
            demo.load(tab.refresh, tab.inputs, tab.outputs, **private)
            item.select(tab.refresh, tab.inputs, tab.outputs, **private)
    demo.queue(default_concurrency_limit=1)
    return demo


def launch_options(studio) -> dict[str, Any]:
    """Safe launch settings: 20 MB uploads, and only the app's own exports folder served."""
    return {"max_file_size": MAX_FILE_SIZE, "allowed_paths": sessions_for(studio).served_folders}


__all__ = ["PREVIEW_BANNER", "build_app", "launch_options"]
