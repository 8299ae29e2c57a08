"""The Studio's storage: one SQLite database plus the files its rows point to.

Layout of a data folder::

    <data_dir>/anystory.db            rows (SQLite, WAL mode, via sqlite-utils)
    <data_dir>/characters/<id>/...    image, mask, thumbnail, encoding of character <id>
    <data_dir>/versions/<id>/...      image and routing maps of panel version <id>

The rule that keeps rows and files consistent through crashes: every write happens inside
`StudioDatabase.transaction()`. Files are written (temp name + fsync + rename) *before* the rows
that point to them are committed, and files a commit makes unused are deleted only after it.
So a crash can leave files without a row, never a row without its files; opening the data folder
again removes what no row references. File names never derive from user text (only ids and
random tokens), so any character name is safe.

No torch here: storage knows bytes and rows.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

import sqlite_utils

from .files import (
    DiskFull,
    folder_bytes,
    is_temp_name,
    move_into_place,
    reserve_space,
    shrink_reserve,
    write_atomic,
)
from .files import (
    disk_full_as_error as _os_disk_full_as_error,
)
from .mentions import rename_mentions
from .names import name_key, numbered_name, visible_name

log = logging.getLogger(__name__)

DB_NAME = "anystory.db"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Disk kept back for the writes that free space on a full disk (`StudioDatabase.with_reserve`).
RESERVE_NAME = ".space-reserve"
RESERVE_BYTES = 2 * 1024 * 1024  # a delete's log needs a few pages; a 100-version batch about 200 KB
RESERVE_STEPS = 4
T = TypeVar("T")

# Folders of files owned by rows: table -> (folder under data_dir, columns holding relative paths).
FILE_OWNERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "characters": ("characters", ("image_path", "mask_path", "thumbnail_path", "encoding_path")),
    "versions": ("versions", ("image_path", "route_map_path")),
}


def now() -> str:
    """ISO time in UTC (microseconds, so ordering by time is stable within one process)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def token() -> str:
    """Random part of a stored file name: a replaced file never reuses the old name."""
    return secrets.token_hex(6)


def require_png(data: bytes, what: str) -> bytes:
    """Refuse bytes that are not a PNG file (cheap signature check; storage never decodes)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{what} is not PNG data")
    return data


@contextlib.contextmanager
def disk_full_as_error() -> Iterator[None]:
    """Turn a full disk met inside (SQLite's SQLITE_FULL, the OS's ENOSPC / EDQUOT) into DiskFull."""
    try:
        with _os_disk_full_as_error():
            yield
    except sqlite3.OperationalError as err:
        if getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(err):
            raise DiskFull() from err
        raise


# -- schema --------------------------------------------------------------------------------------


def _execute_all(db: sqlite_utils.Database, script: str) -> None:
    # Not executescript(): sqlite3 commits any open transaction before a script.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _migration_1(db: sqlite_utils.Database) -> None:
    """Initial schema: characters, stories, panels, versions."""
    _execute_all(
        db,
        """
        CREATE TABLE characters (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL COLLATE NOCASE,
            description TEXT NOT NULL DEFAULT '',
            image_path TEXT NOT NULL,
            mask_path TEXT NOT NULL,
            thumbnail_path TEXT NOT NULL,
            encoding_path TEXT,
            encoder_id TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        );
        CREATE UNIQUE INDEX characters_name ON characters (name COLLATE NOCASE);
        CREATE TABLE stories (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        );
        CREATE TABLE panels (
            id INTEGER PRIMARY KEY,
            story_id INTEGER NOT NULL REFERENCES stories (id),
            position INTEGER NOT NULL,
            prompt TEXT NOT NULL DEFAULT '',
            characters TEXT NOT NULL DEFAULT '[]',
            seed INTEGER NOT NULL,
            steps INTEGER NOT NULL,
            guidance REAL NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            strengths TEXT NOT NULL DEFAULT '{}',
            router TEXT NOT NULL,
            layout TEXT NOT NULL DEFAULT '{}',
            active_version_id INTEGER,
            status TEXT NOT NULL,
            error TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        );
        CREATE TABLE versions (
            id INTEGER PRIMARY KEY,
            panel_id INTEGER NOT NULL REFERENCES panels (id),
            settings TEXT NOT NULL,
            model_id TEXT NOT NULL,
            image_path TEXT NOT NULL,
            route_map_path TEXT,
            created TEXT NOT NULL
        );
        """,
    )


def _name_key_2(name: str) -> str:
    """name_key as schema version 2 computed it (NFC + case folding); migrations 2 and 3 need it."""
    return unicodedata.normalize("NFC", name.strip()).casefold()


def _migration_2(db: sqlite_utils.Database) -> list[str]:
    """Unicode-aware unique names (NOCASE folds ASCII only) and lookup indexes."""
    db["characters"].add_column("name_key", str)
    for row in list(db.query("SELECT id, name FROM characters")):
        db.execute("UPDATE characters SET name_key = ? WHERE id = ?", [_name_key_2(row["name"]), row["id"]])
    _execute_all(
        db,
        """
        CREATE UNIQUE INDEX characters_name_key ON characters (name_key);
        CREATE INDEX panels_story ON panels (story_id, position);
        CREATE INDEX versions_panel ON versions (panel_id);
        """,
    )
    return []


def _migration_3(db: sqlite_utils.Database) -> list[str]:
    """Names compared as a reader sees them (names.name_key: NFKC, case folding, no invisible
    characters). Every name_key is computed again; a name with invisible characters loses them,
    and a name that now reads like an earlier character's is renamed "Name (2)" (both are kept),
    with the panels' [Name] mentions following. Returns what was renamed, for the user."""
    db.execute("DROP INDEX characters_name")  # names change one by one: no clash in between
    db.execute("DROP INDEX characters_name_key")
    taken: set[str] = set()
    renamed: dict[str, str] = {}  # old name -> new name
    notices = []
    for row in list(db.query("SELECT id, name FROM characters ORDER BY id")):
        old = row["name"]
        base = visible_name(old) or f"Character {row['id']}"
        new, number = base, 1
        while name_key(new) in taken:
            number += 1
            new = numbered_name(base, number)
        taken.add(name_key(new))
        db.execute("UPDATE characters SET name = ?, name_key = ? WHERE id = ?", [new, name_key(new), row["id"]])
        if new != old:
            renamed[old] = new
            why = "now reads like an earlier character's name" if number > 1 else "held invisible characters"
            notices.append(f"character {row['id']} {old!r} was renamed {new!r}: its name {why}")
    for panel in list(db.query("SELECT id, prompt FROM panels WHERE prompt LIKE '%[%'")):
        prompt = rename_mentions(panel["prompt"], renamed, key=_name_key_2)
        if prompt != panel["prompt"]:
            db.execute("UPDATE panels SET prompt = ? WHERE id = ?", [prompt, panel["id"]])
    _execute_all(
        db,
        """
        CREATE UNIQUE INDEX characters_name ON characters (name COLLATE NOCASE);
        CREATE UNIQUE INDEX characters_name_key ON characters (name_key);
        """,
    )
    return notices


def _migration_4(db: sqlite_utils.Database) -> list[str]:
    """Character ids are never given out again (AUTOINCREMENT; SQLite needs the table rebuilt).

    Without it the next character took a deleted one's id, and with it the per-panel strengths
    and layout boxes the deleted one left. The sequence starts past every id a panel or a
    version still names; panels lose the settings of characters that no longer exist.
    """
    existing = {row[0] for row in db.execute("SELECT id FROM characters")}
    named = set(existing)
    for panel in list(db.query("SELECT id, characters, strengths, layout FROM panels")):
        ticked, strengths, layout = (json.loads(panel[c]) for c in ("characters", "strengths", "layout"))
        named |= {int(i) for i in ticked} | {int(k) for k in strengths} | {int(k) for k in layout}
        kept = (
            [i for i in ticked if int(i) in existing],
            {k: v for k, v in strengths.items() if int(k) in existing},
            {k: v for k, v in layout.items() if int(k) in existing},
        )
        if kept != (ticked, strengths, layout):
            db.execute(
                "UPDATE panels SET characters = ?, strengths = ?, layout = ? WHERE id = ?",
                [*(json.dumps(value, sort_keys=True) for value in kept), panel["id"]],
            )
    for (settings,) in db.execute("SELECT settings FROM versions").fetchall():
        subjects = json.loads(settings).get("subjects") or []
        named |= {int(i) for i in subjects if isinstance(i, int)}
    columns = (
        "id, name, description, image_path, mask_path, thumbnail_path, encoding_path, encoder_id, status, "
        "created, updated, name_key"
    )
    _execute_all(
        db,
        f"""
        CREATE TABLE characters_new (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL COLLATE NOCASE,
            description TEXT NOT NULL DEFAULT '',
            image_path TEXT NOT NULL,
            mask_path TEXT NOT NULL,
            thumbnail_path TEXT NOT NULL,
            encoding_path TEXT,
            encoder_id TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL,
            name_key TEXT NOT NULL
        );
        INSERT INTO characters_new ({columns}) SELECT {columns} FROM characters;
        DROP TABLE characters;
        ALTER TABLE characters_new RENAME TO characters;
        CREATE UNIQUE INDEX characters_name ON characters (name COLLATE NOCASE);
        CREATE UNIQUE INDEX characters_name_key ON characters (name_key);
        """,
    )
    db.execute("DELETE FROM sqlite_sequence WHERE name = 'characters'")
    db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('characters', ?)", [max(named, default=0)])
    return []


def _migration_5(db: sqlite_utils.Database) -> list[str]:
    """Consistency scores per version (consistency.PanelScores as JSON; NULL: not scored, as every
    version made before this migration)."""
    db.execute("ALTER TABLE versions ADD COLUMN scores TEXT")
    return []


def _migration_6(db: sqlite_utils.Database) -> list[str]:
    """Pages (issue 16): a panel's lines (dialogue, captions, sound effects, with the writer's
    nudges) as JSON, and a style preset and negative prompt for stories and panels ('' on a
    panel: the story's)."""
    _execute_all(
        db,
        """
        ALTER TABLE panels ADD COLUMN lines TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE panels ADD COLUMN style TEXT NOT NULL DEFAULT '';
        ALTER TABLE panels ADD COLUMN negative TEXT NOT NULL DEFAULT '';
        ALTER TABLE stories ADD COLUMN style TEXT NOT NULL DEFAULT '';
        ALTER TABLE stories ADD COLUMN negative TEXT NOT NULL DEFAULT '';
        """,
    )
    return []


def _migration_7(db: sqlite_utils.Database) -> list[str]:
    """ControlNet (issue 22): a panel's control picture as JSON ({} none, else kind, strength and
    the stored picture `controls/<sha256>.png`); versions keep theirs in their settings."""
    db.execute("ALTER TABLE panels ADD COLUMN control TEXT NOT NULL DEFAULT '{}'")
    return []


def _migration_8(db: sqlite_utils.Database) -> list[str]:
    """Pages (issue 16): how a panel meets its page cell ("" = the export's choice, else auto,
    crop or fit); like lines, a layer over the image, not a generation setting."""
    db.execute("ALTER TABLE panels ADD COLUMN page_fit TEXT NOT NULL DEFAULT ''")
    return []


def _migration_9(db: sqlite_utils.Database) -> list[str]:
    """LoRA styles (issue 22): a story's LoRA ({} none, else source and weight) and a panel's ({}:
    the story's, {"none": true}: none, else its own), as JSON (lora_settings.py); versions keep
    theirs in their settings."""
    _execute_all(
        db,
        """
        ALTER TABLE stories ADD COLUMN lora TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE panels ADD COLUMN lora TEXT NOT NULL DEFAULT '{}';
        """,
    )
    return []


# Applied in order; never edit one that has shipped, append a new one. Each returns notices for the user.
MIGRATIONS: list[Callable[[sqlite_utils.Database], list[str] | None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
    _migration_8,
    _migration_9,
]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: sqlite_utils.Database) -> int:
    """The schema version of a database (0 for a new, empty one)."""
    if not db["schema_version"].exists():
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(db: sqlite_utils.Database, target: int | None = None, notices: list[str] | None = None) -> int:
    """Apply the migrations after the database's version, up to `target`, each in a transaction.

    What a migration changed that the user should know (a renamed character) is logged and
    appended to `notices`."""
    target = SCHEMA_VERSION if target is None else target
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)")
    current = schema_version(db)
    if current > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database has schema version {current}; this AnyStory Studio knows up to "
            f"{SCHEMA_VERSION}: update the app instead of opening it with an older one"
        )
    for version in range(current + 1, target + 1):
        db.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
        try:
            if schema_version(db) < version:
                told = MIGRATIONS[version - 1](db) or []
                db["schema_version"].insert({"version": version, "applied": now()})
                log.info("migrated to schema version %d", version)
                for notice in told:
                    log.warning("schema version %d: %s", version, notice)
                if notices is not None:
                    notices.extend(told)
        except BaseException:
            db.rollback()
            raise
        db.conn.execute("COMMIT")
    return schema_version(db)


# -- the database ---------------------------------------------------------------------------------


class Transaction:
    """Files touched by one write transaction: undone on rollback, old ones deleted after commit."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self._created: list[Path] = []
        self._discard: list[Path] = []

    def folder(self, relative: str | PurePosixPath) -> Path:
        """Create (or reuse) a folder under the data folder; a new one is removed on rollback."""
        path = self.data_dir / relative
        if not path.exists():
            path.mkdir(parents=True)
            self._created.append(path)
        return path

    def fresh_folder(self, relative: str | PurePosixPath) -> Path:
        """A new, empty folder for a row inserted in this transaction.

        Whatever is there already belongs to no committed row (its id was just given out),
        e.g. the leftover of a crash: it is removed.
        """
        path = self.data_dir / relative
        if path.exists():
            shutil.rmtree(path)
        return self.folder(relative)

    def write(self, relative: str | PurePosixPath, data: bytes) -> str:
        """Write a file atomically; returns its path relative to the data folder (for the row)."""
        path = self.data_dir / relative
        write_atomic(path, data)
        self._created.append(path)
        return PurePosixPath(relative).as_posix()

    def link(self, relative: str | PurePosixPath, source: Path) -> str:
        """Give this data folder `source`'s file without copying its bytes (a hard link; a copy where
        the disk cannot link). Safe because stored files are never changed in place: a change is a
        new file under a new name."""
        path = self.data_dir / relative
        try:
            os.link(source, path)
        except OSError:
            write_atomic(path, Path(source).read_bytes())
        self._created.append(path)
        return PurePosixPath(relative).as_posix()

    def move_in(self, source: Path, relative: str | PurePosixPath) -> str:
        """Move a complete file (a staged import) to `relative`; removed on rollback like a write."""
        path = self.data_dir / relative
        move_into_place(source, path)
        self._created.append(path)
        return PurePosixPath(relative).as_posix()

    def discard_after_commit(self, relative: str | PurePosixPath | None) -> None:
        """Delete a file or folder once the rows no longer pointing to it are committed."""
        if relative:
            self._discard.append(self.data_dir / relative)

    def _rollback(self) -> None:
        for path in reversed(self._created):
            _remove(path)

    def _commit(self) -> None:
        for path in self._discard:
            _remove(path)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:  # leftovers are swept on the next open
        log.warning("could not remove %s: %s", path, err)


class CommitGuard(Protocol):
    """Checks a write transaction before it commits; raising refuses it (rows and files roll back).

    `before(db)` runs when the transaction starts, `check(db, before)` just before its commit, on
    the same connection, so it sees the transaction's own rows and files.
    """

    def before(self, db: sqlite_utils.Database) -> Any: ...

    def check(self, db: sqlite_utils.Database, before: Any) -> None: ...


class StudioDatabase:
    """One data folder: the SQLite database `<data_dir>/anystory.db` and the files of its rows.

    SQLite connections belong to one thread, so `db` is a per-thread connection (each thread
    gets its own, opened on first use). Writes go through `transaction()`, which serialises
    writers (a lock in this process, `BEGIN IMMEDIATE` across processes).
    """

    def __init__(
        self, data_dir: str | os.PathLike, *, busy_timeout_s: float = 30.0, reserve_bytes: int = RESERVE_BYTES
    ):
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.guard: CommitGuard | None = None  # checked before every commit (the Studio's limits)
        self.path = self.data_dir / DB_NAME
        self.busy_timeout_s = busy_timeout_s
        self.reserve_bytes = reserve_bytes
        self._local = threading.local()
        self._lock = threading.RLock()
        self._connections: dict[threading.Thread, sqlite3.Connection] = {}
        self._connections_lock = threading.Lock()
        self.notices: list[str] = []  # what the migrations of this open changed that the user should know
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for folder, _ in FILE_OWNERS.values():
            (self.data_dir / folder).mkdir(exist_ok=True)
        with disk_full_as_error():
            db = self.db
            db.enable_wal()
            with self._lock:
                migrate(db, notices=self.notices)
        self.sweep()
        self.keep_reserve()

    # -- connections --

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection to the database."""
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, check_same_thread=False)
            conn.execute("PRAGMA foreign_keys = ON")
            with self._connections_lock:
                for thread in [t for t in self._connections if not t.is_alive()]:  # threads come and go
                    with contextlib.suppress(sqlite3.Error):
                        self._connections.pop(thread).close()
                self._connections[threading.current_thread()] = conn
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    def close(self) -> None:
        """Close this object's connections: this thread's and dead threads' now, another live
        thread's when that thread lets go of it.

        Closing a connection under a thread that is in the middle of a query crashes the process
        (SQLite does not guard against it), so a live thread's connection is only dropped: its
        last reference (this object's thread-local, or the query still running) closes it.
        """
        me = threading.current_thread()
        with self._connections_lock:
            connections, self._connections = self._connections, {}
        self._local = threading.local()  # drops every thread's reference but the running queries'
        for thread, conn in connections.items():
            if thread is me or not thread.is_alive():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        del connections

    def __enter__(self) -> StudioDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return schema_version(self.db)

    # -- writes --

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction: rows and files commit together or not at all.

        On an exception the rows roll back and the files written in it are removed; after the
        commit, files it discarded are deleted. Nested use is a savepoint of the outer one.
        """
        with self._lock:
            outer = getattr(self._local, "tx", None)
            if outer is not None:  # nested: a savepoint, so a caught inner failure undoes only itself
                inner = Transaction(self.data_dir)
                self._local.tx = inner
                try:
                    with self.db.atomic():
                        yield inner
                except BaseException:
                    inner._rollback()
                    raise
                finally:
                    self._local.tx = outer
                outer._created += inner._created
                outer._discard += inner._discard
                return
            db = self.db
            tx = Transaction(self.data_dir)
            db.execute("BEGIN IMMEDIATE")
            self._local.tx = tx
            with disk_full_as_error():
                try:
                    guard = self.guard
                    before = guard.before(db) if guard is not None else None
                    yield tx
                    if guard is not None:
                        guard.check(db, before)  # inside the transaction: a refusal rolls rows and files back
                except BaseException:
                    self._local.tx = None
                    db.rollback()
                    tx._rollback()
                    raise
                self._local.tx = None
                try:
                    db.conn.execute("COMMIT")
                except BaseException:
                    db.rollback()
                    tx._rollback()
                    raise
            tx._commit()

    def with_reserve(self, write: Callable[[], T]) -> T:
        """Run `write`, one of the writes that must get through on a full disk (deletes, which
        free space, and failure marks); returns what it returns.

        SQLite needs a little space to delete (its write-ahead log grows first), so on DiskFull
        the data folder's reserve (`RESERVE_NAME`, kept at `reserve_bytes`) gives back one step
        and `write` runs again (its transaction rolled back whole), until the reserve is spent.
        The reserve is made whole again once there is room. Inside another transaction `write`
        just runs (the outer one decides)."""
        if getattr(self._local, "tx", None) is not None:
            return write()
        while True:
            try:
                result = write()
                break
            except DiskFull:
                freed = shrink_reserve(self.data_dir / RESERVE_NAME, max(1, self.reserve_bytes // RESERVE_STEPS))
                if not freed:
                    raise
                log.warning("the disk is full: %d bytes of the reserve given to a write that frees space", freed)
        self.keep_reserve()
        return result

    def own_bytes(self) -> int:
        """Bytes this data folder holds for its user: its files but the disk reserve and files
        shared by hard link (`Transaction.link`); what a quota counts."""
        reserve = self.data_dir / RESERVE_NAME
        return folder_bytes(self.data_dir, own_only=True) - (reserve.stat().st_size if reserve.is_file() else 0)

    def keep_reserve(self) -> None:
        """Make the reserve whole when the disk has room for it twice over (never the last bytes)."""
        path = self.data_dir / RESERVE_NAME
        have = path.stat().st_size if path.exists() else 0
        if have >= self.reserve_bytes:
            return
        with contextlib.suppress(OSError):
            if shutil.disk_usage(self.data_dir).free >= 2 * (self.reserve_bytes - have):
                reserve_space(path, self.reserve_bytes)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite_utils.Database]:
        """Consistent reads of rows *and* files (exports): holds the write lock while it reads."""
        with self.transaction():
            yield self.db

    # -- crash recovery --

    def sweep(self) -> dict[str, int]:
        """Remove what a crash can leave: files and folders no row references, temp files.

        Also marks a character whose encoding file disappeared as "missing". Runs under the
        write lock, so it never sees another writer's uncommitted files. Returns counts.
        """
        removed = {"folders": 0, "files": 0}
        with self.transaction() as tx:
            db = self.db
            for table, (folder, columns) in FILE_OWNERS.items():
                root = self.data_dir / folder
                referenced: dict[int, set[str]] = {}
                for row in db.query(f"SELECT id, {', '.join(columns)} FROM {table}"):
                    referenced[row["id"]] = {row[c] for c in columns if row[c]}
                for entry in sorted(root.iterdir()) if root.exists() else []:
                    if not (entry.is_dir() and entry.name.isdigit() and int(entry.name) in referenced):
                        tx.discard_after_commit(entry.relative_to(self.data_dir))
                        removed["folders"] += 1
                        continue
                    keep = referenced[int(entry.name)]
                    for item in entry.iterdir():
                        if item.relative_to(self.data_dir).as_posix() not in keep:
                            tx.discard_after_commit(item.relative_to(self.data_dir))
                            removed["files"] += 1
            for row in list(db.query("SELECT id, encoding_path FROM characters WHERE encoding_path IS NOT NULL")):
                if not (self.data_dir / row["encoding_path"]).is_file():
                    log.warning("character %d lost its encoding file; marking it missing", row["id"])
                    db.execute(
                        "UPDATE characters SET encoding_path = NULL, status = 'missing', updated = ? WHERE id = ?",
                        [now(), row["id"]],
                    )
        for item in self.data_dir.iterdir():
            if is_temp_name(item.name):
                _remove(item)
                removed["files"] += 1
        if removed["folders"] or removed["files"]:
            log.info("swept %s: %s", self.data_dir, removed)
        return removed

    # -- helpers for the record modules --

    def absolute(self, relative: str | None) -> Path | None:
        """A stored relative path as an absolute one."""
        return None if relative is None else self.data_dir / relative

    def count(self, table: str) -> int:
        """Rows in one of the record tables (characters, stories, panels, versions)."""
        if table not in ("characters", "stories", "panels", "versions"):
            raise ValueError(f"no record table {table!r}")
        return self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def read_bytes(self, relative: str) -> bytes:
        return (self.data_dir / relative).read_bytes()
