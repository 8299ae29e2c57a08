"""The cast: search, re-encode, delete with a confirmation that names the panels, the example
cast, and the cast as a zip (export / import)."""

from __future__ import annotations

import gradio as gr

from ..common import MODEL, escape, gpu, notes_markdown, shows_errors
from ..session import Sessions
from .form import PRIVATE
from .layout import CharactersLayout
from .view import CharactersView


def delete_question(studio, character_id: int) -> str:
    """The confirmation's words: who is deleted, and which panels use it."""
    character = studio.get_character(character_id)
    users = studio.panels_using(character_id)
    if not users:
        return f"Delete **{escape(character.name)}**? No panel uses it."
    where = ", ".join(f"“{story.title}” panel {panel.position + 1}" for story, panel in users)
    return (
        f"Delete **{escape(character.name)}**? It is used by {escape(where)}. "
        f"It will be unticked there; prompts that name [{escape(character.name)}] must then be edited."
    )


def wire_cast(tab: CharactersLayout, view: CharactersView, sessions: Sessions, example_cast_dir) -> object:
    """Wire the cast list and its files; returns `show(search, request)`, the tab's refresh."""
    status, cast, files, form = tab.status, tab.cast, tab.files, tab.form

    @shows_errors(status)
    def show(query: str, request: gr.Request) -> dict:
        return {status: "", **view.cast(sessions.studio(request), query)}

    @gpu
    @shows_errors(status)
    def reencode(character_id, query, request: gr.Request) -> dict:
        if character_id is None:
            raise ValueError("click a character in the cast first")
        studio = sessions.studio(request)
        character = studio.reencode_character(character_id)
        return {status: notes_markdown(studio.notes, f"{character.name} encoded again"), **view.cast(studio, query)}

    @shows_errors(status)
    def ask_delete(character_id, request: gr.Request) -> dict:
        if character_id is None:
            raise ValueError("click a character in the cast first")
        text = delete_question(sessions.studio(request), character_id)
        return {status: "", cast.confirm_box: gr.update(visible=True), cast.confirm_text: text}

    @shows_errors(status)
    def delete(character_id, query, request: gr.Request) -> dict:
        if character_id is None:
            raise ValueError("click a character in the cast first")
        studio = sessions.studio(request)
        gone = studio.get_character(character_id).name
        studio.delete_character(character_id, force=True)
        done = notes_markdown([], f"deleted {gone}")
        return {
            status: done,
            cast.confirm_box: gr.update(visible=False),
            **view.cast(studio, query),
            **view.blank_form(),
        }

    def keep() -> dict:
        return {cast.confirm_box: gr.update(visible=False)}

    @shows_errors(status)
    def export_cast(request: gr.Request) -> dict:
        studio = sessions.studio(request)
        if not studio.character_names():
            raise ValueError("the cast is empty: nothing to export")
        path = studio.export_characters()
        return {status: notes_markdown([], "cast exported: download it below"), files.exported: sessions.hand_out(path)}

    @shows_errors(status)
    def import_cast(path, clash, query, request: gr.Request) -> dict:
        if path is None:
            raise ValueError("choose a cast archive (.zip) to import")
        studio = sessions.studio(request)
        imported = studio.import_characters(path, clash)
        names = ", ".join(c.name for c in imported) or "nobody (every name was already in the cast)"
        return {
            status: notes_markdown(studio.notes, f"imported {names}"),
            files.archive: None,
            **view.cast(studio, query),
        }

    @gpu
    @shows_errors(status)
    def add_examples(query, request: gr.Request) -> dict:
        studio = sessions.studio(request)
        added = studio.add_example_cast(example_cast_dir)
        return {
            status: notes_markdown(studio.notes, f"added {', '.join(added) or 'nobody'}"),
            **view.cast(studio, query),
        }

    listed = [status, *cast.outputs]
    cast.search.input(show, [cast.search], listed, show_progress="hidden", **PRIVATE)  # typing, not load-time changes
    cast.reencode.click(reencode, [form.selected, cast.search], listed, **MODEL, **PRIVATE)
    cast.delete.click(ask_delete, [form.selected], [status, cast.confirm_box, cast.confirm_text], **PRIVATE)
    deleted = [status, cast.confirm_box, *cast.outputs, *form.outputs]
    cast.confirm_delete.click(delete, [form.selected, cast.search], deleted, **PRIVATE)
    cast.keep.click(keep, None, [cast.confirm_box], **PRIVATE)
    files.export_cast.click(export_cast, None, [status, files.exported], **PRIVATE)
    imported = [status, files.archive, *cast.outputs]
    files.import_cast.click(import_cast, [files.archive, files.on_clash, cast.search], imported, **PRIVATE)
    cast.add_examples.click(add_examples, [cast.search], listed, **MODEL, **PRIVATE)
    return show
