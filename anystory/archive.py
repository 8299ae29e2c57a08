"""Zip archives from users (cast and project imports): checked before anything is written.

Member names must stay inside the folder they are extracted to (zip-slip), kinds must be plain
files, sizes within limits; JSON members are read with a size cap. The record formats themselves
(characters.json, project.json) belong to library.py and story.py, which use these functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import PurePosixPath

# Archive limits: checked on the declared sizes before anything is written (zip bombs, typos).
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_MEMBER_BYTES = 4 * 1024**3
MAX_ARCHIVE_BYTES = 32 * 1024**3
MAX_MEMBERS = 100_000


def safe_member_name(name: str) -> PurePosixPath:
    """A zip member name as a relative path that stays inside the folder it is extracted to.

    Refuses absolute paths, drive letters, backslashes, `..`, `.` and empty parts (zip-slip).
    """
    if not name or len(name) > 1024 or any(ord(c) < 32 for c in name):
        raise ValueError(f"archive member {name!r} has an invalid name")
    if "\\" in name or name.startswith("/") or ":" in name:
        raise ValueError(f"archive member {name!r} is an absolute or non-portable path")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"archive member {name!r} escapes its folder or has empty parts")
    return PurePosixPath(name)


def check_archive(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Check every member of an archive before anything is written: names, kinds, sizes.

    Returns the members by name. Raises ValueError naming the first problem.
    """
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ValueError(f"archive has {len(infos)} members; at most {MAX_MEMBERS} are accepted")
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        if info.is_dir():
            safe_member_name(info.filename.rstrip("/"))
            continue
        safe_member_name(info.filename)
        mode = info.external_attr >> 16
        if mode and (mode & 0o170000) not in (0, 0o100000):  # symlinks, devices
            raise ValueError(f"archive member {info.filename!r} is not a regular file")
        if info.filename in members:
            raise ValueError(f"archive member {info.filename!r} appears twice")
        if info.file_size > MAX_MEMBER_BYTES:
            raise ValueError(f"archive member {info.filename!r} is too large ({info.file_size} bytes)")
        total += info.file_size
        members[info.filename] = info
    if total > MAX_ARCHIVE_BYTES:
        raise ValueError(f"archive unpacks to {total} bytes; at most {MAX_ARCHIVE_BYTES} are accepted")
    return members


@contextlib.contextmanager
def read_archive(path: str | os.PathLike) -> Iterator[zipfile.ZipFile]:
    """Open a zip for import; a damaged or foreign file is a ValueError like every other refusal."""
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except zipfile.BadZipFile as err:
        raise ValueError(f"{os.fspath(path)} is not a readable zip archive: {err}") from err


def stored_file_name(name: str) -> str:
    """The base name of a stored file, as found in an archive's JSON; refuses anything path-like."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= 128
        or name.startswith(".")
        or not all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    ):
        raise ValueError(f"invalid stored file name {name!r}")
    return name


def read_json(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], name: str) -> dict:
    """A JSON object member of a checked archive (size-capped); ValueError says what is wrong."""
    info = members.get(name)
    if info is None:
        raise ValueError(f"the archive has no {name}")
    if info.file_size > MAX_JSON_BYTES:
        raise ValueError(f"{name} is too large ({info.file_size} bytes)")
    try:
        data = json.loads(archive.read(info).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{name} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{name} must hold a JSON object")
    return data
