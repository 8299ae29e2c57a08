"""The whole app: a banner in preview mode, the Characters and Storyboard tabs, the named API.

demo = build_app(studio)            # studio: anystory.studio.Studio
demo.launch(**launch_options(studio))
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from . import gpu_jobs
from .api import register_api
from .characters import build_characters_tab
from .session import Sessions
from .storyboard import build_storyboard_tab
from .workspace import WorkspaceBar, wire_workspace

PREVIEW_BANNER = "Preview mode: tiny random model, images are not meaningful"
MAX_FILE_SIZE = "20mb"


def banner_html(text: str) -> str:
    return (
        '<div id="preview-banner" role="status" style="background:#fff3cd;color:#664d03;border:1px solid #ffda6a;'
        f'border-radius:8px;padding:10px 14px;font-weight:600">⚠ {text}</div>'
    )


MODEL_LOADING = "Model loading… the page works meanwhile; generating and encoding start when it has loaded"
MODEL_POLL_S = 1.0  # how often the page asks whether the model has loaded


def model_status_html(state: str) -> str:
    """What the page says about the model: nothing once it is ready."""
    if state == "loading":
        text = MODEL_LOADING
    elif state.startswith("failed"):
        text = "The model " + state.replace("failed: ", "failed to load: ", 1)
    else:
        return ""
    return (
        '<div id="model-status" role="status" style="background:#e7f1ff;color:#084298;border:1px solid #9ec5fe;'
        f'border-radius:8px;padding:8px 14px">{html.escape(text)}</div>'
    )


def model_status_line(sessions: Sessions) -> tuple[gr.HTML, gr.Timer]:
    """A line that says "model loading…" until the model has loaded, and the timer that asks."""
    state = sessions.model_state
    return gr.HTML(model_status_html(state)), gr.Timer(MODEL_POLL_S, active=state == "loading")


def wire_model_status(sessions: Sessions, status: gr.HTML, timer: gr.Timer, refreshes: list) -> None:
    """The line goes once the model has loaded, and the tabs redraw then (the example cast is
    added when the model can encode it)."""
    private: dict[str, Any] = {"api_visibility": "private"}

    def poll():
        state = sessions.model_state
        return model_status_html(state), gr.Timer(active=state == "loading")

    timer.tick(poll, None, [status, timer], **private)
    for refresh, inputs, outputs in refreshes:
        status.change(refresh, inputs, outputs, **private)  # once: when the line changes


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
        model_status, model_timer = model_status_line(sessions)
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
        wire_model_status(sessions, model_status, model_timer, refreshes)
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


__all__ = ["MODEL_LOADING", "PREVIEW_BANNER", "build_app", "launch_options", "model_status_html"]
