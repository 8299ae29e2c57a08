"""Export the active versions (strip, page grid, PDF, CBZ, project archive; pages in a layout,
with a preview); import a project or a script."""

from __future__ import annotations

import gradio as gr

from ..common import notes_markdown, shows_errors
from ..session import Sessions
from .layout import StoryboardLayout
from .panels import PRIVATE
from .view import StoryboardView


def wire_files(tab: StoryboardLayout, view: StoryboardView, sessions: Sessions) -> None:
    status, files = tab.status, tab.files

    @shows_errors(status)
    def export(story_id, fmt, with_overlay, with_captions, layout, title_page, request: gr.Request) -> dict:
        if story_id is None:
            raise ValueError("pick a story first")
        studio = sessions.studio(request)
        options = {"layout": layout, "title_page": bool(title_page)} if layout and fmt in ("grid", "pdf", "cbz") else {}
        written = studio.export_story(
            story_id, fmt, overlay=bool(with_overlay), captions=bool(with_captions), **options
        )
        notes = studio.notes if fmt == "project" else []
        done = f"exported {', '.join(f.name for f in written)}"
        return {status: notes_markdown(notes, done), files.exported: [sessions.hand_out(f) for f in written]}

    @shows_errors(status)
    def import_project(path, request: gr.Request) -> dict:
        if path is None:
            raise ValueError("choose a project archive (.zip) first")
        studio = sessions.studio(request)
        story = studio.import_project(path)
        done = notes_markdown(studio.notes, f"imported “{story.title}”")
        return {**view.render(studio, story.id), status: done, files.project_archive: None}

    @shows_errors(status)
    def preview(story_id, layout, title_page, request: gr.Request) -> dict:
        if story_id is None:
            raise ValueError("pick a story first")
        pages = sessions.studio(request).story_pages(story_id, layout or "grid", title_page=bool(title_page))
        return {status: f"{len(pages)} page(s)", files.pages: [(page, f"page {n}") for n, page in enumerate(pages, 1)]}

    @shows_errors(status)
    def import_script(text, path, fmt, alias_lines, request: gr.Request) -> dict:
        if path:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        aliases = {}
        for line in (alias_lines or "").splitlines():
            if line.strip():
                alias, equals, name = line.partition("=")
                if not equals or not alias.strip() or not name.strip():
                    raise ValueError(f"an alias line reads 'the girl = Mia', got {line.strip()!r}")
                aliases[alias.strip()] = name.strip()
        studio = sessions.studio(request)
        story = studio.import_script(text or "", fmt or "auto", aliases=aliases)
        count = len(studio.panels(story.id))
        done = notes_markdown([], f"imported “{story.title}”: {count} panel(s) with their casts and lines")
        return {**view.render(studio, story.id), status: done, files.script_file: None}

    script_inputs = [files.script, files.script_file, files.script_format, files.aliases]
    files.import_script.click(import_script, script_inputs, [files.script_file, *tab.view_outputs], **PRIVATE)
    files.preview.click(
        preview, [tab.bar.story_pick, files.page_layout, files.title_page], [status, files.pages], **PRIVATE
    )
    inputs = [tab.bar.story_pick, files.export_format, files.with_overlay, files.with_captions]
    inputs += [files.page_layout, files.title_page]
    files.export.click(export, inputs, [status, files.exported], **PRIVATE)
    outputs = [files.project_archive, *tab.view_outputs]
    files.import_project.click(import_project, [files.project_archive], outputs, **PRIVATE)
