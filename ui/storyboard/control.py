"""A panel's control picture (ControlNet): use an uploaded picture (or the edges of a photo, or a
scribble drawn here) for the panel, change its strength, remove it. The Studio stores the picture
and keeps it per version."""

from __future__ import annotations

import gradio as gr

from ..common import notes_markdown, shows_errors
from ..session import Sessions
from .layout import StoryboardLayout
from .panels import PRIVATE
from .view import StoryboardView


def wire_control(tab: StoryboardLayout, view: StoryboardView, sessions: Sessions) -> None:
    status, part = tab.status, tab.control
    story_pick, panel_pick = tab.bar.story_pick, tab.strip.panel_pick

    @shows_errors(status)
    def apply(story_id, panel_id, upload, kind, strength, from_photo, request: gr.Request) -> dict:
        if panel_id is None:
            raise ValueError("pick a panel first")
        studio = sessions.studio(request)
        if upload is None:  # no new picture: the strength of the one the panel has
            studio.set_control_strength(panel_id, float(strength))
            done = f"the control picture's strength is {float(strength):g}"
        else:
            studio.set_panel_control(panel_id, upload, kind, float(strength), edges_from_photo=bool(from_photo))
            done = f"the panel follows this {kind} picture from its next generation"
        return {**view.render(studio, story_id, panel_id), status: notes_markdown([], done), part.upload: None}

    @shows_errors(status)
    def remove(story_id, panel_id, request: gr.Request) -> dict:
        if panel_id is None:
            raise ValueError("pick a panel first")
        studio = sessions.studio(request)
        studio.clear_panel_control(panel_id)
        done = "removed the control picture; versions made with it keep it"
        return {**view.render(studio, story_id, panel_id), status: notes_markdown([], done)}

    @shows_errors(status)
    def use_sketch(story_id, panel_id, sketch, strength, request: gr.Request) -> dict:
        if panel_id is None:
            raise ValueError("pick a panel first")
        studio = sessions.studio(request)
        studio.set_panel_scribble(panel_id, (sketch or {}).get("composite"), float(strength))
        done = "the panel follows your scribble from its next generation"
        return {**view.render(studio, story_id, panel_id), status: notes_markdown([], done)}

    inputs = [story_pick, panel_pick, part.upload, part.kind, part.strength, part.from_photo]
    part.apply.click(apply, inputs, [*tab.view_outputs, part.upload], **PRIVATE)
    part.remove.click(remove, [story_pick, panel_pick], tab.view_outputs, **PRIVATE)
    sketch_inputs = [story_pick, panel_pick, part.sketch, part.strength]
    part.use_sketch.click(use_sketch, sketch_inputs, tab.view_outputs, **PRIVATE)
