"""Which Studio a request acts on.

Every handler asks `sessions.studio(request)` for the Studio of the caller, never a Studio it
closed over: with one Studio (a local launch) every caller gets it; with workspaces each browser
session or API client gets its own, decided on the server from the session.
"""

from __future__ import annotations

from typing import Any

import gradio as gr


class Sessions:
    """One Studio for every caller: the local, single-user app."""

    def __init__(self, studio: Any):
        self._studio = studio

    @property
    def preview(self) -> bool:
        return bool(self._studio.preview)

    @property
    def panel_defaults(self) -> dict:
        return dict(self._studio.panel_defaults)

    @property
    def routers(self) -> tuple[str, ...]:
        return tuple(self._studio.routers)

    @property
    def served_folders(self) -> list[str]:
        """The folders whose files the app may hand out (gradio's allowed_paths)."""
        folder = self._studio.exports_dir
        folder.mkdir(parents=True, exist_ok=True)
        return [str(folder)]

    def studio(self, request: gr.Request | None) -> Any:
        """The caller's Studio."""
        return self._studio


def session_key(request: gr.Request | None) -> str:
    """The caller's browser session or API client ("api" for a direct Python call)."""
    return getattr(request, "session_hash", None) or "api"
