"""Workspaces: one private Studio per visitor of a shared app, all on one loaded pipeline.

    workspaces = Workspaces(root, pipeline, preview=True, limits=Limits.hosted())
    key, studio = workspaces.create()       # a new visitor; the key is shown to them once
    studio = workspaces.open(key)           # the same visitor later (WorkspaceNotFound otherwise)
    studio = workspaces.for_account("hf:mia")  # signed in: the workspace follows the account

Layout of the root folder::

    <root>/workspaces.db              which key (stored as its SHA-256 only) opens which workspace
    <root>/workspaces/<id>/           one Studio data folder per workspace (ids are random, never keys)
    <root>/example-cast/              the example cast, encoded once; new workspaces share its files

A key is a random 32-character secret: whoever has it has the workspace, and nothing else
does. Workspaces idle for `limits.expiry_days` are deleted with everything in them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import secrets
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

import sqlite_utils

from .limits import Limits
from .model_slot import ModelSlot
from .storage import now
from .story import ROUTERS
from .studio import Studio, panel_defaults_for

log = logging.getLogger(__name__)

INDEX_NAME = "workspaces.db"
KEY_BYTES = 24  # 32 URL-safe characters
TOUCH_EVERY_S = 3600.0  # last_seen is written at most this often per workspace
OPEN_STUDIOS = 16  # Studios kept open (each holds its encodings in memory)


class WorkspaceNotFound(KeyError):
    """No workspace for that key (never made, deleted, or expired)."""

    def __str__(self) -> str:
        return str(self.args[0])


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def valid_key(key: object) -> bool:
    return isinstance(key, str) and 16 <= len(key) <= 128 and all(c.isalnum() or c in "-_" for c in key)


class Workspaces:
    def __init__(
        self,
        root: str | os.PathLike,
        pipeline,
        *,
        preview: bool = False,
        limits: Limits | None = None,
        example_cast_dir: str | os.PathLike | None = None,
        with_example_cast: bool = True,
    ):
        self.root = Path(root).expanduser().absolute()
        (self.root / "workspaces").mkdir(parents=True, exist_ok=True)
        self.pipeline, self.preview = pipeline, preview
        self.limits = limits or Limits.hosted()
        self.model_slot = ModelSlot(self.limits.max_queue)  # one model call at a time among all workspaces
        self.panel_defaults = panel_defaults_for(pipeline, preview)
        self.routers = ROUTERS
        self._lock = threading.RLock()
        self._open: OrderedDict[str, Studio] = OrderedDict()
        self._touched: dict[str, float] = {}
        self._example_cast_dir = example_cast_dir
        self._with_example_cast = with_example_cast
        self._template: Studio | None = None
        self.dino = None  # a consistency.DinoScorer every workspace scores with too (app.py --dino)
        index = sqlite_utils.Database(self.root / INDEX_NAME)
        index.execute(
            "CREATE TABLE IF NOT EXISTS workspaces (id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, "
            "account TEXT UNIQUE, created TEXT NOT NULL, last_seen TEXT NOT NULL)"
        )
        index.conn.commit()
        index.conn.close()
        self.expire()

    @property
    def browser_secret(self) -> str:
        """The secret that seals the key a browser keeps (kept in the root folder, made once)."""
        path = self.root / "browser-state.secret"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    # -- the index (one short connection per call: Gradio serves requests from many threads) --

    def _index(self) -> sqlite_utils.Database:
        return sqlite_utils.Database(self.root / INDEX_NAME)

    def _find(self, where: str, value: str) -> str | None:
        index = self._index()
        try:
            row = index.execute(f"SELECT id FROM workspaces WHERE {where} = ?", [value]).fetchone()
        finally:
            index.conn.close()
        return row[0] if row else None

    # -- opening --

    def create(self, account: str | None = None) -> tuple[str, Studio]:
        """A new workspace (with the example cast); returns its key, shown to the visitor once."""
        self.expire()
        key, workspace_id = secrets.token_urlsafe(KEY_BYTES), secrets.token_hex(8)
        with self._lock:
            index = self._index()
            try:
                with index.conn:
                    stamp = now()
                    index["workspaces"].insert(
                        {
                            "id": workspace_id,
                            "key_hash": key_hash(key),
                            "account": account,
                            "created": stamp,
                            "last_seen": stamp,
                        }
                    )
            finally:
                index.conn.close()
            studio = self._studio(workspace_id)
            if self._with_example_cast:
                studio.adopt_example_cast(self._example_cast())
        log.info("workspace %s created", workspace_id)
        return key, studio

    def open(self, key: str) -> Studio:
        """The workspace a key opens; WorkspaceNotFound for any other string."""
        workspace_id = self._find("key_hash", key_hash(key)) if valid_key(key) else None
        if workspace_id is None:
            raise WorkspaceNotFound("no workspace has this key (it may have expired or been deleted)")
        return self.by_id(workspace_id)

    def for_account(self, account: str) -> Studio:
        """The workspace of a signed-in account (made on first sign-in)."""
        workspace_id = self._find("account", account)
        if workspace_id is None:
            return self.create(account=account)[1]
        return self.by_id(workspace_id)

    def by_id(self, workspace_id: str) -> Studio:
        """A workspace by its id (ids stay on the server: the UI binds sessions to them)."""
        with self._lock:
            if workspace_id not in self._open and not (self.root / "workspaces" / workspace_id).is_dir():
                raise WorkspaceNotFound("this workspace no longer exists (it expired or was deleted)")
            studio = self._studio(workspace_id)
        self._touch(workspace_id)
        return studio

    def id_of(self, studio: Studio) -> str:
        return studio.data_dir.name

    def new_key(self, workspace_id: str) -> str:
        """Replace a workspace's key (the old one stops working); returns the new one."""
        key = secrets.token_urlsafe(KEY_BYTES)
        index = self._index()
        try:
            with index.conn:
                index.execute("UPDATE workspaces SET key_hash = ? WHERE id = ?", [key_hash(key), workspace_id])
        finally:
            index.conn.close()
        return key

    def _studio(self, workspace_id: str) -> Studio:
        with self._lock:
            studio = self._open.get(workspace_id)
            if studio is None:
                studio = Studio(
                    self.root / "workspaces" / workspace_id,
                    self.pipeline,
                    preview=self.preview,
                    limits=self.limits,
                    model_slot=self.model_slot,
                    dino=self.dino,
                )
                studio.panel_defaults = dict(self.panel_defaults)
                self._open[workspace_id] = studio
                while len(self._open) > OPEN_STUDIOS:
                    _, evicted = self._open.popitem(last=False)
                    evicted.close()
            self._open.move_to_end(workspace_id)
            return studio

    def _example_cast(self) -> Studio:
        """The example cast, encoded once for all workspaces."""
        with self._lock:
            if self._template is None:
                self._template = Studio(
                    self.root / "example-cast", self.pipeline, preview=self.preview, model_slot=self.model_slot
                )
                self._template.add_example_cast(self._example_cast_dir)
            return self._template

    def _touch(self, workspace_id: str) -> None:
        stamp = _dt.datetime.now(_dt.timezone.utc).timestamp()
        if stamp - self._touched.get(workspace_id, 0.0) < TOUCH_EVERY_S:
            return
        self._touched[workspace_id] = stamp
        index = self._index()
        try:
            with index.conn:
                index.execute("UPDATE workspaces SET last_seen = ? WHERE id = ?", [now(), workspace_id])
        finally:
            index.conn.close()

    # -- ending --

    def delete(self, workspace_id: str) -> None:
        """Delete a workspace with everything in it."""
        with self._lock:
            studio = self._open.pop(workspace_id, None)
            if studio is not None:
                studio.close()
            index = self._index()
            try:
                with index.conn:
                    index.execute("DELETE FROM workspaces WHERE id = ?", [workspace_id])
            finally:
                index.conn.close()
            self._touched.pop(workspace_id, None)
            folder = self.root / "workspaces" / workspace_id
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
        log.info("workspace %s deleted", workspace_id)

    def expire(self, at: _dt.datetime | None = None) -> list[str]:
        """Delete the workspaces idle for longer than `limits.expiry_days`; returns their ids."""
        if self.limits.expiry_days is None:
            return []
        at = at or _dt.datetime.now(_dt.timezone.utc)
        cutoff = (at - _dt.timedelta(days=self.limits.expiry_days)).isoformat(timespec="microseconds")
        index = self._index()
        try:
            idle = [row[0] for row in index.execute("SELECT id FROM workspaces WHERE last_seen < ?", [cutoff])]
        finally:
            index.conn.close()
        for workspace_id in idle:
            self.delete(workspace_id)
        return idle

    def count(self) -> int:
        index = self._index()
        try:
            return index.execute("SELECT COUNT(*) FROM workspaces").fetchone()[0]
        finally:
            index.conn.close()
