"""The storage layer and the character library, on real SQLite files in tmp folders."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import threading
import time
import zipfile
from pathlib import Path

import pytest
import sqlite_utils
from PIL import Image

from anystory import storage
from anystory.images import check_stored_picture
from anystory.library import Character, CharacterNotFound, Library
from anystory.names import validate_name
from anystory.storage import StudioDatabase, migrate, write_atomic


def png(color=(200, 30, 30), size=(8, 8), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def add(library: Library, name: str, description: str = "", color=(200, 30, 30), encoding: bytes | None = b"enc") -> Character:
    return library.add_character(name, description, png(color), png(255, mode="L"), png(color, (4, 4)), encoding, "enc-1")


def data_files(data_dir: Path) -> dict[str, bytes]:
    """Every file of a data folder except the database itself."""
    return {
        p.relative_to(data_dir).as_posix(): p.read_bytes()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(storage.DB_NAME) and p.name != storage.RESERVE_NAME
    }


@pytest.fixture
def database(tmp_path):
    with StudioDatabase(tmp_path / "data") as db:
        yield db


@pytest.fixture
def library(database):
    return Library(database)


# -- database ---------------------------------------------------------------------------------------


def test_open_creates_folders_wal_and_current_schema(tmp_path):
    db = StudioDatabase(tmp_path / "new" / "data")
    assert (tmp_path / "new" / "data" / "anystory.db").is_file()
    assert (db.data_dir / "characters").is_dir() and (db.data_dir / "versions").is_dir()
    assert db.db.journal_mode == "wal"
    assert db.schema_version == storage.SCHEMA_VERSION == len(storage.MIGRATIONS)
    assert [r["version"] for r in db.db["schema_version"].rows] == list(range(1, storage.SCHEMA_VERSION + 1))
    db.close()
    assert StudioDatabase(tmp_path / "new" / "data").schema_version == storage.SCHEMA_VERSION  # reopen: no re-run


def test_database_created_at_version_1_migrates(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    old = sqlite_utils.Database(data / storage.DB_NAME)
    assert migrate(old, target=1) == 1
    assert "name_key" not in old["characters"].columns_dict
    (data / "characters" / "1").mkdir(parents=True)
    files = {}
    for role in ("image", "mask", "thumbnail"):
        files[f"{role}_path"] = f"characters/1/{role}-0.png"
        (data / files[f"{role}_path"]).write_bytes(png())
    old["characters"].insert(
        {"id": 1, "name": "Éva", "description": "a pilot", **files, "encoding_path": None, "encoder_id": "",
         "status": "missing", "created": "2025-01-01T00:00:00+00:00", "updated": "2025-01-01T00:00:00+00:00"}
    )
    old.close()

    database = StudioDatabase(data)
    assert database.schema_version == storage.SCHEMA_VERSION
    assert database.db.execute("SELECT name_key FROM characters").fetchone()[0] == "éva"
    library = Library(database)
    assert library.get_character("ÉVA").description == "a pilot"  # non-ASCII case folding via name_key
    with pytest.raises(ValueError, match="Éva"):
        add(library, "éva")
    assert data_files(data)  # the migrated row keeps its files through the sweep
    assert library.get_character(1).image_path.read_bytes() == png()


@pytest.mark.hostile
def test_newer_schema_is_refused(tmp_path):
    StudioDatabase(tmp_path).close()
    raw = sqlite_utils.Database(tmp_path / storage.DB_NAME)
    raw["schema_version"].insert({"version": storage.SCHEMA_VERSION + 1, "applied": "later"})
    raw.close()
    with pytest.raises(RuntimeError, match="schema version"):
        StudioDatabase(tmp_path)


@pytest.mark.hostile
def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(storage, "MIGRATIONS", [*storage.MIGRATIONS, broken])
    monkeypatch.setattr(storage, "SCHEMA_VERSION", len(storage.MIGRATIONS))
    with pytest.raises(RuntimeError, match="boom"):
        StudioDatabase(tmp_path)
    raw = sqlite_utils.Database(tmp_path / storage.DB_NAME)
    assert storage.schema_version(raw) == storage.SCHEMA_VERSION - 1 and "half_done" not in raw.table_names()


def test_names_are_unique_ignoring_case_in_the_schema_itself(database):
    columns = "name, name_key, image_path, mask_path, thumbnail_path, status, created, updated"
    database.db.execute(f"INSERT INTO characters ({columns}) VALUES ('Mia', 'mia', '', '', '', 'missing', '', '')")
    with pytest.raises(sqlite3.IntegrityError):
        database.db.execute(f"INSERT INTO characters ({columns}) VALUES ('MIA', 'x', '', '', '', 'missing', '', '')")


@pytest.mark.hostile
def test_write_atomic_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"half")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]  # no temp file left


# -- characters ---------------------------------------------------------------------------------------


def test_add_list_search_get(library, database):
    mia = add(library, "Mia", "a young woman with a red scarf", encoding=b"mia-encoding")
    rex = add(library, "Rex", "a scruffy brown dog", encoding=None)
    add(library, "Bolt", "a small tin ROBOT")
    assert mia.status == "ready" and rex.status == "missing" and rex.encoding_path is None
    assert mia.image_path.read_bytes() == png() and mia.image_path.parent == database.data_dir / "characters" / str(mia.id)
    assert library.read_encoding("mia") == b"mia-encoding"
    assert [c.name for c in library.characters()] == ["Bolt", "Mia", "Rex"]
    assert [c.name for c in library.characters("robot")] == ["Bolt"]  # description, any case
    assert [c.name for c in library.characters("RE")] == ["Mia", "Rex"]  # "red", "Rex"
    assert library.characters("  ") == library.characters()
    assert library.get_character(mia.id) == mia == library.get_character("MIA") == library.get_character("  mia ")
    assert mia.created == mia.updated


@pytest.mark.hostile
def test_not_found_lists_known_names(library):
    add(library, "Mia")
    add(library, "Rex")
    with pytest.raises(CharacterNotFound) as err:
        library.get_character("Zed")
    assert isinstance(err.value, KeyError)
    assert str(err.value) == "no character with name 'Zed'; known characters: Mia, Rex"
    with pytest.raises(CharacterNotFound, match="id 99.*Mia, Rex"):
        library.get_character(99)
    with pytest.raises(CharacterNotFound, match="none yet"):
        Library(StudioDatabase(library.database.data_dir.parent / "other")).get_character("Mia")


@pytest.mark.hostile
def test_duplicate_name_is_refused_naming_the_clash(library, database):
    add(library, "Mia")
    with pytest.raises(ValueError, match="'Mia' already exists"):
        add(library, "  mIA ")
    assert len(library.characters()) == 1
    assert sorted(os.listdir(database.data_dir / "characters")) == ["1"]


@pytest.mark.hostile
@pytest.mark.parametrize("bad", ["", "   ", "Mia [the girl]", "tab\there", "a" * 101])
def test_invalid_names_are_refused(library, bad):
    with pytest.raises(ValueError):
        add(library, bad)
    assert library.characters() == []


def test_validate_name():
    assert validate_name("  Mia ") == "Mia"
    assert validate_name("Cafe\u0301") == "Café"  # NFC: one way to spell a name
    with pytest.raises(TypeError):
        validate_name(None)


ODD_NAMES = ['O\'Brien "the Bold"', "AC/DC", "../../etc/passwd", "Robot 🤖 Jr.", "x'); DROP TABLE characters;--", "C:\\dog", "名前"]


@pytest.mark.hostile
def test_odd_names_are_stored_safely(library, database):
    for i, name in enumerate(ODD_NAMES):
        add(library, name, f"character {i}", color=(i * 30, 0, 0))
    assert sorted(c.name for c in library.characters()) == sorted(ODD_NAMES)
    for name in ODD_NAMES:
        character = library.get_character(name.upper())
        assert character.name == name
        assert character.image_path.parent == database.data_dir / "characters" / str(character.id)
    stored = [p.relative_to(database.data_dir) for p in database.data_dir.rglob("*") if p.is_file()]
    assert all(
        p.parts[0] in ("characters", "versions") or p.name.startswith(storage.DB_NAME) or p.name == storage.RESERVE_NAME
        for p in stored
    )
    assert not any(part in ("etc", "passwd", "DC") for p in stored for part in p.parts)


def test_update_character_and_stale_marking(library):
    mia = add(library, "Mia", "a girl")
    old_image, old_thumbnail = mia.image_path, mia.thumbnail_path

    same = library.update_character("mia", description=" a girl ")  # no change: nothing written
    assert same == mia
    thumb = library.update_character(mia.id, thumbnail_png=png((0, 0, 255), (4, 4)))
    assert thumb.status == "ready" and not old_thumbnail.exists()  # a thumbnail does not touch the encoding

    renamed = library.update_character(mia.id, name="Mira", description="a woman with a red scarf")
    assert (renamed.name, renamed.description, renamed.status) == ("Mira", "a woman with a red scarf", "ready")
    assert library.update_character("MIRA", name="mira").name == "mira"  # own name in another case is free

    new = library.update_character("Mira", image_png=png((0, 255, 0)))
    assert new.status == "stale" and new.encoding_path == mia.encoding_path
    assert new.image_path != old_image and not old_image.exists()
    assert new.image_path.read_bytes() == png((0, 255, 0))
    assert new.updated > mia.updated

    ready = library.set_encoding("mira", b"fresh", "enc-2")
    assert (ready.status, ready.encoder_id) == ("ready", "enc-2")
    assert library.read_encoding(ready.id) == b"fresh" and not mia.encoding_path.exists()
    assert library.update_character(ready.id, mask_png=png(128, mode="L")).status == "stale"

    add(library, "Rex")
    with pytest.raises(ValueError, match="'Rex' already exists"):
        library.update_character("mira", name="rex")
    with pytest.raises(ValueError, match="PNG"):
        library.update_character("mira", image_png=b"GIF89a")


def test_no_encoding_stays_missing_when_the_image_changes(library):
    rex = add(library, "Rex", encoding=None)
    assert library.update_character(rex.id, image_png=png((1, 2, 3))).status == "missing"
    with pytest.raises(ValueError, match="no encoding"):
        library.read_encoding("Rex")
    with pytest.raises(ValueError, match="without an encoding"):
        library.mark_status("Rex", "ready")


def test_mark_status(library):
    add(library, "Mia")
    assert library.mark_status("Mia", "failed").status == "failed"
    assert library.mark_status("Mia", "stale").status == "stale"
    with pytest.raises(ValueError, match="ready, stale, missing, failed"):
        library.mark_status("Mia", "broken")


def test_delete_character_removes_row_and_files(library, database):
    mia = add(library, "Mia")
    rex = add(library, "Rex")
    library.delete_character("MIA")
    assert [c.name for c in library.characters()] == ["Rex"]
    assert not (database.data_dir / "characters" / str(mia.id)).exists()
    assert rex.image_path.exists()
    with pytest.raises(CharacterNotFound):
        library.delete_character("Mia")
    assert add(library, "mia").name == "mia"  # the name is free again


@pytest.mark.hostile
def test_bad_inputs_are_refused_before_writing(library, database):
    with pytest.raises(ValueError, match="image is not PNG"):
        library.add_character("Mia", "", b"\xff\xd8\xff jpeg", png(), png(), None, "")
    with pytest.raises(TypeError):
        library.add_character("Mia", "", png(), png(), png(), "not bytes", "")
    assert library.characters() == [] and data_files(database.data_dir) == {}


# -- crash safety -------------------------------------------------------------------------------------


@pytest.mark.hostile
def test_error_in_the_middle_of_an_add_leaves_nothing(library, database, monkeypatch):
    add(library, "Rex")
    before = data_files(database.data_dir)
    real, calls = storage.write_atomic, []

    def fails_on_third(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(storage, "write_atomic", fails_on_third)
    with pytest.raises(OSError, match="disk full"):
        add(library, "Mia")
    assert len(calls) == 3
    assert [c.name for c in library.characters()] == ["Rex"]
    assert data_files(database.data_dir) == before


def test_nested_transaction_failure_undoes_only_itself(library, database):
    with database.transaction():
        add(library, "Rex")
        with pytest.raises(ValueError, match="already exists"):
            add(library, "rex")
        with pytest.raises(OSError):
            with database.transaction() as tx:
                add(library, "Mia")
                tx.write("characters/stray.bin", b"x")
                raise OSError("inner failure")
    assert [c.name for c in library.characters()] == ["Rex"]
    assert sorted(os.listdir(database.data_dir / "characters")) == [str(library.get_character("Rex").id)]


@pytest.mark.hostile
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to kill a writer mid-transaction")
def test_crash_in_the_middle_of_an_add_is_swept_on_reopen(tmp_path):
    data = tmp_path / "data"
    with StudioDatabase(data) as database:
        add(Library(database), "Rex")
    before = data_files(data)

    pid = os.fork()
    if pid == 0:  # the child dies (no cleanup, no rollback) after writing two of the files
        try:
            child = StudioDatabase(data)
            real, calls = storage.write_atomic, []

            def dies_on_third(path, payload):
                calls.append(path)
                if len(calls) == 3:
                    os._exit(17)
                real(path, payload)

            storage.write_atomic = dies_on_third
            add(Library(child), "Mia")
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 17
    leftovers = set(data_files(data)) - set(before)
    assert len(leftovers) == 2  # the crash really left files behind

    database = StudioDatabase(data)
    library = Library(database)
    assert [c.name for c in library.characters()] == ["Rex"]  # no row without its files
    assert data_files(data) == before  # no files without a row
    mia = add(library, "Mia")  # the id the dead writer had is handed out again, cleanly
    assert sorted(p.name for p in mia.image_path.parent.iterdir()) == sorted(
        p.name for p in (mia.image_path, mia.mask_path, mia.thumbnail_path, mia.encoding_path)
    )


@pytest.mark.hostile
def test_open_sweeps_orphans_and_temp_files(tmp_path):
    data = tmp_path / "data"
    with StudioDatabase(data) as database:
        mia = add(Library(database), "Mia")
    before = data_files(data)
    folder = mia.image_path.parent
    (data / "characters" / "99").mkdir()
    (data / "characters" / "99" / "image-abc.png").write_bytes(png())  # folder with no row
    (data / "characters" / "notes").mkdir()
    (data / "versions" / "5").mkdir()  # version folder with no row
    (folder / "image-old.png").write_bytes(png())  # old file of a committed update
    (folder / ".image-new.png.tmp-1234").write_bytes(b"half")  # temp file of a crashed write
    (data / ".export.zip.tmp-99").write_bytes(b"half")

    database = StudioDatabase(data)
    assert data_files(data) == before
    assert sorted(os.listdir(data / "characters")) == [str(mia.id)] and os.listdir(data / "versions") == []
    assert Library(database).get_character("Mia") == mia


@pytest.mark.hostile
def test_lost_encoding_file_marks_the_character_missing(tmp_path):
    with StudioDatabase(tmp_path) as database:
        mia = add(Library(database), "Mia")
    mia.encoding_path.unlink()
    again = Library(StudioDatabase(tmp_path)).get_character("Mia")
    assert (again.status, again.encoding_path) == ("missing", None)


# -- threads ------------------------------------------------------------------------------------------


@pytest.mark.hostile
def test_concurrent_adds_from_threads_stay_consistent(library, database):
    barrier = threading.Barrier(10)
    errors: list[BaseException] = []
    clashes: list[str] = []

    def worker(n: int) -> None:
        try:
            barrier.wait()
            if n >= 8:  # two threads race for the same name: exactly one wins
                try:
                    add(library, "Twin", f"from thread {n}")
                except ValueError as err:
                    clashes.append(str(err))
                return
            for i in range(5):
                add(library, f"Thread {n} character {i}", color=(n * 20, i * 40, 0))
                library.characters(search="thread")  # reads interleave with the writes
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(clashes) == 1 and "'Twin' already exists" in clashes[0]
    characters = library.characters()
    assert len(characters) == 8 * 5 + 1
    assert len({c.id for c in characters}) == len({c.name.casefold() for c in characters}) == 41
    assert sorted(os.listdir(database.data_dir / "characters"), key=int) == [str(c.id) for c in sorted(characters, key=lambda c: c.id)]
    for character in characters:
        assert character.image_path.is_file() and character.encoding_path.is_file()
    assert database.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_connection_per_thread(database):
    seen = []
    thread = threading.Thread(target=lambda: seen.append(database.db))
    thread.start()
    thread.join()
    assert seen[0] is not database.db and seen[0].conn is not database.db.conn
    for _ in range(5):  # connections of finished threads are closed, not hoarded
        thread = threading.Thread(target=lambda: database.db.execute("SELECT 1"))
        thread.start()
        thread.join()
    assert len(database._connections) <= 2


@pytest.mark.hostile
def test_close_while_another_thread_is_in_a_query(database):
    """A workspace deleted while one of its events still runs (a page's first event, then its
    load): closing must not pull the connection from under the running query (a segfault)."""
    started, result = threading.Event(), []
    slow = "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT x FROM c"

    def query():
        db = database.db
        db.execute("CREATE TABLE t (x INTEGER)")
        started.set()
        with db.conn:
            result.append(db.execute(slow).rowcount)

    thread = threading.Thread(target=query)
    thread.start()
    started.wait()
    time.sleep(0.05)  # inside sqlite3_step, the GIL released
    database.close()
    thread.join()
    assert result == [3000000] and database._connections == {}
    assert database.db.execute("SELECT count(*) FROM t").fetchone()[0] == 3000000
    assert database.db.execute("SELECT 1").fetchone()[0] == 1  # a later call opens a new connection


# -- archives -----------------------------------------------------------------------------------------


def test_export_import_round_trip(library, tmp_path):
    mia = add(library, "Mia", "a girl with a red scarf", encoding=b"mia-enc")
    rex = add(library, "Rex", "a dog", color=(0, 0, 200), encoding=None)
    archive = library.export_characters(tmp_path / "cast.zip")
    with zipfile.ZipFile(archive) as z:
        assert "characters.json" in z.namelist() and len(z.namelist()) == 1 + 4 + 3

    other = Library(StudioDatabase(tmp_path / "other"))
    imported = other.import_characters(archive, check_picture=check_stored_picture)
    assert [c.name for c in imported] == ["Mia", "Rex"]
    for before, after in zip((mia, rex), imported):
        assert (after.name, after.description, after.status, after.encoder_id, after.created) == (
            before.name, before.description, before.status, before.encoder_id, before.created,
        )
        for attr in ("image_path", "mask_path", "thumbnail_path"):
            assert getattr(after, attr).read_bytes() == getattr(before, attr).read_bytes()
    assert other.read_encoding("mia") == b"mia-enc" and imported[1].encoding_path is None

    only_rex = library.export_characters(tmp_path / "rex.zip", ids=[rex.id])
    third = Library(StudioDatabase(tmp_path / "third"))
    assert [c.name for c in third.import_characters(only_rex, check_picture=check_stored_picture)] == ["Rex"]


def test_import_clashes_rename_or_skip(library, tmp_path):
    add(library, "Mia", "the original")
    add(library, "Rex")
    archive = library.export_characters(tmp_path / "cast.zip")
    renamed = library.import_characters(archive, check_picture=check_stored_picture)
    assert [c.name for c in renamed] == ["Mia (2)", "Rex (2)"]
    again = library.import_characters(archive, on_clash="rename", check_picture=check_stored_picture)
    assert [c.name for c in again] == ["Mia (3)", "Rex (3)"]
    assert library.import_characters(archive, on_clash="skip", check_picture=check_stored_picture) == []
    assert len(library.characters()) == 6
    assert library.get_character("mia (2)").description == "the original"
    with pytest.raises(ValueError, match="on_clash"):
        library.import_characters(archive, on_clash="overwrite", check_picture=check_stored_picture)


def good_archive(library: Library, tmp_path: Path) -> Path:
    add(library, "Mia", encoding=b"enc")
    return library.export_characters(tmp_path / "good.zip")


def rewrite(archive: Path, target: Path, extra: dict[str, bytes] | None = None, edit=None) -> Path:
    """A copy of `archive` with extra members and/or characters.json edited."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "characters.json" and edit is not None:
                payload = json.loads(data)
                edit(payload)
                data = json.dumps(payload).encode()
            dst.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            dst.writestr(zipfile.ZipInfo(name), data)
    return target


@pytest.mark.hostile
@pytest.mark.parametrize("member", ["../evil.png", "characters/../../evil.png", "/tmp/evil.png", "C:/evil.png", "a\\..\\evil.png", "a//b.png"])
def test_zip_slip_member_refuses_the_whole_archive(library, tmp_path, member):
    archive = rewrite(good_archive(library, tmp_path), tmp_path / "slip.zip", extra={member: png()})
    target = StudioDatabase(tmp_path / "target")
    with pytest.raises(ValueError, match="archive member"):
        Library(target).import_characters(archive, check_picture=check_stored_picture)
    assert Library(target).characters() == [] and data_files(target.data_dir) == {}
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/evil.png").exists()


def _point_image_at(path):
    def edit(payload):
        payload["characters"][0]["files"]["image"] = path

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_point_image_at("../../outside.png"), "escapes"),
        (_point_image_at("/etc/passwd"), "absolute"),
        (_point_image_at("characters/1/missing.png"), "lacks"),
        (lambda p: p["characters"][0].update(name=""), "empty"),
        (lambda p: p["characters"].append(dict(p["characters"][0], id=2, name="mia")), "twice"),
        (lambda p: p.update(format="something else"), "not an AnyStory"),
        (lambda p: p.update(format_version=99), "format version"),
        (lambda p: p["characters"][0].update(status="great"), "status"),
    ],
)
@pytest.mark.hostile
def test_bad_archive_json_is_refused_with_nothing_written(library, tmp_path, edit, message):
    archive = rewrite(good_archive(library, tmp_path), tmp_path / "bad.zip", edit=edit)
    target = StudioDatabase(tmp_path / "target")
    with pytest.raises(ValueError, match=message):
        Library(target).import_characters(archive, check_picture=check_stored_picture)
    assert data_files(target.data_dir) == {} and Library(target).characters() == []


@pytest.mark.hostile
def test_archive_with_non_png_image_or_no_json_is_refused(library, tmp_path):
    good = good_archive(library, tmp_path)
    image = library.get_character("Mia").image_path.relative_to(library.database.data_dir).as_posix()
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "gif.zip", "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, b"GIF89a..." if info.filename == image else src.read(info))
    target = Library(StudioDatabase(tmp_path / "target"))
    with pytest.raises(ValueError, match="the image is not a readable picture"):
        target.import_characters(tmp_path / "gif.zip", check_picture=check_stored_picture)
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    with pytest.raises(ValueError, match="not a readable zip"):
        target.import_characters(tmp_path / "junk.zip", check_picture=check_stored_picture)
    with zipfile.ZipFile(tmp_path / "empty.zip", "w"):
        pass
    with pytest.raises(ValueError, match="no characters.json"):
        target.import_characters(tmp_path / "empty.zip", check_picture=check_stored_picture)
    assert data_files(target.database.data_dir) == {}
