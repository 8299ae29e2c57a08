"""Stories and panels: pick, create and rename a story; pick, save, add, duplicate, move and delete
panels. Each handler makes one Studio call and shows the tab again."""

from __future__ import annotations

import secrets

import gradio as gr

from ..common import notes_markdown, shows_errors
from ..session import Sessions
from .form import FormValues, form_handler, save_form
from .layout import StoryboardLayout
from .view import StoryboardView

PRIVATE = {"api_visibility": "private"}  # UI events stay off the API page; the named API is ui/api.py


def random_seed() -> int:
    """A fresh seed for a panel added in the UI (so that panels do not all share one noise)."""
    return secrets.randbelow(2**31 - 1)


def wire_stories(tab: StoryboardLayout, view: StoryboardView, sessions: Sessions) -> None:
    bar, status = tab.bar, tab.status

    @shows_errors(status)
    def pick_story(story_id, request: gr.Request) -> dict:
        return {status: "", **view.render(sessions.studio(request), story_id)}

    @shows_errors(status)
    def new_story(title, request: gr.Request) -> dict:
        studio = sessions.studio(request)
        story = studio.create_story(title or "Untitled story")
        panel = studio.add_panel(story.id, "", seed=random_seed())
        done = notes_markdown([], f"created “{story.title}” with one empty panel")
        return {**view.render(studio, story.id, panel.id), status: done, bar.title: ""}

    @shows_errors(status)
    def rename(story_id, title, request: gr.Request) -> dict:
        if story_id is None:
            raise ValueError("pick a story first")
        studio = sessions.studio(request)
        story = studio.rename_story(story_id, title)
        return {
            **view.render(studio, story_id),
            status: notes_markdown([], f"renamed to “{story.title}”"),
            bar.title: "",
        }

    outputs = tab.view_outputs
    bar.story_pick.input(pick_story, [bar.story_pick], outputs, **PRIVATE)
    bar.create_story.click(new_story, [bar.title], [bar.title, *outputs], **PRIVATE)
    bar.rename_story.click(rename, [bar.story_pick, bar.title], [bar.title, *outputs], **PRIVATE)


def wire_panels(tab: StoryboardLayout, view: StoryboardView, sessions: Sessions):
    """Wire the strip and the panel buttons; returns `show(story_id, panel_id, request)`, the refresh."""
    strip, status = tab.strip, tab.status

    def shown(studio, story_id, panel_id, done: str) -> dict:
        return {**view.render(studio, story_id, panel_id), status: notes_markdown([], done)}

    @shows_errors(status)
    def show(story_id, panel_id, request: gr.Request) -> dict:
        return {**view.render(sessions.studio(request), story_id, panel_id), status: ""}

    @shows_errors(status)
    def pick_in_strip(story_id, ids, evt: gr.SelectData, request: gr.Request) -> dict:
        return {**view.render(sessions.studio(request), story_id, ids[evt.index]), status: ""}

    def save(studio, story_id, panel_id, form: FormValues) -> dict:
        panel = save_form(studio, panel_id, form)
        problems = studio.panel_problems(panel)
        done = f"saved panel {panel.position + 1}" + (f" — needs attention: {'; '.join(problems)}" if problems else "")
        return shown(studio, story_id, panel.id, done)

    def add(studio, story_id, panel_id, form: FormValues) -> dict:
        if story_id is None:
            raise ValueError("create a story first")
        if panel_id is not None:
            save_form(studio, panel_id, form)
        panel = studio.add_panel(story_id, "", seed=random_seed())
        return shown(studio, story_id, panel.id, f"added panel {panel.position + 1}")

    def duplicate(studio, story_id, panel_id, form: FormValues) -> dict:
        save_form(studio, panel_id, form)
        copy = studio.duplicate_panel(panel_id)
        return shown(studio, story_id, copy.id, f"duplicated as panel {copy.position + 1}")

    def mover(offset: int):
        def move(studio, story_id, panel_id, form: FormValues) -> dict:
            panel = save_form(studio, panel_id, form)
            studio.move_panel(panel.id, max(0, panel.position + offset))
            moved = studio.get_panel(panel.id)
            return shown(studio, story_id, panel.id, f"moved to position {moved.position + 1}")

        return move

    @shows_errors(status)
    def remove(story_id, panel_id, request: gr.Request) -> dict:
        if panel_id is None:
            raise ValueError("pick a panel first")
        studio = sessions.studio(request)
        position = studio.get_panel(panel_id).position
        studio.delete_panel(panel_id)
        return shown(studio, story_id, None, f"deleted panel {position + 1} and its versions")

    def on_form(work, name: str):
        return shows_errors(status)(form_handler(sessions, work, name))

    outputs, form_inputs = tab.view_outputs, tab.form_inputs
    story_pick = tab.bar.story_pick
    strip.panel_pick.input(show, [story_pick, strip.panel_pick], outputs, **PRIVATE)
    strip.strip.select(pick_in_strip, [story_pick, strip.panel_ids], outputs, **PRIVATE)
    tab.form.save_panel.click(on_form(save, "save_panel"), form_inputs, outputs, **PRIVATE)
    strip.add_panel.click(on_form(add, "add_panel"), form_inputs, outputs, **PRIVATE)
    strip.duplicate_panel.click(on_form(duplicate, "duplicate_panel"), form_inputs, outputs, **PRIVATE)
    strip.move_up.click(on_form(mover(-1), "move_up"), form_inputs, outputs, **PRIVATE)
    strip.move_down.click(on_form(mover(+1), "move_down"), form_inputs, outputs, **PRIVATE)
    strip.delete_panel.click(remove, [story_pick, strip.panel_pick], outputs, **PRIVATE)

    def pick_aspect(choice) -> dict:
        if choice not in tab.form.sizes:
            return {}
        width, height = tab.form.sizes[choice]
        return {tab.form.width: width, tab.form.height: height}

    tab.form.aspect.input(pick_aspect, [tab.form.aspect], [tab.form.width, tab.form.height], **PRIVATE)
    return show
