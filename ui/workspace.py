"""The workspace bar of a shared app (`--workspaces`, or on a Space): your key, opening another
workspace by its key, deleting yours, signing in, and the limits that apply.

The key lives in the browser (gr.BrowserState, sealed with the server's secret), so a reload or a
new tab of the same browser finds the same work; a signed-in visitor's workspace follows the
account instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .common import escape, notes_markdown, shows_errors
from .session import WorkspaceSessions

PRIVATE = {"api_visibility": "private"}


@dataclass
class WorkspaceBar:
    stored_key: gr.BrowserState
    about: gr.Markdown
    key: gr.Textbox
    new_key: gr.Button
    other_key: gr.Textbox
    open_other: gr.Button
    delete: gr.Button
    confirm_row: gr.Row
    confirm_delete: gr.Button
    keep: gr.Button
    status: gr.Markdown

    @classmethod
    def create(cls, sessions: WorkspaceSessions, secret: str) -> WorkspaceBar:
        stored_key = gr.BrowserState(None, storage_key="anystory-workspace-key", secret=secret)
        status = gr.Markdown(elem_id="workspace-status")  # outside the accordion: seen at once
        with gr.Accordion("Your workspace (private to you)", open=False, elem_id="workspace-bar"):
            rules = "; ".join(sessions.limits.describe())
            about = gr.Markdown(
                "Your characters, stories and exports are yours alone: other visitors never see them. "
                f"Anyone who has your key can open your workspace, so keep it to yourself. Limits: {escape(rules)}.",
                elem_id="workspace-about",
            )
            if sessions.login:
                gr.LoginButton()
            with gr.Row(equal_height=True):
                key = gr.Textbox(
                    label="Your key (copy it to open this workspace in another browser)",
                    interactive=False,
                    buttons=["copy"],
                    scale=4,
                    elem_id="workspace-key",
                )
                new_key = gr.Button("Make a new key", scale=1, elem_id="workspace-new-key")
            with gr.Row(equal_height=True):
                other_key = gr.Textbox(
                    label="Open a workspace by its key", type="password", scale=4, elem_id="workspace-open-key"
                )
                open_other = gr.Button("Open", scale=1, elem_id="workspace-open")
            delete = gr.Button("Delete my workspace…", variant="stop", elem_id="workspace-delete")
            with gr.Row(visible=False) as confirm_row:
                gr.Markdown(
                    "Delete this workspace with all its characters, stories and exports? This cannot be undone."
                )
                confirm_delete = gr.Button("Yes, delete everything", variant="stop", elem_id="workspace-confirm-delete")
                keep = gr.Button("No, keep it", elem_id="workspace-keep")
        return cls(
            stored_key, about, key, new_key, other_key, open_other, delete, confirm_row, confirm_delete, keep, status
        )


def account_of(profile: gr.OAuthProfile | None) -> str | None:
    """The workspace account of a signed-in Hugging Face user."""
    return f"hf:{profile.username}" if profile is not None and getattr(profile, "username", None) else None


def wire_workspace(demo: gr.Blocks, bar: WorkspaceBar, sessions: WorkspaceSessions, refreshes: list) -> None:
    """Wire the bar and the page load: the workspace is bound first, then the tabs are drawn
    (`refreshes`: their (fn, inputs, outputs)), and again whenever the workspace changes."""

    def start(stored, request: gr.Request) -> dict:
        key, note = sessions.start(request, stored)
        return {bar.stored_key: key, bar.key: key, bar.status: notes_markdown([], note)}

    def start_signed_in(stored, request: gr.Request, profile: gr.OAuthProfile | None) -> dict:
        key, note = sessions.start(request, stored, account_of(profile))
        return {bar.stored_key: key, bar.key: key or "(your account opens it)", bar.status: notes_markdown([], note)}

    @shows_errors(bar.status)
    def open_other(key, request: gr.Request) -> dict:
        if not (key or "").strip():
            raise ValueError("paste a workspace key first")
        try:
            opened = sessions.open_key(request, key)
        except KeyError as err:
            raise ValueError(str(err)) from err
        done = notes_markdown([], "opened that workspace; this browser now keeps its key")
        return {bar.stored_key: opened, bar.key: opened, bar.other_key: "", bar.status: done}

    @shows_errors(bar.status)
    def new_key(request: gr.Request) -> dict:
        key = sessions.new_key(request)
        return {
            bar.stored_key: key,
            bar.key: key,
            bar.status: notes_markdown([], "a new key: the old one no longer opens it"),
        }

    def ask_delete() -> dict:
        return {bar.confirm_row: gr.update(visible=True)}

    def keep() -> dict:
        return {bar.confirm_row: gr.update(visible=False)}

    @shows_errors(bar.status)
    def delete(request: gr.Request) -> dict:
        sessions.delete(request)
        key, _ = sessions.start(request, None)
        done = notes_markdown([], "your workspace was deleted; this is a new, empty one")
        return {bar.stored_key: key, bar.key: key, bar.confirm_row: gr.update(visible=False), bar.status: done}

    def then_refresh(event):
        for fn, inputs, outputs in refreshes:
            event = event.then(fn, inputs, outputs, **PRIVATE)
        return event

    def end(request: gr.Request) -> None:
        sessions.end(request)

    started = [bar.stored_key, bar.key, bar.status]
    then_refresh(demo.load(start_signed_in if sessions.login else start, [bar.stored_key], started, **PRIVATE))
    then_refresh(bar.open_other.click(open_other, [bar.other_key], [*started, bar.other_key], **PRIVATE))
    bar.new_key.click(new_key, None, started, **PRIVATE)
    bar.delete.click(ask_delete, None, [bar.confirm_row], **PRIVATE)
    bar.keep.click(keep, None, [bar.confirm_row], **PRIVATE)
    then_refresh(bar.confirm_delete.click(delete, None, [*started, bar.confirm_row], **PRIVATE))
    demo.unload(end)
