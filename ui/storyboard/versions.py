"""Versions and the router's overlay: inspect a kept version, make it active, redraw the overlay
for another opacity, layer resolution or step range."""

from __future__ import annotations

import gradio as gr

from ..common import notes_markdown, shows_errors
from ..session import Sessions
from .layout import StoryboardLayout
from .panels import PRIVATE
from .view import StoryboardView


def wire_versions(tab: StoryboardLayout, view: StoryboardView, sessions: Sessions) -> None:
    status, inspector, overlay = tab.status, tab.inspector, tab.overlay
    story_pick, panel_pick = tab.bar.story_pick, tab.strip.panel_pick

    @shows_errors(status)
    def pick_version(story_id, panel_id, ids, evt: gr.SelectData, request: gr.Request) -> dict:
        return {**view.render(sessions.studio(request), story_id, panel_id, ids[evt.index]), status: ""}

    @shows_errors(status)
    def activate(story_id, panel_id, version_id, request: gr.Request) -> dict:
        if panel_id is None or version_id is None:
            raise ValueError("click a version first")
        studio = sessions.studio(request)
        studio.set_active_version(panel_id, version_id, restore_settings=True)
        done = notes_markdown([], "made it the active version; the panel has the settings that made it again")
        return {**view.render(studio, story_id, panel_id, version_id), status: done}

    @shows_errors(status)
    def redraw(version_id, opacity, shown, grid, first, last, request: gr.Request) -> dict:
        return {**view.overlay(sessions.studio(request), version_id, opacity, shown, grid, first, last), status: ""}

    outputs = tab.view_outputs
    inspector.versions.select(pick_version, [story_pick, panel_pick, inspector.version_ids], outputs, **PRIVATE)
    inspector.make_active.click(activate, [story_pick, panel_pick, inspector.inspected], outputs, **PRIVATE)
    inputs = [inspector.inspected, *overlay.inputs]
    redrawn = [status, *overlay.outputs]
    overlay.shown.input(redraw, inputs, redrawn, show_progress="hidden", **PRIVATE)
    overlay.opacity.release(redraw, inputs, redrawn, show_progress="hidden", **PRIVATE)
    overlay.grid.input(redraw, inputs, redrawn, **PRIVATE)
    overlay.step_from.release(redraw, inputs, redrawn, show_progress="hidden", **PRIVATE)
    overlay.step_to.release(redraw, inputs, redrawn, show_progress="hidden", **PRIVATE)
