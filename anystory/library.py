"""The character library: named characters with their reference image, mask and cached encoding.

A character is encoded once (METHOD.md §1); its `SubjectEncoding` bytes are stored next to its
images so every panel reuses them. Rows live in the `characters` table, files in
`<data_dir>/characters/<id>/` under names made of a role and a random token (never the name).
"""

from __future__ import annotations

import filecmp
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .archive import (
    MiB,
    StagedMembers,
    check_archive,
    png_size_bound,
    read_archive,
    read_json,
    safe_member_name,
    staged_members,
    stored_file_name,
)
from .files import open_atomic
from .mentions import rename_mentions
from .names import name_key, numbered_name, validate_name
from .storage import StudioDatabase, Transaction, now, require_png, token

STATUSES = ("ready", "stale", "missing", "failed")
ARCHIVE_JSON = "characters.json"
ARCHIVE_FORMAT = "anystory.characters"
ARCHIVE_VERSION = 1
# What the app stores, so what an archive may bring: pictures at most 4096 px a side
# (images.MAX_SIDE: uploads are downscaled to it) in RGBA at worst; encodings of the real
# model are 43 MB (98 MB in the older format 1); the limit leaves room for fp32.
MAX_STORED_SIDE = 4096
MAX_PICTURE_BYTES = png_size_bound(MAX_STORED_SIDE, MAX_STORED_SIDE, 4)
MAX_ENCODING_BYTES = 256 * MiB

# role -> (row column, file suffix)
_FILES = {
    "image": ("image_path", ".png"),
    "mask": ("mask_path", ".png"),
    "thumbnail": ("thumbnail_path", ".png"),
    "encoding": ("encoding_path", ".safetensors"),
}


@dataclass
class Character:
    """One row of the library, with absolute file paths."""

    id: int
    name: str
    description: str
    image_path: Path
    mask_path: Path
    thumbnail_path: Path
    encoding_path: Path | None
    encoder_id: str
    status: str  # "ready" | "stale" | "missing" | "failed"
    created: str
    updated: str

    @property
    def has_encoding(self) -> bool:
        return self.encoding_path is not None


class CharacterNotFound(KeyError):
    """No character with that id or name; the message lists the names that exist."""

    def __init__(self, wanted: int | str, known: list[str]):
        self.wanted = wanted
        self.known = known
        listed = ", ".join(known) if known else "none yet"
        what = f"id {wanted}" if isinstance(wanted, int) else f"name {wanted!r}"
        super().__init__(f"no character with {what}; known characters: {listed}")

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def _bytes(data: Any, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ValueError(f"{what} is empty")
    return data


class Library:
    """Characters of one data folder. Safe to share between threads."""

    def __init__(self, database: StudioDatabase):
        self.database = database

    @property
    def db(self):
        return self.database.db

    # -- reading --

    def _character(self, row: dict) -> Character:
        absolute = self.database.absolute
        return Character(
            id=row["id"],
            name=row["name"],
            description=row["description"],
            image_path=absolute(row["image_path"]),
            mask_path=absolute(row["mask_path"]),
            thumbnail_path=absolute(row["thumbnail_path"]),
            encoding_path=absolute(row["encoding_path"]),
            encoder_id=row["encoder_id"],
            status=row["status"],
            created=row["created"],
            updated=row["updated"],
        )

    def _rows(self) -> list[dict]:
        return list(self.db["characters"].rows_where(order_by="name COLLATE NOCASE, id"))

    def names(self) -> list[str]:
        """All names, in display order."""
        return [row["name"] for row in self.db.query("SELECT name FROM characters ORDER BY name COLLATE NOCASE, id")]

    def mention_map(self) -> dict[str, tuple[int, str]]:
        """name -> (id, description) of every character: the table `story.resolve_mentions` takes."""
        return {row["name"]: (row["id"], row["description"]) for row in self._rows()}

    def _row(self, id_or_name: int | str) -> dict:
        if isinstance(id_or_name, bool) or not isinstance(id_or_name, (int, str)):
            raise TypeError(f"a character is found by id (int) or name (str), got {id_or_name!r}")
        if isinstance(id_or_name, int):
            rows = list(self.db["characters"].rows_where("id = ?", [id_or_name]))
        else:
            rows = list(self.db["characters"].rows_where("name_key = ?", [name_key(id_or_name)]))
        if not rows:
            raise CharacterNotFound(id_or_name, self.names())
        return rows[0]

    def characters(self, search: str | None = None) -> list[Character]:
        """All characters by name; `search` keeps those whose name or description contains it."""
        rows = self._rows()
        if search and search.strip():
            needle = name_key(search)
            rows = [r for r in rows if needle in name_key(r["name"]) or needle in name_key(r["description"])]
        return [self._character(r) for r in rows]

    def get_character(self, id_or_name: int | str) -> Character:
        """By id, or by name ignoring case. Raises CharacterNotFound listing the known names."""
        return self._character(self._row(id_or_name))

    def read_encoding(self, id_or_name: int | str) -> bytes:
        """The stored encoding bytes (a SubjectEncoding safetensors file)."""
        row = self._row(id_or_name)
        if not row["encoding_path"]:
            raise ValueError(f"character {row['name']!r} has no encoding (status {row['status']!r})")
        return self.database.read_bytes(row["encoding_path"])

    # -- writing --

    def check_name(self, name: str, except_id: int | None = None) -> str:
        """The name as it would be stored, if it is valid and free (ValueError says why not)."""
        name = validate_name(name)
        self._check_free(name, except_id)
        return name

    def _check_free(self, name: str, except_id: int | None = None) -> None:
        for row in self.db["characters"].rows_where("name_key = ?", [name_key(name)]):
            if row["id"] != except_id:
                raise ValueError(f"a character named {row['name']!r} already exists; choose another name than {name!r}")

    @staticmethod
    def _file(tx: Transaction, character_id: int, role: str, data: bytes) -> str:
        suffix = _FILES[role][1]
        return tx.write(PurePosixPath("characters", str(character_id), f"{role}-{token()}{suffix}"), data)

    def add_character(
        self,
        name: str,
        description: str,
        image_png: bytes,
        mask_png: bytes,
        thumbnail_png: bytes,
        encoding: bytes | None,
        encoder_id: str,
    ) -> Character:
        """Add a character with its files; status "ready" with an encoding, else "missing".

        Raises ValueError when the name is empty, invalid, or taken (ignoring case).
        """
        name = validate_name(name)
        description = str(description or "").strip()
        image_png = require_png(image_png, "the image")
        mask_png = require_png(mask_png, "the mask")
        thumbnail_png = require_png(thumbnail_png, "the thumbnail")
        encoding = None if encoding is None else _bytes(encoding, "the encoding")
        with self.database.transaction() as tx:
            self._check_free(name)
            stamp = now()
            table = self.db["characters"].insert(
                {
                    "name": name,
                    "name_key": name_key(name),
                    "description": description,
                    "image_path": "",
                    "mask_path": "",
                    "thumbnail_path": "",
                    "encoding_path": None,
                    "encoder_id": str(encoder_id or ""),
                    "status": "ready" if encoding is not None else "missing",
                    "created": stamp,
                    "updated": stamp,
                }
            )
            character_id = int(table.last_pk)
            tx.fresh_folder(f"characters/{character_id}")
            paths = {
                "image_path": self._file(tx, character_id, "image", image_png),
                "mask_path": self._file(tx, character_id, "mask", mask_png),
                "thumbnail_path": self._file(tx, character_id, "thumbnail", thumbnail_png),
                "encoding_path": None if encoding is None else self._file(tx, character_id, "encoding", encoding),
            }
            self.db["characters"].update(character_id, paths)
        return self.get_character(character_id)

    def update_character(
        self,
        id_or_name: int | str,
        *,
        name: str | None = None,
        description: str | None = None,
        image_png: bytes | None = None,
        mask_png: bytes | None = None,
        thumbnail_png: bytes | None = None,
    ) -> Character:
        """Change fields; a new image or mask makes the encoding "stale" (it no longer matches).

        A rename also rewrites `[Old name]` mentions in panel prompts, so stories keep working.
        """
        with self.database.transaction() as tx:
            row = self._row(id_or_name)
            character_id = row["id"]
            changes: dict[str, Any] = {}
            if name is not None:
                name = validate_name(name)
                if name != row["name"]:
                    self._check_free(name, except_id=character_id)
                    changes.update(name=name, name_key=name_key(name))
            if description is not None and description.strip() != row["description"]:
                changes["description"] = description.strip()
            tx.folder(f"characters/{character_id}")
            for role, data in (("image", image_png), ("mask", mask_png), ("thumbnail", thumbnail_png)):
                if data is not None:
                    column = _FILES[role][0]
                    changes[column] = self._file(tx, character_id, role, require_png(data, f"the {role}"))
                    tx.discard_after_commit(row[column])
            if (image_png is not None or mask_png is not None) and row["encoding_path"]:
                changes["status"] = "stale"
            if not changes:
                return self._character(row)
            changes["updated"] = now()
            self.db["characters"].update(character_id, changes)
            if "name" in changes:
                self._rename_mentions(row["name"], changes["name"])
        return self.get_character(character_id)

    def _rename_mentions(self, old: str, new: str) -> None:
        for panel in list(self.db.query("SELECT id, prompt FROM panels WHERE prompt LIKE '%[%'")):
            prompt = rename_mentions(panel["prompt"], {old: new})
            if prompt != panel["prompt"]:
                self.db.execute("UPDATE panels SET prompt = ? WHERE id = ?", [prompt, panel["id"]])

    def set_encoding(self, id_or_name: int | str, encoding: bytes, encoder_id: str) -> Character:
        """Store a (re-)computed encoding; the character becomes "ready"."""
        encoding = _bytes(encoding, "the encoding")
        with self.database.transaction() as tx:
            row = self._row(id_or_name)
            tx.folder(f"characters/{row['id']}")
            path = self._file(tx, row["id"], "encoding", encoding)
            tx.discard_after_commit(row["encoding_path"])
            self.db["characters"].update(
                row["id"],
                {"encoding_path": path, "encoder_id": str(encoder_id or ""), "status": "ready", "updated": now()},
            )
        return self.get_character(row["id"])

    def mark_status(self, id_or_name: int | str, status: str) -> Character:
        """Record that an encoding is stale (weights changed), failed, etc."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")

        def mark() -> int:  # a failure mark must get through on a full disk
            with self.database.transaction():
                row = self._row(id_or_name)
                if status == "ready" and not row["encoding_path"]:
                    raise ValueError(f"character {row['name']!r} cannot be ready without an encoding")
                self.db["characters"].update(row["id"], {"status": status, "updated": now()})
            return row["id"]

        return self.get_character(self.database.with_reserve(mark))

    def delete_character(self, id_or_name: int | str) -> None:
        """Delete the row and its files. Panels keep the id: `Stories.delete_character` removes both."""
        self.database.with_reserve(lambda: self._delete_character(id_or_name))

    def _delete_character(self, id_or_name: int | str) -> None:
        with self.database.transaction() as tx:
            row = self._row(id_or_name)
            self.db["characters"].delete(row["id"])
            tx.discard_after_commit(f"characters/{row['id']}")

    def adopt_characters(self, source: Library) -> list[Character]:
        """Add every character of another library (another data folder) whose name is free here,
        sharing its files instead of copying them (the example cast in each new workspace)."""
        added = []
        with source.database.snapshot(), self.database.transaction() as tx:
            for row in source._rows():
                if list(self.db["characters"].rows_where("name_key = ?", [row["name_key"]])):
                    continue
                fields = {k: row[k] for k in ("name", "name_key", "description", "encoder_id", "status")}
                stamp = now()
                character_id = int(
                    self.db["characters"]
                    .insert(
                        {
                            **fields,
                            "image_path": "",
                            "mask_path": "",
                            "thumbnail_path": "",
                            "encoding_path": None,
                            "created": stamp,
                            "updated": stamp,
                        }
                    )  # fmt: skip
                    .last_pk
                )
                folder = PurePosixPath("characters", str(character_id))
                tx.fresh_folder(folder)
                paths = {}
                for column, _ in _FILES.values():
                    if row[column]:
                        source_file = source.database.absolute(row[column])
                        paths[column] = tx.link(folder / source_file.name, source_file)
                self.db["characters"].update(character_id, paths)
                added.append(character_id)
        return [self.get_character(i) for i in added]

    # -- archives --

    def archive_records(self, ids: list[int] | None) -> list[dict]:
        """Rows to archive, in the archive's JSON form (paths relative to the data folder)."""
        if ids is None:
            rows = self._rows()
        else:
            rows = [self._row(int(i)) for i in dict.fromkeys(ids)]
        records = []
        for row in rows:
            files = {role: row[column] for role, (column, _) in _FILES.items() if row[column]}
            records.append(
                {
                    "id": row["id"],
                    "name": row["name"],
                    "description": row["description"],
                    "encoder_id": row["encoder_id"],
                    "status": row["status"],
                    "created": row["created"],
                    "updated": row["updated"],
                    "files": files,
                }
            )
        return records

    def write_archive_records(self, archive: zipfile.ZipFile, records: list[dict]) -> None:
        """characters.json and the files of `records` (from `archive_records`) into an open zip."""
        payload = {"format": ARCHIVE_FORMAT, "format_version": ARCHIVE_VERSION, "characters": records}
        archive.writestr(ARCHIVE_JSON, json.dumps(payload, indent=1, ensure_ascii=False))
        for record in records:
            for relative in record["files"].values():
                archive.write(self.database.data_dir / relative, relative)

    def export_characters(self, path: str | os.PathLike, ids: list[int] | None = None) -> Path:
        """One zip with characters.json and every character's files (all characters by default)."""
        path = Path(path)
        with self.database.snapshot(), open_atomic(path) as f:
            records = self.archive_records(ids)
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
                self.write_archive_records(archive, records)
        return path

    @staticmethod
    def check_archive_records(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> list[dict]:
        """Validate characters.json and the names of the files it lists (`stage_records` checks
        the files themselves)."""
        data = read_json(archive, members, ARCHIVE_JSON)
        if data.get("format") != ARCHIVE_FORMAT:
            raise ValueError(f"{ARCHIVE_JSON} is not an AnyStory character list")
        if not isinstance(data.get("format_version"), int) or data["format_version"] > ARCHIVE_VERSION:
            raise ValueError(
                f"{ARCHIVE_JSON} has format version {data.get('format_version')!r}; this app reads up to {ARCHIVE_VERSION}"
            )
        records = data.get("characters")
        if not isinstance(records, list):
            raise ValueError(f"{ARCHIVE_JSON} must list characters")
        checked, ids, keys = [], set(), set()
        for i, record in enumerate(records):
            where = f"{ARCHIVE_JSON} character {i + 1}"
            if not isinstance(record, dict):
                raise ValueError(f"{where} is not an object")
            cid = record.get("id")
            if not isinstance(cid, int) or isinstance(cid, bool) or cid < 1 or cid in ids:
                raise ValueError(f"{where} has a missing, invalid or repeated id {cid!r}")
            ids.add(cid)
            try:
                name = validate_name(record.get("name"))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: {err}") from err
            if name_key(name) in keys:
                raise ValueError(f"{where}: the name {name!r} appears twice")
            keys.add(name_key(name))
            for field in ("description", "encoder_id", "created", "updated"):
                if not isinstance(record.get(field, ""), str):
                    raise ValueError(f"{where}: {field} must be text")
            status = record.get("status", "missing")
            if status not in STATUSES:
                raise ValueError(f"{where}: unknown status {status!r}")
            files = record.get("files")
            if (
                not isinstance(files, dict)
                or not {"image", "mask", "thumbnail"} <= files.keys()
                or not files.keys() <= _FILES.keys()
            ):
                raise ValueError(f"{where}: files must name an image, a mask, a thumbnail and optionally an encoding")
            checked_files = {}
            for role, member in files.items():
                if not isinstance(member, str):
                    raise ValueError(f"{where}: the {role} path must be text")
                safe_member_name(member)
                stored_file_name(PurePosixPath(member).name)
                if member not in members:
                    raise ValueError(f"{where}: the archive lacks its {role} file {member!r}")
                checked_files[role] = member
            checked.append(
                {
                    "id": cid,
                    "name": name,
                    "description": record.get("description", "").strip(),
                    "encoder_id": record.get("encoder_id", ""),
                    "status": status if "encoding" in checked_files else "missing",
                    "created": record.get("created") or now(),
                    "updated": record.get("updated") or now(),
                    "files": checked_files,
                }
            )
        return checked

    @staticmethod
    def archived_members(records: list[dict]) -> list[str]:
        """The archive members checked records use."""
        return [member for record in records for member in record["files"].values()]

    @staticmethod
    def stage_records(
        staged: StagedMembers, records: list[dict], check_picture: Callable[[Path, str, int], None]
    ) -> None:
        """Stream every file of checked records into the staging folder, within its kind's limit,
        and decode every picture (`check_picture(path, what, max_side)`, the uploads' bomb guard):
        all before the import writes a row."""
        for i, record in enumerate(records):
            for role, member in record["files"].items():
                what = f"{ARCHIVE_JSON} character {i + 1} ({record['name']}): the {role}"
                limit = MAX_ENCODING_BYTES if role == "encoding" else MAX_PICTURE_BYTES
                path = staged.stage(member, limit, what)
                if role != "encoding":
                    check_picture(path, what, MAX_STORED_SIDE)

    def _insert_archived(self, tx: Transaction, staged: StagedMembers, record: dict, name: str, keep_id: bool) -> int:
        """Insert one checked archive record (inside the caller's transaction); returns its id."""
        row = {
            "name": name,
            "name_key": name_key(name),
            "description": record["description"],
            "image_path": "",
            "mask_path": "",
            "thumbnail_path": "",
            "encoding_path": None,
            "encoder_id": record["encoder_id"],
            "status": record["status"],
            "created": record["created"],
            "updated": record["updated"],
        }
        if keep_id:
            row["id"] = record["id"]
        character_id = int(self.db["characters"].insert(row).last_pk)
        folder = PurePosixPath("characters", str(character_id))
        tx.fresh_folder(folder)
        paths = {
            _FILES[role][0]: tx.move_in(staged.path(member), folder / PurePosixPath(member).name)
            for role, member in record["files"].items()
        }
        self.db["characters"].update(character_id, paths)
        return character_id

    def _free_name(self, name: str, taken: set[str]) -> str:
        """`name`, or "name (2)", "name (3)"... whichever is free in the library and in `taken`."""
        candidate, n = name, 1
        while name_key(candidate) in taken or list(
            self.db["characters"].rows_where("name_key = ?", [name_key(candidate)])
        ):
            n += 1
            candidate = numbered_name(name, n)
        return candidate

    def import_records(
        self, tx: Transaction, staged: StagedMembers, records: list[dict], on_clash: str, keep_ids: bool
    ) -> dict[int, int | None]:
        """Insert checked, staged records; returns archive id -> new id (None when skipped).

        `on_clash`: "rename" gives a free name, "skip" leaves the archived one out, "reuse" maps
        to the library's character of that name when image, mask and description are the same
        (and renames otherwise).
        """
        mapping: dict[int, int | None] = {}
        taken: set[str] = set()
        for record in records:
            existing = list(self.db["characters"].rows_where("name_key = ?", [name_key(record["name"])]))
            name = record["name"]
            if existing:
                if on_clash == "skip":
                    mapping[record["id"]] = None
                    continue
                if on_clash == "reuse" and self._same_character(existing[0], staged, record):
                    mapping[record["id"]] = existing[0]["id"]
                    continue
                name = self._free_name(name, taken)
            taken.add(name_key(name))
            mapping[record["id"]] = self._insert_archived(tx, staged, record, name, keep_ids)
        return mapping

    def _same_character(self, row: dict, staged: StagedMembers, record: dict) -> bool:
        """Same description, image and mask: an archived character that is already here."""
        return row["description"] == record["description"] and all(
            filecmp.cmp(self.database.absolute(row[_FILES[role][0]]), staged.path(record["files"][role]), shallow=False)
            for role in ("image", "mask")
        )

    def import_characters(
        self,
        path: str | os.PathLike,
        on_clash: str = "rename",
        *,
        check_picture: Callable[[Path, str, int], None],
    ) -> list[Character]:
        """Import an `export_characters` zip; returns the characters added.

        The whole archive is checked before a row is written (names, paths, sizes, JSON; every
        file streamed to a staging folder within its limit, every picture decoded by
        `check_picture`, e.g. `images.check_stored_picture`), and it is imported in one
        transaction. A name already in the library is renamed ("Mia (2)") with
        on_clash="rename", or left out with "skip".
        """
        if on_clash not in ("rename", "skip"):
            raise ValueError(f"on_clash must be 'rename' or 'skip', got {on_clash!r}")
        with read_archive(path) as archive:
            members = check_archive(archive)
            records = self.check_archive_records(archive, members)
            needed = self.archived_members(records)
            with staged_members(archive, members, self.database.data_dir, needed) as staged:
                self.stage_records(staged, records, check_picture)
                with self.database.transaction() as tx:
                    mapping = self.import_records(tx, staged, records, on_clash, keep_ids=False)
        return [self.get_character(new) for new in mapping.values() if new is not None]
