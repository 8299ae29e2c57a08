"""The Storage part: how much the data folder holds and what is left on its disk, and a bulk
delete of the versions that are not their panel's active one (asked to confirm first)."""

from __future__ import annotations

import gradio as gr

from ..common import escape, notes_markdown, shows_errors
from ..session import Sessions
from .layout import StoryboardLayout
from .panels import PRIVATE
from .view import StoryboardView


def human_bytes(count: int) -> str:
    """1536 -> "1.5 KB" (binary multiples, as file managers show them)."""
    size = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def storage_summary(report) -> str:
    """The report as a few Markdown lines."""
    parts = ", ".join(
        f"{name} {human_bytes(value)}"
        for name, value in (
            ("characters", report.characters),
            ("versions", report.versions),
            ("exports", report.exports),
            ("database", report.database),
            ("other", report.other),
        )
    )
    lines = [
        f"**Data folder:** {human_bytes(report.total)} ({escape(parts)})",
        f"**Free on its disk:** {human_bytes(report.free)}",
        f"**Old versions** (not their panel's active one): {report.old_versions}, "
        f"{human_bytes(report.old_version_bytes)}",
    ]
    return "\n\n".join(lines)


def wire_storage(tab: StoryboardLayout, view: StoryboardView, sessions: Sessions) -> None:
    status, storage = tab.status, tab.storage

    @shows_errors(status)
    def show(request: gr.Request) -> dict:
        return {storage.summary: storage_summary(sessions.studio(request).storage_report())}

    @shows_errors(status)
    def ask(request: gr.Request) -> dict:
        report = sessions.studio(request).storage_report()
        if not report.old_versions:
            return {storage.summary: storage_summary(report), status: notes_markdown([], "no old versions to delete")}
        question = (
            f"Delete {report.old_versions} old version(s), {human_bytes(report.old_version_bytes)}? "
            "Every panel keeps its active version; this cannot be undone."
        )
        return {
            storage.summary: storage_summary(report),
            storage.confirm_text: question,
            storage.confirm_row: gr.Row(visible=True),
        }

    @shows_errors(status)
    def delete(story_id, panel_id, request: gr.Request) -> dict:
        studio = sessions.studio(request)
        deleted = studio.delete_versions(keep_active=True)
        done = notes_markdown([], f"deleted {deleted.count} old version(s), {human_bytes(deleted.bytes_freed)} freed")
        return {
            **view.render(studio, story_id, panel_id),
            status: done,
            storage.summary: storage_summary(studio.storage_report()),
            storage.confirm_row: gr.Row(visible=False),
        }

    def keep() -> dict:
        return {storage.confirm_row: gr.Row(visible=False)}

    shown = [status, storage.summary]
    storage.accordion.expand(show, None, shown, **PRIVATE)
    storage.refresh.click(show, None, shown, **PRIVATE)
    storage.delete_old.click(ask, None, [*shown, storage.confirm_text, storage.confirm_row], **PRIVATE)
    outputs = [*tab.view_outputs, storage.summary, storage.confirm_row]
    storage.confirm.click(delete, [tab.bar.story_pick, tab.strip.panel_pick], outputs, **PRIVATE)
    storage.keep.click(keep, None, [storage.confirm_row], **PRIVATE)
