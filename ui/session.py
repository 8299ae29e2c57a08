"""Which Studio a request acts on.

Every handler asks `sessions.studio(request)` for the caller's Studio, never a Studio it closed
over. `Sessions` is the local app: one Studio for every caller. `WorkspaceSessions` is a shared
app (a public Space): each browser session or API client acts in its own workspace, decided on
the server from the request's session (never from a parameter a caller could forge); a browser
reopens its workspace with the key it keeps, and a script with the key it was given.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr

from .common import CancelEvents, session_key

MAX_BOUND_SESSIONS = 10_000  # sessions remembered (a browser that comes back re-binds from its key)
HANDED_OUT_FOR_S = 3600.0  # copies of files handed to a browser are kept this long


class Sessions:
    """One Studio for every caller: the local, single-user app."""

    workspaces = False

    def __init__(self, studio: Any):
        self._studio = studio
        self.cancels = CancelEvents()  # Cancel stops only the caller's own generation

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
    def model_state(self) -> str:
        """"loading", "ready" or "failed: <why>" (the model may load after the page is served)."""
        return str(getattr(self._studio, "model_state", "ready"))

    @property
    def limits(self) -> Any:
        return self._studio.limits

    @property
    def served_folders(self) -> list[str]:
        """The folders whose files the app may hand out by path (gradio's allowed_paths)."""
        folder = self._studio.exports_dir
        folder.mkdir(parents=True, exist_ok=True)
        return [str(folder)]

    @property
    def blocked_folders(self) -> list[str]:
        """Folders never served by path, whatever else allows it (gradio's blocked_paths)."""
        return []

    def studio(self, request: gr.Request | None) -> Any:
        """The caller's Studio."""
        return self._studio

    def hand_out(self, path: str | Path) -> str:
        """A file of the caller's to give to their browser (a download)."""
        return str(path)

    def studio_at(self, data_dir: str | Path) -> Any:
        """The Studio of a data folder (a GPU job names its Studio so)."""
        if Path(data_dir).absolute() != Path(self._studio.data_dir).absolute():
            raise KeyError(f"no Studio at {data_dir}")
        return self._studio


class WorkspaceSessions(Sessions):
    """A workspace per browser session or API client, on one shared pipeline (anystory.workspaces)."""

    workspaces = True

    def __init__(self, workspaces: Any, *, login: bool = False):
        self._workspaces = workspaces
        self.login = login
        self.cancels = CancelEvents()
        self._bound: OrderedDict[str, str] = OrderedDict()  # session -> workspace id
        self._keys: dict[str, str] = {}  # session -> the key it opened or was given
        self._provisional: dict[str, str] = {}  # session -> workspace made before its page load bound one
        self._starting: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._out = Path(tempfile.mkdtemp(prefix="anystory-handed-out-"))

    @property
    def preview(self) -> bool:
        return bool(self._workspaces.preview)

    @property
    def panel_defaults(self) -> dict:
        return dict(self._workspaces.panel_defaults)

    @property
    def routers(self) -> tuple[str, ...]:
        return tuple(self._workspaces.routers)

    @property
    def model_state(self) -> str:
        return "ready"  # the shared pipeline is loaded before the app is built

    @property
    def limits(self) -> Any:
        return self._workspaces.limits

    @property
    def browser_secret(self) -> str:
        return self._workspaces.browser_secret

    @property
    def served_folders(self) -> list[str]:
        return []  # no workspace file is served by path: downloads are copies (hand_out)

    @property
    def blocked_folders(self) -> list[str]:
        return [str(self._workspaces.root)]

    # -- binding sessions to workspaces --

    def _bind(self, request, studio, key: str | None) -> Any:
        session = session_key(request)
        with self._lock:
            self._bound[session] = self._workspaces.id_of(studio)
            self._bound.move_to_end(session)
            if key is not None:
                self._keys[session] = key
            else:
                self._keys.pop(session, None)
            while len(self._bound) > MAX_BOUND_SESSIONS:
                old, _ = self._bound.popitem(last=False)
                for table in (self._keys, self._provisional, self._starting):
                    table.pop(old, None)
        return studio

    def _session_lock(self, request) -> threading.Lock:
        """One lock per session: its page load and its first events bind one workspace, not two."""
        with self._lock:
            return self._starting.setdefault(session_key(request), threading.Lock())

    def _bound_studio(self, request) -> Any | None:
        with self._lock:
            workspace_id = self._bound.get(session_key(request))
        if workspace_id is None:
            return None
        try:
            return self._workspaces.by_id(workspace_id)
        except KeyError:  # expired or deleted meanwhile
            return None

    def studio(self, request: gr.Request | None) -> Any:
        """The caller's workspace; a caller without one (an API client's first call) gets a new one."""
        studio = self._bound_studio(request)
        if studio is not None:
            return studio
        with self._session_lock(request):
            studio = self._bound_studio(request)  # the page load may have bound it meanwhile
            if studio is not None:
                return studio
            key, studio = self._workspaces.create()
            with self._lock:
                self._provisional[session_key(request)] = self._workspaces.id_of(studio)
            return self._bind(request, studio, key)

    def _drop_provisional(self, request) -> None:
        """A page's first events (a tab's select) can reach the server before its load binds the
        workspace; the workspace they made is removed once the load binds the real one, if unused."""
        with self._lock:
            workspace_id = self._provisional.pop(session_key(request), None)
        if workspace_id is None:
            return
        try:
            studio = self._workspaces.by_id(workspace_id)
        except KeyError:
            return
        if not studio.stories() and not studio.has_own_characters():
            self._workspaces.delete(workspace_id)

    def start(self, request: gr.Request | None, stored_key: str | None, account: str | None = None) -> tuple[str, str]:
        """A page load: the signed-in account's workspace, else the one the browser's key opens,
        else a new one. Returns (the key to keep in the browser, a sentence for the visitor)."""
        with self._session_lock(request):
            self._drop_provisional(request)
            return self._start(request, stored_key, account)

    def _start(self, request, stored_key: str | None, account: str | None) -> tuple[str, str]:
        if account:
            studio = self._workspaces.for_account(account)
            self._bind(request, studio, None)
            return stored_key or "", "Your workspace follows your Hugging Face account."
        if stored_key:
            try:
                studio = self._workspaces.open(stored_key)
                self._bind(request, studio, stored_key)
                return stored_key, "Welcome back: this is your workspace."
            except KeyError:
                pass
        key, studio = self._workspaces.create()
        self._bind(request, studio, key)
        note = "A new, private workspace was made for you" + (
            " (the one this browser knew has expired or was deleted)." if stored_key else "."
        )
        return key, note

    def open_key(self, request: gr.Request | None, key: str) -> str:
        """Act in the workspace `key` opens from now on (KeyError when it opens none)."""
        studio = self._workspaces.open((key or "").strip())
        self._bind(request, studio, (key or "").strip())
        return (key or "").strip()

    def current_key(self, request: gr.Request | None) -> str | None:
        """The key of the caller's workspace, when this session made or opened it by key."""
        self.studio(request)
        return self._keys.get(session_key(request))

    def new_key(self, request: gr.Request | None) -> str:
        """Replace the caller's workspace key (the old one stops working)."""
        studio = self.studio(request)
        key = self._workspaces.new_key(self._workspaces.id_of(studio))
        self._bind(request, studio, key)
        return key

    def delete(self, request: gr.Request | None) -> None:
        """Delete the caller's workspace with everything in it; their next call gets a new one."""
        session = session_key(request)
        with self._lock:
            workspace_id = self._bound.pop(session, None)
            self._keys.pop(session, None)
        if workspace_id is not None:
            self._workspaces.delete(workspace_id)

    def end(self, request: gr.Request | None) -> None:
        """The browser left: forget its session (the workspace stays; its key reopens it)."""
        with self._lock:
            for table in (self._bound, self._keys, self._provisional, self._starting):
                table.pop(session_key(request), None)

    def studio_at(self, data_dir: str | Path) -> Any:
        path = Path(data_dir).absolute()
        if path.parent != self._workspaces.root / "workspaces":
            raise KeyError(f"no workspace at {data_dir}")
        return self._workspaces.by_id(path.name)

    # -- files --

    def hand_out(self, path: str | Path) -> str:
        """A private copy of a workspace file for the caller's browser. Gradio serves it from its
        cache under an unguessable name; the workspace folder itself is never served."""
        self._sweep_handed_out()
        folder = Path(tempfile.mkdtemp(dir=self._out))
        copy = folder / Path(path).name
        shutil.copyfile(path, copy)
        return str(copy)

    def _sweep_handed_out(self) -> None:
        cutoff = time.time() - HANDED_OUT_FOR_S
        for folder in self._out.iterdir():
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                pass
