"""Zip archives from users (cast and project imports): checked before anything is written.

Member names must stay inside the folder they are extracted to (zip-slip), kinds must be plain
files, sizes within limits that fit what the app itself writes. JSON members are read with a size
cap; every other member is streamed to a staging folder of the data folder with a running byte
count (`StagedMembers`), so memory stays small whatever a member inflates to, and a member that
inflates past its declared size is refused. The record formats themselves (characters.json,
project.json) belong to library.py and story.py, which check what they stage (pictures decoded)
before their import's transaction moves the files into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from .files import DiskFull, open_atomic, temp_name_for

MiB = 1024 * 1024
# Archive limits, checked on the declared sizes before anything is written (zip bombs, typos),
# and again on the bytes actually inflated. The kinds' own limits (pictures, encodings, route
# maps) are in library.py and story.py; these bound any member and the whole.
MAX_JSON_BYTES = 16 * MiB  # project.json of ~10,000 versions
MAX_MEMBER_BYTES = 256 * MiB  # the largest kind: an encoding (a real one is 43 MB)
MAX_ARCHIVE_BYTES = 8 * 1024 * MiB  # e.g. 100 characters with their encodings, or 2,000 1024x1024 panels
MAX_MEMBERS = 100_000
COPY_CHUNK = 1 * MiB


def png_size_bound(width: int, height: int, channels: int) -> int:
    """The most bytes a PNG of that size can take: deflate never grows data by more than its
    stored-block headers (5 bytes per 64 KiB), plus a filter byte per row and the chunk headers."""
    raw = (width * channels + 1) * height
    return raw + 5 * (raw // 65535 + 1) + 64 * 1024


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


def check_archive(
    archive: zipfile.ZipFile,
    *,
    max_member: int = MAX_MEMBER_BYTES,
    max_total: int = MAX_ARCHIVE_BYTES,
    max_members: int = MAX_MEMBERS,
) -> dict[str, zipfile.ZipInfo]:
    """Check every member of an archive before anything is written: names, kinds, sizes.

    Returns the members by name. Raises ValueError naming the first problem.
    """
    infos = archive.infolist()
    if len(infos) > max_members:
        raise ValueError(f"archive has {len(infos)} members; at most {max_members} are accepted")
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
        if info.file_size > max_member:
            raise ValueError(
                f"archive member {info.filename!r} is too large ({info.file_size} bytes; at most {max_member})"
            )
        total += info.file_size
        members[info.filename] = info
    if total > max_total:
        raise ValueError(f"archive unpacks to {total} bytes; at most {max_total} are accepted")
    return members


def check_zip_file(path: Path, what: str, *, max_total: int, max_members: int = 1000) -> None:
    """A zip file inside an archive (a route-map .npz) checked like one: no nested bomb."""
    try:
        with zipfile.ZipFile(path) as inner:
            check_archive(inner, max_member=max_total, max_total=max_total, max_members=max_members)
    except (zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"{what} is not an acceptable file: {err}") from err


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
        raise ValueError(f"{name} is too large ({info.file_size} bytes; at most {MAX_JSON_BYTES})")
    try:
        data = json.loads(_read_member(archive, info).decode("utf-8"))  # at most the declared size
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{name} is not valid JSON: {err}") from err
    except RecursionError as err:
        raise ValueError(f"{name} nests too deeply to be read") from err
    if not isinstance(data, dict):
        raise ValueError(f"{name} must hold a JSON object")
    return data


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise ValueError(f"archive member {info.filename!r} is damaged: {err}") from err


class StagedMembers:
    """Members of a checked archive streamed into a staging folder of the data folder.

    `stage(name, limit, what)` copies one member in chunks, counting: over `limit` or past its
    declared size (a lying header), it is refused. Each member is staged once (no archive may
    point two records at one file). The import checks the staged files, then its transaction
    moves them into place (`Transaction.move_in`); whatever is left is removed with the folder.
    """

    def __init__(self, archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], folder: Path):
        self.archive, self.members, self.folder = archive, members, folder
        self.paths: dict[str, Path] = {}

    def stage(self, name: str, limit: int, what: str) -> Path:
        info = self.members.get(name)
        if info is None:
            raise ValueError(f"{what}: the archive lacks {name!r}")
        if name in self.paths:
            raise ValueError(f"{what}: the archive member {name!r} is named twice")
        if info.file_size > limit:
            raise ValueError(f"{what} {name!r} is too large ({info.file_size} bytes; at most {limit})")
        target = self.folder / str(len(self.paths))
        copied = 0
        try:
            with self.archive.open(info) as source, open_atomic(target) as sink:
                while chunk := source.read(COPY_CHUNK):
                    copied += len(chunk)
                    if copied > min(limit, info.file_size):
                        raise ValueError(f"{what} {name!r} inflates past its declared {info.file_size} bytes")
                    sink.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
            raise ValueError(f"{what} {name!r} is damaged: {err}") from err
        self.paths[name] = target
        return target

    def path(self, name: str) -> Path:
        """The staged file of a member (staged before)."""
        return self.paths[name]


@contextlib.contextmanager
def staged_members(
    archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], data_dir: Path, needed: list[str]
) -> Iterator[StagedMembers]:
    """A staging folder in `data_dir` (a temporary name: a crash leaves nothing the next open
    keeps), refused up front when the members `needed` would not fit on its disk."""
    need = sum(members[name].file_size for name in needed if name in members)
    free = shutil.disk_usage(data_dir).free
    if need > free:
        raise DiskFull(
            f"the disk is full: the archive needs {need / MiB:.1f} MB and {free / MiB:.1f} MB are free: "
            "free space or delete versions"
        )
    folder = temp_name_for(Path(data_dir) / "import")
    folder.mkdir()
    try:
        yield StagedMembers(archive, members, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
