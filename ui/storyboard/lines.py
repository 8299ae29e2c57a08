"""A panel's lines: add one, remove one, show or hide the bubbles over the active image; the
story's and the panel's style presets and negative prompts."""

from __future__ import annotations

import gradio as gr

from ..common import notes_markdown, shows_errors
from ..session import Sessions
from .layout import PAGE_FIT_CHOICES, StoryboardLayout
from .panels import PRIVATE
from .view import StoryboardView, for_display


def wire_lines(tab: StoryboardLayout, view: StoryboardView, sessions: Sessions) -> None:
    status, lines = tab.status, tab.lines
    story_pick, panel_pick = tab.bar.story_pick, tab.strip.panel_pick

    @shows_errors(status)
    def add_line(story_id, panel_id, speaker, kind, text, request: gr.Request) -> dict:
        if panel_id is None:
            raise ValueError("pick a panel first")
        studio = sessions.studio(request)
        studio.add_line(panel_id, text or "", speaker or None, kind or None)
        done = notes_markdown(
            studio.line_warnings(panel_id), "added the line; its bubble is placed by the speaker's region in the image"
        )
        return {**view.render(studio, story_id, panel_id), status: done, lines.text: ""}

    @shows_errors(status)
    def remove_line(story_id, panel_id, number, request: gr.Request) -> dict:
        if panel_id is None:
            raise ValueError("pick a panel first")
        studio = sessions.studio(request)
        studio.remove_line(panel_id, int(number or 0) - 1)
        return {**view.render(studio, story_id, panel_id), status: notes_markdown([], "removed the line")}

    @shows_errors(status)
    def nudge_line(story_id, panel_id, number, dx, dy, request: gr.Request) -> dict:
        if panel_id is None:
            raise ValueError("pick a panel first")
        studio = sessions.studio(request)
        studio.nudge_line(panel_id, int(number or 0) - 1, float(dx or 0), float(dy or 0))
        done = notes_markdown(studio.line_warnings(panel_id), "moved the bubble; the move is kept for every re-roll")
        return {**view.render(studio, story_id, panel_id), status: done}

    @shows_errors(status)
    def set_page_fit(panel_id, fit, request: gr.Request) -> dict:
        if panel_id is None:
            raise ValueError("pick a panel first")
        panel = sessions.studio(request).set_panel_page_fit(panel_id, fit or "")
        how = dict((value, label) for label, value in PAGE_FIT_CHOICES)[panel.page_fit]
        return {status: notes_markdown([], f"panel {panel.position + 1} on the pages: {how}")}

    @shows_errors(status)
    def toggle(panel_id, show, request: gr.Request) -> dict:
        picture = sessions.studio(request).panel_picture(panel_id, bubbles=bool(show)) if panel_id else None
        return {tab.inspector.active_image: for_display(picture) if picture else None, status: ""}

    @shows_errors(status)
    def save_style(story_id, panel_id, story_style, story_negative, panel_style, panel_negative, request: gr.Request):
        if panel_id is None:
            raise ValueError("pick a panel first")
        studio = sessions.studio(request)
        studio.set_story_style(story_id, story_style or "", story_negative or "")
        studio.update_panel(panel_id, style=panel_style or "", negative=panel_negative or "")
        done = notes_markdown([], "saved the style; panels whose style changed are outdated")
        return {**view.render(studio, story_id, panel_id), status: done}

    style = tab.style
    style_inputs = [story_pick, panel_pick, style.story_style, style.story_negative, style.panel_style]
    style.save.click(save_style, [*style_inputs, style.panel_negative], tab.view_outputs, **PRIVATE)
    outputs = [*tab.view_outputs, lines.text]
    lines.add.click(add_line, [story_pick, panel_pick, lines.speaker, lines.kind, lines.text], outputs, **PRIVATE)
    lines.text.submit(add_line, [story_pick, panel_pick, lines.speaker, lines.kind, lines.text], outputs, **PRIVATE)
    lines.remove.click(remove_line, [story_pick, panel_pick, lines.number], tab.view_outputs, **PRIVATE)
    nudge_inputs = [story_pick, panel_pick, lines.number, lines.dx, lines.dy]
    lines.nudge.click(nudge_line, nudge_inputs, tab.view_outputs, **PRIVATE)
    lines.page_fit.input(set_page_fit, [panel_pick, lines.page_fit], [status], **PRIVATE)
    lines.show_bubbles.input(toggle, [panel_pick, lines.show_bubbles], [tab.inspector.active_image, status], **PRIVATE)
