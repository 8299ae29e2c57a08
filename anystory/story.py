"""Stories: ordered panels, each with its generation settings and its kept versions.

A panel's prompt names characters as `[Name]` (mentions.py). Every generation is kept as a version (image +
routing maps + the settings that made it); one version per panel is the active one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .archive import (
    MAX_MEMBER_BYTES,
    MiB,
    StagedMembers,
    check_archive,
    check_zip_file,
    png_size_bound,
    read_archive,
    read_json,
    safe_member_name,
    staged_members,
    stored_file_name,
)
from .control_settings import check_control
from .files import folder_bytes, open_atomic
from .library import Library
from .lora_files import MAX_LORA_BYTES, check_safetensors, file_sha256
from .lora_settings import check_lora, stored_lora_files
from .mentions import mentioned_names, rename_mentions
from .names import name_key
from .scores import PanelScores
from .storage import DB_NAME, StudioDatabase, Transaction, now, require_png, token

ROUTERS = ("learned", "prompt", "layout", "none")
PANEL_STATUSES = ("empty", "ready", "outdated", "failed")
PROJECT_JSON = "project.json"
PROJECT_FORMAT = "anystory.project"
PROJECT_VERSION = 1
MAX_PANEL_SIDE = 8192  # px: the largest width or height a panel takes
# What a project archive may bring besides its cast (library.py): panel images as large as the
# largest panel (RGB PNG), route maps (a compressed .npz: about 1 MB for 25 steps at 1024x1024
# with the record) whose arrays inflate to at most MAX_ROUTE_MAPS_INFLATED.
MAX_PANEL_PICTURE_BYTES = png_size_bound(MAX_PANEL_SIDE, MAX_PANEL_SIDE, 3)
MAX_ROUTE_MAPS_BYTES = 64 * MiB
MAX_ROUTE_MAPS_INFLATED = 512 * MiB

# The settings a generation depends on, with their defaults; changing one outdates the panel's image.
PANEL_DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "characters": [],
    "seed": 0,
    "steps": 30,
    "guidance": 5.0,
    "width": 1024,
    "height": 1024,
    "strengths": {},
    "router": "learned",
    "layout": {},
    "style": "",  # a style preset id (styles.py); "": the story's
    "negative": "",  # the panel's own negative prompt, added to the style's and the story's
    "control": {},  # {} or {"kind", "strength", "image"}: the ControlNet picture (control_settings.py)
    "lora": {},  # {} (the story's), {"none": True} or {"source", "weight"}: the LoRA style (lora_settings.py)
}
MAX_NEGATIVE_CHARS = 2000
_JSON_FIELDS = ("characters", "strengths", "layout", "control", "lora")


# -- records --------------------------------------------------------------------------------------


@dataclass
class Story:
    id: int
    title: str
    created: str
    updated: str
    style: str = ""  # a style preset id (styles.py); "": none
    negative: str = ""  # the story's negative prompt
    lora: dict = field(default_factory=dict)  # {} or {"source", "weight"}: the story's LoRA (lora_settings.py)


@dataclass
class Panel:
    id: int
    story_id: int
    position: int
    prompt: str
    characters: list[int]
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    strengths: dict[int, float]
    router: str  # "learned" | "prompt" | "layout" | "none"
    layout: dict[int, list[float]]  # character id -> [x0, y0, x1, y1] as fractions of the image
    style: str  # a style preset id, "" for the story's
    negative: str  # the panel's own negative prompt
    active_version_id: int | None
    status: str  # "empty" | "ready" | "outdated" | "failed"
    error: str
    created: str = ""
    updated: str = ""
    lines: list[dict] = field(default_factory=list)  # see check_lines; not a generation setting
    control: dict = field(default_factory=dict)  # {} or {"kind", "strength", "image"} (control_settings.py)
    lora: dict = field(default_factory=dict)  # {}: the story's; {"none": True}; or {"source", "weight"}
    page_fit: str = ""  # how it meets its page cell: "" (the export's choice) or a pages.FITS; not a generation setting

    def generation_settings(self) -> dict[str, Any]:
        """The settings a generation of this panel depends on (a good `settings` for a version)."""
        return {key: _copy(getattr(self, key)) for key in PANEL_DEFAULTS}


@dataclass
class DeletedVersions:
    """What a bulk delete of versions freed."""

    count: int
    bytes_freed: int


@dataclass
class StorageReport:
    """Where a data folder's bytes go, and the room left on its disk."""

    characters: int  # pictures and encodings of the cast
    versions: int  # kept panel images and route maps
    exports: int
    database: int
    other: int  # models of the preview mode, the disk reserve, anything else
    free: int  # free bytes on the data folder's disk
    old_versions: int  # versions that are not their panel's active one: what `delete_versions` frees
    old_version_bytes: int

    @property
    def total(self) -> int:
        return self.characters + self.versions + self.exports + self.database + self.other


@dataclass
class Version:
    id: int
    panel_id: int
    settings: dict
    model_id: str
    image_path: Path
    route_map_path: Path | None
    created: str
    scores: dict | None = None  # consistency.PanelScores.to_dict(); None: not scored


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# -- settings validation ----------------------------------------------------------------------------


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value}")
    return value


def _float(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value}")
    return float(value)


def _character_id(value: Any, what: str) -> int:
    if isinstance(value, str) and value.isdigit():  # JSON object keys
        value = int(value)
    return _int(value, what, 1, 2**63 - 1)


def check_setting(key: str, value: Any) -> Any:
    """One panel setting, validated and normalised (ValueError says what is wrong)."""
    if key == "prompt":
        if not isinstance(value, str):
            raise ValueError(f"prompt must be text, got {type(value).__name__}")
        return value
    if key == "characters":
        if not isinstance(value, (list, tuple)):
            raise ValueError("characters must be a list of character ids")
        return list(dict.fromkeys(_character_id(v, "a character id") for v in value))
    if key == "seed":
        return _int(value, "seed", 0, 2**63 - 1)
    if key == "steps":
        return _int(value, "steps", 1, 1000)
    if key == "guidance":
        return _float(value, "guidance", 0.0, 100.0)
    if key in ("width", "height"):
        size = _int(value, key, 64, MAX_PANEL_SIDE)
        if size % 8:
            raise ValueError(f"{key} must be a multiple of 8 (the latent grid), got {size}")
        return size
    if key == "strengths":
        if not isinstance(value, dict):
            raise ValueError("strengths must map character ids to numbers")
        return {
            _character_id(k, "a strength's character id"): _float(v, "a strength", 0.0, 10.0) for k, v in value.items()
        }
    if key == "router":
        if value not in ROUTERS:
            raise ValueError(f"router must be one of {', '.join(ROUTERS)}, got {value!r}")
        return value
    if key in ("style", "negative"):
        if not isinstance(value, str):
            raise ValueError(f"{key} must be text, got {type(value).__name__}")
        if len(value) > MAX_NEGATIVE_CHARS:
            raise ValueError(f"{key} has at most {MAX_NEGATIVE_CHARS} characters")
        return value.strip()
    if key == "control":
        return check_control(value)
    if key == "lora":
        return check_lora(value, panel=True)
    if key == "layout":
        if not isinstance(value, dict):
            raise ValueError("layout must map character ids to boxes [x0, y0, x1, y1]")
        boxes = {}
        for k, box in value.items():
            cid = _character_id(k, "a layout's character id")
            if not isinstance(box, (list, tuple)) or len(box) != 4:
                raise ValueError(f"the layout box of character {cid} must be [x0, y0, x1, y1], got {box!r}")
            x0, y0, x1, y1 = (_float(v, "a layout coordinate", 0.0, 1.0) for v in box)
            if not (x0 < x1 and y0 < y1):
                raise ValueError(f"the layout box of character {cid} is empty or inverted: {list(box)}")
            boxes[cid] = [x0, y0, x1, y1]
        return boxes
    raise TypeError(f"unknown panel setting {key!r}; settings are {', '.join(PANEL_DEFAULTS)}")


LINE_KINDS = ("speech", "thought", "caption", "sfx")
MAX_LINES = 20  # per panel


PAGE_FITS = ("auto", "crop", "fit")  # as pages.FITS (storage imports nothing above it; a test keeps them equal)


def check_page_fit(fit: Any) -> str:
    """A panel's page fit: "" (the export's choice) or one of PAGE_FITS."""
    if fit is None or fit == "":
        return ""
    if fit not in PAGE_FITS:
        choices = ", ".join(PAGE_FITS)
        raise ValueError(f"page fit must be one of {choices} (or empty for the export's choice), got {fit!r}")
    return fit


def check_lines(lines: Any, check_text: Callable[[str, str], str] | None = None) -> list[dict]:
    """A panel's lines, validated: each {"speaker": character id or None (narration), "kind":
    speech | thought | caption | sfx, "text", "offset": [dx, dy] (the writer's nudge, fractions
    of the image)}. `check_text(kind, text)` checks the text can be drawn (bubbles.check_line)."""
    if not isinstance(lines, (list, tuple)):
        raise ValueError("lines must be a list")
    if len(lines) > MAX_LINES:
        raise ValueError(f"a panel holds at most {MAX_LINES} lines, got {len(lines)}")
    checked = []
    for number, line in enumerate(lines, start=1):
        if not isinstance(line, dict):
            raise ValueError(f"line {number} must be an object")
        kind = line.get("kind", "speech")
        if kind not in LINE_KINDS:
            raise ValueError(f"line {number}: kind must be one of {', '.join(LINE_KINDS)}, got {kind!r}")
        speaker = line.get("speaker")
        if speaker is not None:
            speaker = _character_id(speaker, f"line {number}'s speaker")
        if kind == "caption":
            speaker = None
        text = line.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"line {number} needs some text")
        if check_text is not None:
            try:
                text = check_text(kind, text)
            except ValueError as err:
                raise ValueError(f"line {number}: {err}") from err
        offset = line.get("offset", [0.0, 0.0])
        if not isinstance(offset, (list, tuple)) or len(offset) != 2:
            raise ValueError(f"line {number}: offset must be [dx, dy]")
        offset = [_float(v, f"line {number}'s offset", -1.0, 1.0) for v in offset]
        checked.append({"speaker": speaker, "kind": kind, "text": text.strip(), "offset": offset})
    return checked


def _to_row(settings: dict[str, Any]) -> dict[str, Any]:
    row = dict(settings)
    for key in _JSON_FIELDS:
        if key in row:
            value = row[key]
            if isinstance(value, dict):
                value = {str(k): v for k, v in value.items()}
            row[key] = json.dumps(value, sort_keys=True)
    return row


def _control_pictures(panel_settings: list[dict], versions: list[dict]) -> list[str]:
    """The stored control pictures that panels (their settings) and versions name, each once."""
    names = {(s.get("control") or {}).get("image") for s in panel_settings}
    for version in versions:
        control = version["settings"].get("control") or {}
        if control:
            names.add(check_control(control)["image"])
    return sorted(n for n in names if n)


def _lora_files(story: dict, panel_settings: list[dict], versions: list[dict]) -> list[str]:
    """The stored LoRA files that the story, its panels and their versions name, each once."""
    values = [story.get("lora") or {}, *(s.get("lora") or {} for s in panel_settings)]
    for version in versions:
        for key in ("lora", "lora_used"):
            if version["settings"].get(key):
                values.append(check_lora(version["settings"][key], panel=key == "lora"))
    return stored_lora_files(values)


def _json_dump(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be JSON-serialisable: {err}") from err


# -- stories --------------------------------------------------------------------------------------


class Stories:
    """Stories, panels and versions of one data folder. Safe to share between threads."""

    def __init__(self, database: StudioDatabase):
        self.database = database
        self.library = Library(database)

    @property
    def db(self):
        return self.database.db

    # -- rows -> records --

    @staticmethod
    def _story(row: dict) -> Story:
        return Story(
            id=row["id"],
            title=row["title"],
            created=row["created"],
            updated=row["updated"],
            style=row.get("style") or "",
            negative=row.get("negative") or "",
            lora=json.loads(row.get("lora") or "{}"),
        )

    @staticmethod
    def _panel(row: dict) -> Panel:
        strengths = json.loads(row["strengths"])
        layout = json.loads(row["layout"])
        return Panel(
            id=row["id"],
            story_id=row["story_id"],
            position=row["position"],
            prompt=row["prompt"],
            characters=json.loads(row["characters"]),
            seed=row["seed"],
            steps=row["steps"],
            guidance=row["guidance"],
            width=row["width"],
            height=row["height"],
            strengths={int(k): v for k, v in strengths.items()},
            router=row["router"],
            layout={int(k): v for k, v in layout.items()},
            style=row.get("style") or "",
            negative=row.get("negative") or "",
            active_version_id=row["active_version_id"],
            status=row["status"],
            error=row["error"],
            created=row["created"],
            updated=row["updated"],
            lines=json.loads(row.get("lines") or "[]"),
            control=json.loads(row.get("control") or "{}"),
            lora=json.loads(row.get("lora") or "{}"),
            page_fit=row.get("page_fit") or "",
        )

    def _version(self, row: dict) -> Version:
        return Version(
            id=row["id"],
            panel_id=row["panel_id"],
            settings=json.loads(row["settings"]),
            model_id=row["model_id"],
            image_path=self.database.absolute(row["image_path"]),
            route_map_path=self.database.absolute(row["route_map_path"]),
            created=row["created"],
            scores=json.loads(row["scores"]) if row.get("scores") else None,
        )

    def _row(self, table: str, row_id: int, what: str) -> dict:
        if isinstance(row_id, bool) or not isinstance(row_id, int):
            raise TypeError(f"a {what} id must be an int, got {row_id!r}")
        rows = list(self.db[table].rows_where("id = ?", [row_id]))
        if not rows:
            raise KeyError(f"no {what} with id {row_id}")
        return rows[0]

    def _touch_story(self, story_id: int) -> None:
        self.db.execute("UPDATE stories SET updated = ? WHERE id = ?", [now(), story_id])

    # -- stories --

    def create_story(self, title: str = "Untitled story") -> Story:
        title = self._title(title)
        stamp = now()
        with self.database.transaction():
            story_id = int(self.db["stories"].insert({"title": title, "created": stamp, "updated": stamp}).last_pk)
        return self.get_story(story_id)

    @staticmethod
    def _title(title: str) -> str:
        if not isinstance(title, str) or not title.strip():
            raise ValueError("a story needs a title")
        return title.strip()

    def stories(self) -> list[Story]:
        """All stories, oldest first."""
        return [self._story(r) for r in self.db["stories"].rows_where(order_by="id")]

    def get_story(self, story_id: int) -> Story:
        return self._story(self._row("stories", story_id, "story"))

    def rename_story(self, story_id: int, title: str) -> Story:
        title = self._title(title)
        with self.database.transaction():
            self._row("stories", story_id, "story")
            self.db["stories"].update(story_id, {"title": title, "updated": now()})
        return self.get_story(story_id)

    def set_story_style(self, story_id: int, style: str, negative: str) -> Story:
        """The story's style preset and negative prompt (the caller checks the preset exists).
        A change outdates every ready panel: the negative prompt reaches all of them."""
        style, negative = check_setting("style", style), check_setting("negative", negative)
        with self.database.transaction():
            row = self._row("stories", story_id, "story")
            if (row.get("style") or "", row.get("negative") or "") != (style, negative):
                self.db["stories"].update(story_id, {"style": style, "negative": negative, "updated": now()})
                self.db.execute(
                    "UPDATE panels SET status = 'outdated' WHERE story_id = ? AND status = 'ready'"
                    " AND active_version_id IS NOT NULL",
                    [story_id],
                )
        return self.get_story(story_id)

    def set_story_lora(self, story_id: int, lora: dict) -> Story:
        """The story's LoRA ({} none, or {"source", "weight"}: the caller stored the file). A change
        outdates every ready panel that follows the story's LoRA (a panel with its own keeps its image)."""
        checked = check_lora(lora, panel=False)
        text = json.dumps(checked, sort_keys=True)
        with self.database.transaction():
            row = self._row("stories", story_id, "story")
            if json.dumps(json.loads(row.get("lora") or "{}"), sort_keys=True) != text:
                self.db["stories"].update(story_id, {"lora": text, "updated": now()})
                self.db.execute(
                    "UPDATE panels SET status = 'outdated' WHERE story_id = ? AND status = 'ready'"
                    " AND active_version_id IS NOT NULL AND lora = '{}'",
                    [story_id],
                )
        return self.get_story(story_id)

    def delete_story(self, story_id: int) -> None:
        """Delete a story with its panels, versions and their files."""
        self.database.with_reserve(lambda: self._delete_story(story_id))

    def _delete_story(self, story_id: int) -> None:
        with self.database.transaction() as tx:
            self._row("stories", story_id, "story")
            for panel in list(self.db["panels"].rows_where("story_id = ?", [story_id])):
                self._delete_panel_rows(tx, panel["id"])
            self.db["stories"].delete(story_id)

    # -- panels --

    def add_panel(self, story_id: int, prompt: str = "", position: int | None = None, **settings: Any) -> Panel:
        """Add a panel at the end (or at `position`); unspecified settings take PANEL_DEFAULTS."""
        values = {
            key: check_setting(key, value) for key, value in {**PANEL_DEFAULTS, **settings, "prompt": prompt}.items()
        }
        with self.database.transaction():
            self._row("stories", story_id, "story")
            count = self._count_panels(story_id)
            position = count if position is None else max(0, min(int(position), count))
            self.db.execute(
                "UPDATE panels SET position = position + 1 WHERE story_id = ? AND position >= ?", [story_id, position]
            )
            stamp = now()
            row = {
                **_to_row(values),
                "story_id": story_id,
                "position": position,
                "active_version_id": None,
                "status": "empty",
                "error": "",
                "created": stamp,
                "updated": stamp,
            }
            panel_id = int(self.db["panels"].insert(row).last_pk)
            self._touch_story(story_id)
        return self.get_panel(panel_id)

    def _count_panels(self, story_id: int) -> int:
        return self.db.execute("SELECT COUNT(*) FROM panels WHERE story_id = ?", [story_id]).fetchone()[0]

    def panels(self, story_id: int) -> list[Panel]:
        """The story's panels in order."""
        self._row("stories", story_id, "story")
        return [
            self._panel(r) for r in self.db["panels"].rows_where("story_id = ?", [story_id], order_by="position, id")
        ]

    def get_panel(self, panel_id: int) -> Panel:
        return self._panel(self._row("panels", panel_id, "panel"))

    def update_panel(self, panel_id: int, **fields: Any) -> Panel:
        """Change settings (see PANEL_DEFAULTS). A real change outdates a panel that has an image."""
        values = {key: check_setting(key, value) for key, value in fields.items()}
        with self.database.transaction():
            row = self._row("panels", panel_id, "panel")
            current = self._panel(row).generation_settings()
            changed = {k: v for k, v in values.items() if _to_row({k: v})[k] != _to_row({k: current[k]})[k]}
            if not changed:
                return self._panel(row)
            status = "outdated" if row["active_version_id"] is not None else "empty"
            self.db["panels"].update(panel_id, {**_to_row(changed), "status": status, "error": "", "updated": now()})
            self._touch_story(row["story_id"])
        return self.get_panel(panel_id)

    def set_lines(self, panel_id: int, lines: list[dict], check_text: Callable[[str, str], str] | None = None) -> Panel:
        """Replace the panel's lines (see check_lines). Lines are a layer over the image: changing
        them never outdates the panel."""
        checked = check_lines(lines, check_text)
        with self.database.transaction():
            row = self._row("panels", panel_id, "panel")
            self.db["panels"].update(panel_id, {"lines": json.dumps(checked, ensure_ascii=False), "updated": now()})
            self._touch_story(row["story_id"])
        return self.get_panel(panel_id)

    def set_page_fit(self, panel_id: int, fit: str) -> Panel:
        """How the panel meets its page cell (check_page_fit); like lines, never outdates the panel."""
        checked = check_page_fit(fit)
        with self.database.transaction():
            row = self._row("panels", panel_id, "panel")
            self.db["panels"].update(panel_id, {"page_fit": checked, "updated": now()})
            self._touch_story(row["story_id"])
        return self.get_panel(panel_id)

    def _renumber(self, story_id: int, order: list[int]) -> None:
        for position, panel_id in enumerate(order):
            self.db.execute("UPDATE panels SET position = ? WHERE id = ?", [position, panel_id])

    def _order(self, story_id: int) -> list[int]:
        return [
            r[0] for r in self.db.execute("SELECT id FROM panels WHERE story_id = ? ORDER BY position, id", [story_id])
        ]

    def move_panel(self, panel_id: int, new_position: int) -> list[Panel]:
        """Move a panel to `new_position` (0 = first; clamped); returns the story's panels."""
        with self.database.transaction():
            row = self._row("panels", panel_id, "panel")
            order = [i for i in self._order(row["story_id"]) if i != panel_id]
            order.insert(max(0, min(int(new_position), len(order))), panel_id)
            self._renumber(row["story_id"], order)
            self._touch_story(row["story_id"])
        return self.panels(row["story_id"])

    def duplicate_panel(self, panel_id: int) -> Panel:
        """A copy of the panel's settings right after it, with no versions yet."""
        with self.database.transaction():
            row = self._row("panels", panel_id, "panel")
            settings = self._panel(row).generation_settings()
            prompt = settings.pop("prompt")
            copy = self.add_panel(row["story_id"], prompt, position=row["position"] + 1, **settings)
            layers = {"lines": row.get("lines") or "[]", "page_fit": row.get("page_fit") or ""}  # not settings: copied here
            self.db["panels"].update(copy.id, layers)
        return self.get_panel(copy.id)

    def delete_panel(self, panel_id: int) -> None:
        """Delete a panel with its versions and their files; later panels move up."""
        self.database.with_reserve(lambda: self._delete_panel(panel_id))

    def _delete_panel(self, panel_id: int) -> None:
        with self.database.transaction() as tx:
            row = self._row("panels", panel_id, "panel")
            self._delete_panel_rows(tx, panel_id)
            self._renumber(row["story_id"], self._order(row["story_id"]))
            self._touch_story(row["story_id"])

    def _delete_panel_rows(self, tx: Transaction, panel_id: int) -> None:
        for version in list(self.db["versions"].rows_where("panel_id = ?", [panel_id], select="id")):
            tx.discard_after_commit(f"versions/{version['id']}")
        self.db.execute("DELETE FROM versions WHERE panel_id = ?", [panel_id])
        self.db["panels"].delete(panel_id)

    # -- versions --

    def add_version(
        self,
        panel_id: int,
        settings: dict,
        model_id: str,
        image_png: bytes,
        route_maps: bytes | None = None,
        *,
        route_maps_suffix: str = ".bin",
        scores: dict | None = None,
    ) -> Version:
        """Keep a generation: files + row; it becomes the panel's active version, panel "ready"."""
        if not isinstance(settings, dict):
            raise TypeError("settings must be a dict")
        settings_json = _json_dump(settings, "settings")
        scores_json = None if scores is None else _json_dump(scores, "scores")
        image_png = require_png(image_png, "the panel image")
        if route_maps is not None:
            route_maps = bytes(route_maps)
        suffix = stored_file_name("x" + route_maps_suffix)[1:]
        with self.database.transaction() as tx:
            panel = self._row("panels", panel_id, "panel")
            table = self.db["versions"].insert(
                {
                    "panel_id": panel_id,
                    "settings": settings_json,
                    "model_id": str(model_id or ""),
                    "image_path": "",
                    "route_map_path": None,
                    "created": now(),
                    "scores": scores_json,
                }
            )
            version_id = int(table.last_pk)
            folder = PurePosixPath("versions", str(version_id))
            tx.fresh_folder(folder)
            paths = {"image_path": tx.write(folder / f"image-{token()}.png", image_png)}
            if route_maps is not None:
                paths["route_map_path"] = tx.write(folder / f"route_maps-{token()}{suffix}", route_maps)
            self.db["versions"].update(version_id, paths)
            self.db["panels"].update(
                panel_id, {"active_version_id": version_id, "status": "ready", "error": "", "updated": now()}
            )
            self._touch_story(panel["story_id"])
        return self.get_version(version_id)

    def get_version(self, version_id: int) -> Version:
        return self._version(self._row("versions", version_id, "version"))

    def set_version_scores(self, version_id: int, scores: dict | None) -> Version:
        """Store (or clear) a version's consistency scores."""
        scores_json = None if scores is None else _json_dump(scores, "scores")
        with self.database.transaction():
            self._row("versions", version_id, "version")
            self.db["versions"].update(version_id, {"scores": scores_json})
        return self.get_version(version_id)

    def versions(self, panel_id: int) -> list[Version]:
        """The panel's versions, oldest first."""
        self._row("panels", panel_id, "panel")
        return [self._version(r) for r in self.db["versions"].rows_where("panel_id = ?", [panel_id], order_by="id")]

    def active_version(self, panel_id: int) -> Version | None:
        row = self._row("panels", panel_id, "panel")
        return None if row["active_version_id"] is None else self.get_version(row["active_version_id"])

    def set_active_version(self, panel_id: int, version_id: int) -> Panel:
        """Show an earlier (or later) kept version; the panel is "ready" with it."""
        with self.database.transaction():
            self._row("panels", panel_id, "panel")
            version = self._row("versions", version_id, "version")
            if version["panel_id"] != panel_id:
                raise ValueError(f"version {version_id} belongs to panel {version['panel_id']}, not panel {panel_id}")
            self.db["panels"].update(
                panel_id, {"active_version_id": version_id, "status": "ready", "error": "", "updated": now()}
            )
        return self.get_panel(panel_id)

    def delete_version(self, version_id: int) -> Panel:
        """Delete one kept version; if it was active, the newest remaining one becomes active."""

        def delete() -> int:
            with self.database.transaction() as tx:
                return self._delete_version_row(tx, self._row("versions", version_id, "version"))

        return self.get_panel(self.database.with_reserve(delete))

    def _delete_version_row(self, tx: Transaction, version: dict) -> int:
        """Delete a version's row (files after the commit); returns its panel's id."""
        panel = self._row("panels", version["panel_id"], "panel")
        self.db["versions"].delete(version["id"])
        tx.discard_after_commit(f"versions/{version['id']}")
        if panel["active_version_id"] == version["id"]:
            newest = self.db.execute("SELECT MAX(id) FROM versions WHERE panel_id = ?", [panel["id"]]).fetchone()[0]
            changes = {"active_version_id": newest, "updated": now()}
            if newest is None and panel["status"] != "failed":
                changes["status"] = "empty"
            self.db["panels"].update(panel["id"], changes)
        return panel["id"]

    def delete_versions(
        self,
        story_id: int | None = None,
        *,
        keep_active: bool = True,
        older_than: str | _dt.datetime | None = None,
        batch: int = 100,
    ) -> DeletedVersions:
        """Delete kept versions in bulk (of one story, or of all): by default every version that
        is not its panel's active one. `older_than` keeps the versions made since then.

        Deleted a batch per transaction, each freeing its files before the next: on a full disk
        the first batch makes room for the others. Returns how many versions and bytes went."""
        query = "SELECT versions.id FROM versions JOIN panels ON panels.id = versions.panel_id WHERE 1"
        args: list[Any] = []
        if story_id is not None:
            self._row("stories", story_id, "story")
            query += " AND panels.story_id = ?"
            args.append(story_id)
        if keep_active:
            query += " AND (panels.active_version_id IS NULL OR panels.active_version_id != versions.id)"
        if older_than is not None:
            if isinstance(older_than, _dt.datetime):
                older_than = older_than.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")
            query += " AND versions.created < ?"
            args.append(str(older_than))
        ids = [row[0] for row in self.db.execute(query + " ORDER BY versions.id", args)]
        freed = 0
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            sizes = sum(folder_bytes(self.database.data_dir / "versions" / str(i)) for i in chunk)

            def delete(chunk: list[int] = chunk) -> None:
                with self.database.transaction() as tx:
                    for row in self.db["versions"].rows_where(f"id IN ({', '.join('?' * len(chunk))})", chunk):
                        self._delete_version_row(tx, row)

            self.database.with_reserve(delete)
            freed += sizes
        return DeletedVersions(count=len(ids), bytes_freed=freed)

    def storage_report(self, exports_dir: Path) -> StorageReport:
        """The data folder's bytes by kind (characters, versions, exports, database, other) and
        its disk's free space."""
        root = self.database.data_dir
        sizes = {"characters": 0, "versions": 0, "exports": 0, "database": 0, "other": 0}
        exports_dir = Path(exports_dir).absolute()
        for entry in root.iterdir() if root.is_dir() else []:
            if entry.name in ("characters", "versions"):
                kind = entry.name
            elif entry == exports_dir:
                kind = "exports"
            elif entry.name.startswith(DB_NAME):
                kind = "database"
            else:
                kind = "other"
            sizes[kind] += entry.stat().st_size if entry.is_file() else folder_bytes(entry)
        if exports_dir.parent != root:
            sizes["exports"] = folder_bytes(exports_dir)
        old = [
            row[0]
            for row in self.db.execute(
                "SELECT versions.id FROM versions JOIN panels ON panels.id = versions.panel_id"
                " WHERE panels.active_version_id IS NULL OR panels.active_version_id != versions.id"
            )
        ]
        return StorageReport(
            **sizes,
            free=shutil.disk_usage(root).free,
            old_versions=len(old),
            old_version_bytes=sum(folder_bytes(root / "versions" / str(i)) for i in old),
        )

    def mark_failed(self, panel_id: int, reason: str) -> Panel:
        """Record a failed generation; earlier versions and the active one stay. Gets through on a
        full disk (the reason may be that the disk is full)."""

        def mark() -> None:
            with self.database.transaction():
                self._row("panels", panel_id, "panel")
                self.db["panels"].update(panel_id, {"status": "failed", "error": str(reason), "updated": now()})

        self.database.with_reserve(mark)
        return self.get_panel(panel_id)

    # -- characters in panels --

    def _cast_ids(self, row: dict) -> set[int]:
        panel = self._panel(row)
        ids = set(panel.characters) | set(panel.strengths) | set(panel.layout)
        for name in mentioned_names(panel.prompt):
            found = self.db.execute("SELECT id FROM characters WHERE name_key = ?", [name_key(name)]).fetchone()
            if found:
                ids.add(found[0])
        return ids

    def delete_character(self, id_or_name: int | str) -> None:
        """Delete a character and, in the same transaction, its settings in every panel (ticked,
        strength, layout box), so no later character inherits them. A `[Name]` left in a prompt
        stays as written (generating the panel says the name is unknown)."""
        self.database.with_reserve(lambda: self._delete_character(id_or_name))

    def _delete_character(self, id_or_name: int | str) -> None:
        with self.database.transaction():
            character = self.library.get_character(id_or_name)
            for row in list(self.db["panels"].rows_where(order_by="id")):
                panel = self._panel(row)
                changes = {}
                if character.id in panel.characters:
                    changes["characters"] = [c for c in panel.characters if c != character.id]
                for key in ("strengths", "layout"):
                    settings = getattr(panel, key)
                    if character.id in settings:
                        changes[key] = {k: v for k, v in settings.items() if k != character.id}
                if changes:
                    self.update_panel(panel.id, **changes)
                if any(line["speaker"] == character.id for line in panel.lines):  # no heir may speak them
                    kept = [
                        {**line, "speaker": None} if line["speaker"] == character.id else line for line in panel.lines
                    ]
                    self.db["panels"].update(panel.id, {"lines": json.dumps(kept, ensure_ascii=False)})
            self.library.delete_character(character.id)

    def panels_using_character(self, character_id: int) -> list[Panel]:
        """Panels (of every story) that tick the character or name it in the prompt."""
        character = self.library.get_character(character_id)
        key = name_key(character.name)
        using = []
        for row in self.db["panels"].rows_where(order_by="story_id, position, id"):
            panel = self._panel(row)
            if character.id in panel.characters or any(name_key(n) == key for n in mentioned_names(panel.prompt)):
                using.append(panel)
        return using

    # -- project archives --

    def export_project(self, story_id: int, path: str | os.PathLike) -> Path:
        """One zip: project.json (story, panels, versions), the versions' files, and the cast
        the panels use (characters.json + their files, as `Library.export_characters`)."""
        path = Path(path)
        with self.database.snapshot(), open_atomic(path) as f:
            story = self._row("stories", story_id, "story")
            panel_rows = list(self.db["panels"].rows_where("story_id = ?", [story_id], order_by="position, id"))
            cast: set[int] = set()
            panels, versions = [], []
            for row in panel_rows:
                cast |= self._cast_ids(row)
                panel = self._panel(row)
                panels.append({k: v for k, v in vars(panel).items() if k != "story_id"})
                for version in self.db["versions"].rows_where("panel_id = ?", [row["id"]], order_by="id"):
                    versions.append(
                        {
                            "id": version["id"],
                            "panel_id": version["panel_id"],
                            "settings": json.loads(version["settings"]),
                            "model_id": version["model_id"],
                            "image": version["image_path"],
                            "route_maps": version["route_map_path"],
                            "created": version["created"],
                            "scores": json.loads(version["scores"]) if version["scores"] else None,
                        }
                    )
            existing = {r[0] for r in self.db.execute("SELECT id FROM characters")}
            records = self.library.archive_records(sorted(cast & existing))
            story = {**story, "lora": json.loads(story.get("lora") or "{}")}
            project = {
                "format": PROJECT_FORMAT,
                "format_version": PROJECT_VERSION,
                "story": story,
                "panels": panels,
                "versions": versions,
            }
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(PROJECT_JSON, json.dumps(project, indent=1, ensure_ascii=False))
                self.library.write_archive_records(archive, records)
                for version in versions:
                    for key in ("image", "route_maps"):
                        if version[key]:
                            archive.write(self.database.data_dir / version[key], version[key])
                for member in _control_pictures(panels, versions):  # stored once by content
                    archive.write(self.database.data_dir / member, member)
                for member in _lora_files(story, panels, versions):  # LoRA files too (uploads only)
                    archive.write(self.database.data_dir / member, member)
        return path

    def _check_project(self, archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> dict:
        """Validate project.json against the archive; returns the checked story, panels, versions."""
        data = read_json(archive, members, PROJECT_JSON)
        if data.get("format") != PROJECT_FORMAT:
            raise ValueError(f"{PROJECT_JSON} is not an AnyStory project")
        if not isinstance(data.get("format_version"), int) or data["format_version"] > PROJECT_VERSION:
            raise ValueError(
                f"{PROJECT_JSON} has format version {data.get('format_version')!r}; "
                f"this app reads up to {PROJECT_VERSION}"
            )
        story = data.get("story")
        if not isinstance(story, dict) or not isinstance(story.get("id"), int):
            raise ValueError(f"{PROJECT_JSON} has no valid story")
        checked_story = {
            "id": story["id"],
            "title": self._title(story.get("title")),
            "style": check_setting("style", story.get("style") or ""),
            "negative": check_setting("negative", story.get("negative") or ""),
            "lora": self._checked(lambda: check_lora(story.get("lora") or {}, panel=False), f"{PROJECT_JSON} story"),
            "created": str(story.get("created") or now()),
            "updated": str(story.get("updated") or now()),
        }
        panels, panel_ids = [], set()
        raw_panels = data.get("panels")
        if not isinstance(raw_panels, list):
            raise ValueError(f"{PROJECT_JSON} must list panels")
        for i, raw in enumerate(raw_panels):
            where = f"{PROJECT_JSON} panel {i + 1}"
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), int) or raw["id"] in panel_ids:
                raise ValueError(f"{where} has a missing or repeated id")
            panel_ids.add(raw["id"])
            try:
                settings = {k: check_setting(k, raw.get(k, default)) for k, default in PANEL_DEFAULTS.items()}
                lines = check_lines(raw.get("lines", []))
                page_fit = check_page_fit(raw.get("page_fit", ""))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: {err}") from err
            status = raw.get("status", "empty")
            if status not in PANEL_STATUSES:
                raise ValueError(f"{where}: unknown status {status!r}")
            panels.append(
                {
                    "id": raw["id"],
                    "settings": settings,
                    "lines": lines,
                    "page_fit": page_fit,
                    "position": _int(raw.get("position", i), f"{where}: position", 0, 10**9),
                    "active_version_id": raw.get("active_version_id"),
                    "status": status,
                    "error": str(raw.get("error", "")),
                    "created": str(raw.get("created") or now()),
                    "updated": str(raw.get("updated") or now()),
                }
            )
        versions, version_ids = [], set()
        raw_versions = data.get("versions")
        if not isinstance(raw_versions, list):
            raise ValueError(f"{PROJECT_JSON} must list versions")
        for i, raw in enumerate(raw_versions):
            where = f"{PROJECT_JSON} version {i + 1}"
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), int) or raw["id"] in version_ids:
                raise ValueError(f"{where} has a missing or repeated id")
            version_ids.add(raw["id"])
            if raw.get("panel_id") not in panel_ids:
                raise ValueError(f"{where} belongs to no panel of the project")
            if not isinstance(raw.get("settings"), dict):
                raise ValueError(f"{where}: settings must be an object")
            files = {}
            for key in ("image", "route_maps"):
                member = raw.get(key)
                if member is None and key == "route_maps":
                    continue
                if not isinstance(member, str):
                    raise ValueError(f"{where}: {key} must be a path")
                safe_member_name(member)
                stored_file_name(PurePosixPath(member).name)
                if member not in members:
                    raise ValueError(f"{where}: the archive lacks {member!r}")
                files[key] = member
            scores = raw.get("scores")
            if scores is not None:  # checked as the app reads them; archives of older apps have none
                scores = PanelScores.from_dict(scores, f"{where}: scores").to_dict()
            versions.append(
                {
                    "id": raw["id"],
                    "panel_id": raw["panel_id"],
                    "settings": raw["settings"],
                    "model_id": str(raw.get("model_id", "")),
                    "files": files,
                    "created": str(raw.get("created") or now()),
                    "scores": scores,
                }
            )
        for panel in panels:
            active = panel["active_version_id"]
            if active is not None and not any(v["id"] == active and v["panel_id"] == panel["id"] for v in versions):
                raise ValueError(
                    f"{PROJECT_JSON}: panel {panel['id']}'s active version {active!r} is not one of its versions"
                )
        panels.sort(key=lambda p: (p["position"], p["id"]))
        controls = _control_pictures([p["settings"] for p in panels], versions)
        missing = [member for member in controls if member not in members]
        if missing:
            raise ValueError(f"{PROJECT_JSON}: the archive lacks the control picture {missing[0]!r}")
        loras = self._checked(
            lambda: _lora_files(checked_story, [p["settings"] for p in panels], versions), f"{PROJECT_JSON} versions"
        )
        missing = [member for member in loras if member not in members]
        if missing:
            raise ValueError(f"{PROJECT_JSON}: the archive lacks the LoRA file {missing[0]!r}")
        return {"story": checked_story, "panels": panels, "versions": versions, "controls": controls, "loras": loras}

    @staticmethod
    def _checked(check: Callable[[], Any], where: str) -> Any:
        try:
            return check()
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err

    def _is_empty(self) -> bool:
        return not any(
            self.db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
            for table in ("characters", "stories", "panels", "versions")
        )

    def import_project(self, path: str | os.PathLike, *, check_picture: Callable[[Path, str, int], None]) -> Story:
        """Import an `export_project` zip as a new story; returns it.

        Everything is checked before a row is written: member names (nothing may escape the data
        folder), sizes, JSON, and every file, streamed to a staging folder within its kind's
        limit, every picture decoded by `check_picture` (e.g. `images.check_stored_picture`).
        Then all rows and files go in one transaction. Into an empty data folder the import is
        identical (same ids, rows and files). Otherwise ids are new, a cast member already in the
        library (same name, description, image and mask) is reused, and a different character
        with a taken name is renamed ("Mia (2)"), prompts following.
        """
        with read_archive(path) as archive:
            members = check_archive(archive, max_member=max(MAX_MEMBER_BYTES, MAX_LORA_BYTES))  # kinds' limits: stage
            project = self._check_project(archive, members)
            records = self.library.check_archive_records(archive, members)
            needed = self.library.archived_members(records)
            needed += [member for version in project["versions"] for member in version["files"].values()]
            needed += project["controls"] + project["loras"]
            with staged_members(archive, members, self.database.data_dir, needed) as staged:
                self.library.stage_records(staged, records, check_picture)
                self._stage_versions(staged, project["versions"], check_picture)
                self._stage_controls(staged, project["controls"], check_picture)
                self._stage_loras(staged, project["loras"])
                with self.database.transaction() as tx:
                    story_id = self._insert_project(tx, staged, project, records)
        return self.get_story(story_id)

    @staticmethod
    def _stage_versions(
        staged: StagedMembers, versions: list[dict], check_picture: Callable[[Path, str, int], None]
    ) -> None:
        """Stream the versions' files into the staging folder; decode every panel image; check
        that a route-map file holds no nested bomb."""
        for i, version in enumerate(versions):
            where = f"{PROJECT_JSON} version {i + 1}"
            image = staged.stage(version["files"]["image"], MAX_PANEL_PICTURE_BYTES, f"{where}: the image")
            check_picture(image, f"{where}: the image", MAX_PANEL_SIDE)
            member = version["files"].get("route_maps")
            if member is not None:
                maps = staged.stage(member, MAX_ROUTE_MAPS_BYTES, f"{where}: the route maps")
                if member.endswith(".npz"):  # the app's own format: a zip of arrays
                    check_zip_file(maps, f"{where}: the route maps", max_total=MAX_ROUTE_MAPS_INFLATED)

    @staticmethod
    def _stage_controls(staged: StagedMembers, controls: list[str], check_picture) -> None:
        """Stream the control pictures in; each is a PNG whose SHA-256 is its name (how they are stored)."""
        for member in controls:
            what = f"the control picture {member}"
            path = staged.stage(member, MAX_PANEL_PICTURE_BYTES, what)
            check_picture(path, what, MAX_PANEL_SIDE)
            if hashlib.sha256(path.read_bytes()).hexdigest() != PurePosixPath(member).stem:
                raise ValueError(f"{what} does not hold the picture its name says (its SHA-256 differs)")

    @staticmethod
    def _stage_loras(staged: StagedMembers, loras: list[str]) -> None:
        """Stream the LoRA files in; each must be a safetensors file (by content: never a pickle)
        whose SHA-256 is its name (how they are stored)."""
        for member in loras:
            what = f"the LoRA file {member}"
            path = staged.stage(member, MAX_LORA_BYTES, what)
            check_safetensors(path, what)
            if file_sha256(path) != PurePosixPath(member).stem:
                raise ValueError(f"{what} does not hold the file its name says (its SHA-256 differs)")

    def _insert_project(self, tx: Transaction, staged: StagedMembers, project: dict, records: list[dict]) -> int:
        """The rows and files of a checked, staged project (inside the import's transaction)."""
        for member in project["controls"] + project["loras"]:  # by content: one already here is the same file
            if not (self.database.data_dir / member).exists():
                tx.move_in(staged.path(member), PurePosixPath(member))
        keep = self._is_empty()
        before = {r["id"]: r["name"] for r in records}
        cast = self.library.import_records(tx, staged, records, on_clash="reuse", keep_ids=keep)
        renamed = {}
        for old_id, new_id in cast.items():
            if new_id is not None:
                new_name = self.db.execute("SELECT name FROM characters WHERE id = ?", [new_id]).fetchone()[0]
                if new_name != before[old_id]:
                    renamed[before[old_id]] = new_name
        story = project["story"]
        row = {k: story[k] for k in ("title", "created", "updated", "style", "negative")}
        row["lora"] = json.dumps(story["lora"], sort_keys=True)
        if keep:
            row["id"] = story["id"]
        story_id = int(self.db["stories"].insert(row).last_pk)
        panel_ids: dict[int, int] = {}
        for position, panel in enumerate(project["panels"]):
            settings = self._remap_settings(panel["settings"], cast, renamed)
            lines = [
                {**line, "speaker": cast.get(line["speaker"]) if line["speaker"] is not None else None}
                for line in panel["lines"]
            ]
            row = {
                **_to_row(settings),
                "lines": json.dumps(lines, ensure_ascii=False),
                "page_fit": panel["page_fit"],
                "story_id": story_id,
                "position": position,
                "active_version_id": None,
                "status": panel["status"],
                "error": panel["error"],
                "created": panel["created"],
                "updated": panel["updated"],
            }
            if keep:
                row["id"] = panel["id"]
            panel_ids[panel["id"]] = int(self.db["panels"].insert(row).last_pk)
        version_ids: dict[int, int] = {}
        for version in project["versions"]:
            row = {
                "panel_id": panel_ids[version["panel_id"]],
                "settings": _json_dump(version["settings"], "version settings"),
                "model_id": version["model_id"],
                "image_path": "",
                "route_map_path": None,
                "created": version["created"],
                "scores": None if version["scores"] is None else _json_dump(version["scores"], "version scores"),
            }
            if keep:
                row["id"] = version["id"]
            version_id = int(self.db["versions"].insert(row).last_pk)
            version_ids[version["id"]] = version_id
            folder = PurePosixPath("versions", str(version_id))
            tx.fresh_folder(folder)
            paths = {
                column: tx.move_in(staged.path(member), folder / PurePosixPath(member).name)
                for key, column in (("image", "image_path"), ("route_maps", "route_map_path"))
                if (member := version["files"].get(key)) is not None
            }
            self.db["versions"].update(version_id, paths)
        for panel in project["panels"]:
            if panel["active_version_id"] is not None:
                self.db.execute(
                    "UPDATE panels SET active_version_id = ? WHERE id = ?",
                    [version_ids[panel["active_version_id"]], panel_ids[panel["id"]]],
                )
        return story_id

    @staticmethod
    def _remap_settings(settings: dict, cast: dict[int, int | None], renamed: dict[str, str]) -> dict:
        """Point a panel's character ids at the imported cast; ids outside the cast are dropped."""
        out = dict(settings)
        out["characters"] = [cast[i] for i in settings["characters"] if cast.get(i) is not None]
        out["strengths"] = {cast[i]: v for i, v in settings["strengths"].items() if cast.get(i) is not None}
        out["layout"] = {cast[i]: v for i, v in settings["layout"].items() if cast.get(i) is not None}
        out["prompt"] = rename_mentions(settings["prompt"], renamed)
        return out
