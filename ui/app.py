"""The whole app: a banner in preview mode, the Characters and Storyboard tabs, the named API.

demo = build_app(studio)            # studio: anystory.studio.Studio
demo.launch(**launch_options(studio))
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from . import gpu_jobs
from .api import register_api
from .characters import build_characters_tab
from .session import Sessions
from .storyboard import build_storyboard_tab
from .workspace import WorkspaceBar, wire_workspace

PREVIEW_BANNER = "Preview mode: a small model trained on a toy world of shapes, not a real SDXL"
MAX_FILE_SIZE = "20mb"


def banner_html(text: str) -> str:
    return (
        '<div id="preview-banner" role="status" style="background:#fff3cd;color:#664d03;border:1px solid #ffda6a;'
        f'border-radius:8px;padding:10px 14px;font-weight:600">⚠ {text}</div>'
    )


def sessions_for(studio) -> Sessions:
    """The app's way to find each caller's Studio: a Studio (one for everyone) or Sessions."""
    return studio if isinstance(studio, Sessions) else Sessions(studio)


def build_app(studio, *, example_cast_dir=None) -> gr.Blocks:
    """The Gradio app around one Studio (or WorkspaceSessions: a Studio per visitor); queued so
    that one generation runs at a time."""
    sessions = sessions_for(studio)
    gpu_jobs.serve(sessions)
    with gr.Blocks(title="AnyStory Studio") as demo:
        if sessions.preview:
            gr.HTML(banner_html(PREVIEW_BANNER))
        gr.Markdown(
            "# AnyStory Studio\n"
            "Keep a cast of characters and draw them consistently across the panels of a story. "
            "Add characters in **Characters**, then write panels that name them as `[Name]` in **Storyboard**."
        )
        register_api(sessions)  # first, so that the named endpoints keep their names
        bar = WorkspaceBar.create(sessions, sessions.browser_secret) if sessions.workspaces else None
        with gr.Tabs():
            with gr.Tab("Characters", id="characters", elem_id="tab-characters") as characters_item:
                characters = build_characters_tab(sessions, example_cast_dir=example_cast_dir)
            with gr.Tab("Storyboard", id="storyboard", elem_id="tab-storyboard") as storyboard_item:
                storyboard = build_storyboard_tab(sessions)

        private: dict[str, Any] = {"api_visibility": "private"}
        refreshes = [(tab.refresh, tab.inputs, tab.outputs) for tab in (characters, storyboard)]
        if bar is not None:
            wire_workspace(demo, bar, sessions, refreshes)  # the workspace is bound before the tabs draw
        else:
            for refresh in refreshes:
                demo.load(*refresh, **private)
        for (refresh, inputs, outputs), item in zip(refreshes, (characters_item, storyboard_item)):
            item.select(refresh, inputs, outputs, **private)
    demo.queue(default_concurrency_limit=1)  # model jobs wait in the Studio's own line (common.MODEL)
    return demo


def launch_options(studio) -> dict[str, Any]:
    """Safe launch settings: 20 MB uploads; only the local app's own exports folder is served by
    path, and with workspaces nothing of the data folder is."""
    sessions = sessions_for(studio)
    return {
        "max_file_size": MAX_FILE_SIZE,
        "allowed_paths": sessions.served_folders,
        "blocked_paths": sessions.blocked_folders,
    }


__all__ = ["PREVIEW_BANNER", "build_app", "launch_options"]
