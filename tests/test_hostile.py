"""Hostile input and faults (issue 14): what an attacker or bad luck tries, and what must hold.

Every test here is marked `hostile` (pytest.ini): `pytest -m hostile --collect-only -q` counts the
bad inputs and faults covered (the README's "Threat model and limits" gives the figure).
"""

from __future__ import annotations

import errno
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import sqlite_utils
from PIL import Image

from anystory import storage
from anystory.files import DISK_FULL_MESSAGE, DiskFull
from anystory.images import check_stored_picture
from anystory.library import CharacterNotFound, Library
from anystory.names import name_key, validate_name
from anystory.storage import StudioDatabase, migrate
from anystory.story import Stories
from anystory.studio import CharacterInUse, Studio, StudioError
from anystory.tiny import synthetic_subject
from ui.common import error_message

from .browser_support import browser, open_page
from .ui_support import IGNORE_GRADIO_WARNINGS, gradio_temp, preview_pipe

__all__ = ["browser", "gradio_temp", "preview_pipe"]  # fixtures used by name

pytestmark = pytest.mark.hostile


def png(color=(200, 30, 30), size=(8, 8), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def add(library: Library, name: str, description: str = ""):
    return library.add_character(name, description, png(), png(255, mode="L"), png(size=(4, 4)), b"enc", "enc-1")


@pytest.fixture
def stories(tmp_path):
    with StudioDatabase(tmp_path / "data") as database:
        yield Stories(database)


# -- 7. look-alike names -----------------------------------------------------------------------------


LOOK_ALIKES = [
    "Mia\u200b",  # zero-width space
    "\u202eaiM",  # right-to-left override: shows as "Mia"
    "M\u200dia",  # zero-width joiner between letters
    "Mi\u00ada",  # soft hyphen
    "\ufeffMia",  # byte-order mark
    "Mia\u2066",  # left-to-right isolate
]


@pytest.mark.parametrize("name", LOOK_ALIKES)
def test_invisible_characters_are_refused_in_names(stories, name):
    add(stories.library, "Mia")
    with pytest.raises(ValueError, match="invisible characters"):
        add(stories.library, name)
    with pytest.raises(ValueError, match="invisible characters"):
        stories.library.update_character("Mia", name=name)
    assert stories.library.names() == ["Mia"]


@pytest.mark.parametrize("twin", ["ＭＩＡ", "MIA", "mia", "Mia\u00a0", "Ｍia", "  mIA "])
def test_names_are_compared_after_nfkc_and_case_folding(stories, twin):
    add(stories.library, "Mia")
    with pytest.raises(ValueError, match="'Mia' already exists"):
        add(stories.library, twin)
    assert stories.library.get_character(twin).name == "Mia"


def test_emoji_sequences_stay_valid_names():
    astronaut = "Ada 👩\u200d🚀"  # the joiner draws one emoji from two: visible, kept
    assert validate_name(astronaut) == astronaut
    assert name_key("Strasse") == name_key("STRASSE") == name_key("Straße")
    assert name_key("Mia  Lee") == name_key("Mia Lee")  # HTML shows both alike


def database_at_version(data: Path, version: int) -> sqlite_utils.Database:
    data.mkdir(parents=True, exist_ok=True)
    old = sqlite_utils.Database(data / storage.DB_NAME)
    assert migrate(old, target=version) == version
    return old


def insert_character(db: sqlite_utils.Database, character_id: int, name: str, key: str) -> None:
    stamp = "2025-01-01T00:00:00+00:00"
    db["characters"].insert(
        {"id": character_id, "name": name, "name_key": key, "description": f"character {character_id}",
         "image_path": f"characters/{character_id}/image-0.png", "mask_path": f"characters/{character_id}/mask-0.png",
         "thumbnail_path": f"characters/{character_id}/thumbnail-0.png", "encoding_path": None, "encoder_id": "",
         "status": "missing", "created": stamp, "updated": stamp}
    )


def insert_panel(db: sqlite_utils.Database, prompt: str, characters: list, strengths: dict, layout: dict) -> int:
    if not db["stories"].count:
        db["stories"].insert({"id": 1, "title": "s", "created": "", "updated": ""})
    return int(db["panels"].insert(
        {"story_id": 1, "position": db["panels"].count, "prompt": prompt, "characters": json.dumps(characters),
         "seed": 0, "steps": 3, "guidance": 5.0, "width": 64, "height": 64, "strengths": json.dumps(strengths),
         "router": "prompt", "layout": json.dumps(layout), "active_version_id": None, "status": "empty",
         "error": "", "created": "", "updated": ""}
    ).last_pk)


def test_migration_renames_names_that_now_read_alike(tmp_path):
    """A database of schema version 2 held two look-alike Mias: both are kept, the later one is
    renamed "Mia (2)" with its mentions, and the user is told."""
    data = tmp_path / "data"
    old = database_at_version(data, 2)
    insert_character(old, 1, "Mia", "mia")
    insert_character(old, 2, "Mia\u200b", "mia\u200b")  # accepted by version 2
    insert_character(old, 3, "Ｒｅｘ", "ｒｅｘ")
    insert_character(old, 4, "rex", "rex")
    panel = insert_panel(old, "[Mia\u200b] meets [mia], [REX] and [Ｒｅｘ]", [1, 2], {}, {})
    old.close()

    database = StudioDatabase(data)
    library = Library(database)
    assert database.schema_version == storage.SCHEMA_VERSION
    assert {c.id: c.name for c in library.characters()} == {1: "Mia", 2: "Mia (2)", 3: "Ｒｅｘ", 4: "rex (2)"}
    prompt = database.db["panels"].get(panel)["prompt"]
    assert prompt == "[Mia (2)] meets [mia], [rex (2)] and [Ｒｅｘ]"
    assert len(database.notices) == 2 and "'Mia\\u200b' was renamed 'Mia (2)'" in database.notices[0]
    assert library.get_character("mia").id == 1 and library.get_character("MIA (2)").id == 2


# -- 4. character ids are never reused ----------------------------------------------------------------


def test_a_deleted_characters_id_is_never_given_out_again(stories):
    library = stories.library
    mia, rex = add(library, "Mia"), add(library, "Rex")
    story = stories.create_story("s")
    panel = stories.add_panel(story.id, "a park", characters=[mia.id, rex.id], strengths={rex.id: 0.3},
                              layout={rex.id: [0.5, 0, 1, 1]}, router="layout")
    stories.add_version(panel.id, {}, "tiny", png())
    stories.delete_character(rex.id)
    after = stories.get_panel(panel.id)
    assert (after.characters, after.strengths, after.layout) == ([mia.id], {}, {})
    assert after.status == "outdated"  # its image showed Rex
    bolt = add(library, "Bolt")
    assert bolt.id not in (mia.id, rex.id)
    library.delete_character(bolt.id)
    assert add(library, "Zed").id > bolt.id
    with pytest.raises(CharacterNotFound):
        stories.delete_character(rex.id)


def test_a_delete_that_fails_leaves_the_panels_settings(stories, monkeypatch):
    library = stories.library
    mia = add(library, "Mia")
    story = stories.create_story("s")
    panel = stories.add_panel(story.id, "a park", characters=[mia.id], strengths={mia.id: 0.3})

    def broken(character_id):
        raise OSError("the disk went away")

    monkeypatch.setattr(library, "delete_character", broken)
    with pytest.raises(OSError):
        stories.delete_character(mia.id)
    assert stories.get_panel(panel.id).strengths == {mia.id: 0.3}  # one transaction: all or nothing


def test_migration_to_autoincrement_keeps_rows_indexes_and_skips_ids_panels_still_name(tmp_path):
    data = tmp_path / "data"
    old = database_at_version(data, 3)  # before migration 4 (later migrations come after it)
    insert_character(old, 1, "Mia", "mia")
    insert_character(old, 2, "Rex", "rex")
    # Character 3 was deleted; a panel kept its strength and box, a version its id.
    panel = insert_panel(old, "[Mia]", [1, 3], {"1": 0.5, "3": 0.2}, {"3": [0, 0, 1, 1]})
    old["versions"].insert({"panel_id": panel, "settings": json.dumps({"subjects": [1, 5]}), "model_id": "m",
                            "image_path": "versions/1/image.png", "route_map_path": None, "created": ""})
    before = list(old.query("SELECT * FROM characters ORDER BY id"))
    old.close()

    database = StudioDatabase(data)
    db = database.db
    assert list(db.query("SELECT * FROM characters ORDER BY id")) == before
    assert "AUTOINCREMENT" in db.execute("SELECT sql FROM sqlite_master WHERE name = 'characters'").fetchone()[0]
    indexes = {row[1]: row[2] for row in db.execute("PRAGMA index_list(characters)")}
    assert indexes == {"characters_name": 1, "characters_name_key": 1}
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    row = db["panels"].get(panel)
    assert (json.loads(row["characters"]), json.loads(row["strengths"]), json.loads(row["layout"])) == (
        [1], {"1": 0.5}, {})
    assert add(Library(database), "Bolt").id == 6  # past 3 (a panel named it) and 5 (a version did)
    with pytest.raises(ValueError, match="already exists"):
        add(Library(database), "MIA")


# -- the Studio ----------------------------------------------------------------------------------------


@pytest.fixture
def studio(public_pipe, tmp_path):
    studio = Studio(tmp_path / "data", public_pipe, preview=True)
    studio.panel_defaults.update(width=64, height=64, steps=2)
    return studio


def studio_cast(studio):
    mia = studio.add_character("Mia", "a young woman with a red scarf", png_of(synthetic_subject(1)))
    rex = studio.add_character("Rex", "a small brown dog", png_of(synthetic_subject(2)))
    return mia, rex


def png_of(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


# -- 9. unknown character ids in the Python API -------------------------------------------------------


@pytest.mark.parametrize(
    "settings", [dict(characters=[42]), dict(strengths={42: 0.5}), dict(layout={"42": [0, 0, 1, 1]})]
)
def test_the_studio_refuses_unknown_character_ids(studio, settings):
    mia, rex = studio_cast(studio)
    story = studio.create_story("s")
    message = "no character with id 42; known characters: Mia, Rex"
    with pytest.raises(CharacterNotFound, match=message):
        studio.add_panel(story.id, "a park", **settings)
    panel = studio.add_panel(story.id, "a park", characters=[mia.id])
    with pytest.raises(CharacterNotFound, match=message):
        studio.update_panel(panel.id, **settings)
    assert studio.panels(story.id) == [panel]  # nothing half-applied


# -- 6. a delete cannot slip in before a generation ---------------------------------------------------


def test_a_delete_cannot_slip_in_between_planning_and_generating(studio, monkeypatch):
    mia, rex = studio_cast(studio)
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Mia] walks [Rex]")
    refused = []
    real = studio.character_encoding

    def encode_while_someone_deletes(character_id):
        # The window of old: after planning read the cast, before the guard was set.
        with pytest.raises(CharacterInUse, match="running now") as err:
            studio.delete_character(rex.id, force=True)
        refused.append(str(err.value))
        return real(character_id)

    monkeypatch.setattr(studio, "character_encoding", encode_while_someone_deletes)
    version = studio.generate_panel(panel.id)
    assert len(refused) == 2 and version.settings["subject_names"] == ["Mia", "Rex"]
    assert studio.get_character(rex.id).name == "Rex"
    studio.delete_character(rex.id, force=True)  # the generation is over: the guard is gone


@pytest.mark.parametrize("where", ["plan", "encode", "store"])
def test_every_failure_after_the_guard_marks_the_panel_failed(studio, monkeypatch, where):
    mia, rex = studio_cast(studio)
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Mia] walks [Rex]")

    target = {"plan": (studio, "plan_panel"), "encode": (studio, "character_encoding"),
              "store": (studio._stories, "add_version")}[where]
    real, calls = getattr(*target), []

    def broken(*args, **kwargs):
        calls.append(1)
        if where == "plan" and len(calls) == 1:  # the check before waiting for the model: not the job
            return real(*args, **kwargs)
        raise RuntimeError(f"broken {where}")

    monkeypatch.setattr(*target, broken)
    with pytest.raises(StudioError, match=f"generation failed: broken {where}"):
        studio.generate_panel(panel.id)
    failed = studio.get_panel(panel.id)
    assert (failed.status, failed.error) == ("failed", f"generation failed: broken {where}")
    assert studio._busy == set()


# -- 5. a full disk ------------------------------------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_generation_whose_image_cannot_be_stored_marks_the_panel_failed(studio, monkeypatch):
    studio_cast(studio)
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Mia] in the rain")
    monkeypatch.setattr(storage, "write_atomic", no_space)  # every file the version writes
    with pytest.raises(DiskFull, match=f"^{DISK_FULL_MESSAGE}$"):
        studio.generate_panel(panel.id)
    failed = studio.get_panel(panel.id)
    assert (failed.status, failed.error) == ("failed", DISK_FULL_MESSAGE)
    assert studio.versions(panel.id) == [] and list((studio.data_dir / "versions").iterdir()) == []
    assert error_message(DiskFull()) == DISK_FULL_MESSAGE  # what the UI and the HTTP API show


def test_a_full_disk_in_any_atomic_write_is_one_sentence(tmp_path, monkeypatch):
    from anystory import files, render

    def full_write(self, data):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with pytest.raises(DiskFull, match=DISK_FULL_MESSAGE), files.open_atomic(tmp_path / "a.bin") as f:
        full_write(f, b"x")
    monkeypatch.setattr(Image.Image, "save", lambda *a, **k: no_space())
    with pytest.raises(DiskFull, match=DISK_FULL_MESSAGE):
        render.export_png(Image.new("RGB", (8, 8)), tmp_path / "strip.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left


def test_sqlite_full_is_disk_full_and_deletes_still_work(tmp_path):
    database = StudioDatabase(tmp_path / "data")
    library = Library(database)
    first = add(library, "Mia")
    pages = database.db.execute("PRAGMA page_count").fetchone()[0]
    database.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's "database or disk is full"
    with pytest.raises(DiskFull, match=DISK_FULL_MESSAGE) as err:
        for i in range(100):
            add(library, f"Extra {i}", "words " * 600)
    assert "full" in str(err.value.__cause__)
    added = library.characters()
    folders = sorted(p.name for p in (database.data_dir / "characters").iterdir())
    assert folders == sorted(str(c.id) for c in added)  # the refused add left no files
    library.delete_character(first.id)
    assert first.id not in {c.id for c in library.characters()}


def test_a_delete_on_a_full_disk_is_given_the_reserve(tmp_path, monkeypatch):
    size = 1 << 20
    database = StudioDatabase(tmp_path / "data", reserve_bytes=size)
    reserve = database.data_dir / storage.RESERVE_NAME
    assert reserve.stat().st_size == size and reserve.stat().st_blocks * 512 >= size  # allocated, not sparse
    library = Library(database)
    mia, rex = add(library, "Mia"), add(library, "Rex")
    real, seen = library._delete_character, []

    def full_until_the_reserve_gives(id_or_name):
        seen.append(reserve.stat().st_size)
        if len(seen) < 3:
            raise DiskFull()
        real(id_or_name)

    monkeypatch.setattr(library, "_delete_character", full_until_the_reserve_gives)
    library.delete_character(mia.id)
    assert seen == [size, size * 3 // 4, size // 2] and [c.name for c in library.characters()] == ["Rex"]
    assert reserve.stat().st_size == size  # made whole again: the disk has room
    monkeypatch.setattr(library, "_delete_character", lambda id_or_name: no_space_as_disk_full())
    with pytest.raises(DiskFull):  # a disk that stays full: the reserve is spent, then the error
        library.delete_character(rex.id)


def no_space_as_disk_full():
    raise DiskFull()


def test_storage_report_and_bulk_delete_of_old_versions(stories, tmp_path):
    story, other = stories.create_story("s"), stories.create_story("t")
    panel, second = stories.add_panel(story.id, "a"), stories.add_panel(other.id, "b")
    old = [stories.add_version(panel.id, {}, "tiny", png(size=(64, 64))) for _ in range(3)]
    kept = stories.add_version(second.id, {}, "tiny", png(size=(64, 64)))
    stories.add_version(second.id, {}, "tiny", png(size=(64, 64)))
    exports = stories.database.data_dir / "exports"
    exports.mkdir()
    (exports / "story.pdf").write_bytes(b"%PDF" + bytes(1000))
    report = stories.storage_report(exports)
    each = old[0].image_path.stat().st_size
    assert (report.versions, report.exports, report.old_versions, report.old_version_bytes) == (
        5 * each, 1004, 3, 3 * each)
    assert report.database > 0 and report.free > 0 and report.total >= report.versions + report.database

    deleted = stories.delete_versions(story.id)
    assert (deleted.count, deleted.bytes_freed) == (2, 2 * each)  # the active one stays
    assert [v.id for v in stories.versions(panel.id)] == [old[2].id] and stories.get_panel(panel.id).status == "ready"
    assert stories.delete_versions(older_than=kept.created).count == 0  # the other story's old one is newer
    everything = stories.delete_versions(keep_active=False, batch=1)
    assert everything.count == 3 and stories.storage_report(exports).versions == 0
    assert stories.get_panel(panel.id).active_version_id is None and stories.get_panel(panel.id).status == "empty"


def test_studio_storage_report_and_delete_versions(studio):
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "a lighthouse")
    first = studio.generate_panel(panel.id)
    studio.generate_panel(panel.id, new_seed=True)
    report = studio.storage_report()
    assert report.old_versions == 1 and report.old_version_bytes > 0 and report.other > 0  # models, reserve
    assert studio.delete_versions().count == 1 and [v.id for v in studio.versions(panel.id)] != [first.id]


FULL_DISK_SCRIPT = r"""
import io, json, os, sys
import numpy as np
from PIL import Image
from anystory.files import DiskFull
from anystory.library import Library
from anystory.storage import StudioDatabase
from anystory.story import Stories

def png(seed, side):
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()

disk, reserve = sys.argv[1], int(sys.argv[2])
database = StudioDatabase(os.path.join(disk, "data"), reserve_bytes=reserve)
stories = Stories(database)
library = stories.library
story = stories.create_story("s")
panel = stories.add_panel(story.id, "a park")
stories.add_version(panel.id, {}, "tiny", png(0, 32))
result = {"added": 0}
try:
    while True:
        library.add_character(f"C{result['added']}", "x" * 2000, png(result["added"], 64), png(1, 16), png(2, 16),
                              os.urandom(30000), "e")
        result["added"] += 1
except DiskFull as err:
    result["add"] = str(err)
try:  # other programs take what is left
    with open(os.path.join(disk, "filler"), "wb") as filler:
        while True:
            filler.write(bytes(4096))
            filler.flush()
except OSError:
    pass
def attempt(name, write):
    try:
        write()
        result[name] = "ok"
    except Exception as err:
        result[name] = f"{type(err).__name__}: {err}"
attempt("add_version", lambda: stories.add_version(panel.id, {}, "tiny", png(3, 32)))
attempt("mark_failed", lambda: stories.mark_failed(panel.id, "the disk is full"))
for i in range(3):
    attempt(f"delete_{i}", lambda: library.delete_character(f"C{i}"))
attempt("delete_versions", lambda: stories.delete_versions(keep_active=False))
result["status"] = stories.get_panel(panel.id).status
print(json.dumps(result))
"""


def run_on_a_full_disk(tmp_path: Path, reserve: int) -> dict:
    """FULL_DISK_SCRIPT on a real 3 MiB file system (a tmpfs in a user namespace: no root needed)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare for a small real file system")
    mount = tmp_path / f"disk-{reserve}"
    mount.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_SCRIPT)
    root = Path(__file__).resolve().parent.parent
    python = f"PYTHONPATH={root} {sys.executable} {script} {mount} {reserve}"
    command = f"mount -t tmpfs -o size=3m tmpfs {mount} && {python}"
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", command],
                          capture_output=True, text=True, timeout=300)
    if done.returncode and "mount" in done.stderr and "{" not in done.stdout:
        pytest.skip(f"no user namespaces here to mount a small tmpfs: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_on_a_really_full_disk_deletes_and_failure_marks_get_through(tmp_path):
    result = run_on_a_full_disk(tmp_path, reserve=256 * 1024)
    assert result["added"] > 5 and result["add"] == DISK_FULL_MESSAGE
    assert result["add_version"] == f"DiskFull: {DISK_FULL_MESSAGE}"
    assert result["mark_failed"] == "ok"
    assert [result[f"delete_{i}"] for i in range(3)] == ["ok"] * 3
    assert result["delete_versions"] == "ok" and result["status"] == "failed"  # the failure mark stays


def test_without_the_reserve_a_full_disk_refuses_even_deletes(tmp_path):
    """Why the reserve exists: SQLite's write-ahead log must grow before a delete frees anything."""
    result = run_on_a_full_disk(tmp_path, reserve=0)
    assert result["delete_0"] == f"DiskFull: {DISK_FULL_MESSAGE}"


@IGNORE_GRADIO_WARNINGS
@pytest.mark.browser
@pytest.mark.slow
def test_the_storage_part_shows_the_folder_and_deletes_old_versions(browser, gradio_temp, preview_pipe, tmp_path):
    """The Storyboard tab's Storage part in a real browser: sizes, free space, the confirmed bulk delete."""
    import re

    from playwright.sync_api import expect

    from .ui_support import launch, preview_studio

    studio = preview_studio(tmp_path / "data", preview_pipe, side=64)
    story = studio.create_story("The walk")
    panel = studio.add_panel(story.id, "a lighthouse")
    studio.generate_panel(panel.id)
    active = studio.generate_panel(panel.id, new_seed=True)
    demo, url = launch(studio)
    try:
        page = open_page(browser, url)
        page.locator("button[role=tab]:has-text('Storyboard')").first.click()
        page.locator("#storage").get_by_text("Storage", exact=True).click()
        summary = page.locator("#storage-summary")
        expect(summary).to_contain_text("Free on its disk")
        expect(summary).to_contain_text(re.compile(r"Old versions.*: 1, "))
        page.locator("#delete-old-versions").click()
        expect(page.locator("#delete-old-question")).to_contain_text("Delete 1 old version(s)")
        page.locator("#delete-old-confirm").click()
        expect(page.locator("#storyboard-status")).to_contain_text("deleted 1 old version(s)")
        expect(summary).to_contain_text(re.compile(r"Old versions.*: 0, "))
        expect(page.locator("#delete-old-question")).to_be_hidden()
        assert [v.id for v in studio.versions(panel.id)] == [active.id]
        page.close()
    finally:
        demo.close()


# -- 3. colour modes -----------------------------------------------------------------------------------


def saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def picture_in(kind: str):
    """A test picture of one colour mode, as the file (bytes) a user uploads, or a PIL image."""
    import numpy as np
    from PIL import ImageCms

    rgb, rgba = synthetic_subject(3, alpha=False), synthetic_subject(3, alpha=True)
    grey = np.asarray(rgb.convert("L"))
    if kind == "CMYK JPEG":
        return saved(rgb.convert("CMYK"), "JPEG", quality=95)
    if kind == "CMYK TIFF":
        return saved(rgb.convert("CMYK"), "TIFF")
    if kind == "LAB TIFF":
        lab = ImageCms.profileToProfile(rgb, ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                        outputMode="LAB")
        return saved(lab, "TIFF")
    if kind == "F TIFF":
        return saved(Image.fromarray(grey.astype(np.float32) / 255.0, "F"), "TIFF")
    if kind == "I;16 PNG":
        return saved(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")
    if kind == "I TIFF":
        return saved(Image.fromarray(grey.astype(np.int32) * 1000, "I"), "TIFF")
    if kind == "LA PNG":
        return saved(rgba.convert("LA"), "PNG")
    if kind == "PA image":
        return rgba.convert("PA")
    if kind == "P with transparency PNG":
        palette = rgba.convert("RGB").quantize(64)
        palette.putpixel((0, 0), 0)
        return saved(palette, "PNG", transparency=0)
    if kind == "1-bit PNG":
        return saved(rgb.convert("1"), "PNG")
    if kind == "RGB PNG with a broken ICC profile":
        return saved(rgb, "PNG", icc_profile=b"not a profile at all")
    raise AssertionError(kind)


COLOUR_MODES = ["CMYK JPEG", "CMYK TIFF", "LAB TIFF", "F TIFF", "I;16 PNG", "I TIFF", "LA PNG", "PA image",
                "P with transparency PNG", "1-bit PNG", "RGB PNG with a broken ICC profile"]


@pytest.mark.parametrize("kind", COLOUR_MODES)
def test_every_colour_mode_is_rgb_before_the_encoder_sees_it(studio, monkeypatch, kind):
    seen = []
    real = studio.pipeline.encode_subject

    def encode(image, mask=None, **kwargs):
        seen.append((image.mode, None if mask is None else mask.mode))
        return real(image, mask, **kwargs)

    monkeypatch.setattr(studio.pipeline, "encode_subject", encode)
    character = studio.add_character("Mia", "a girl", picture_in(kind))
    stored = Image.open(character.image_path)
    assert stored.format == "PNG" and stored.mode in ("RGB", "RGBA")
    again = studio.update_character(character.id, image=picture_in(kind))
    assert Image.open(again.image_path).mode in ("RGB", "RGBA")
    assert studio.encode_count == len(seen) == 2
    assert all(mode in ("RGB", "RGBA") and mask == "L" for mode, mask in seen)


def test_colour_conversions_keep_the_colours():
    import numpy as np

    from anystory.images import read_image

    reference = np.asarray(synthetic_subject(3, alpha=False), dtype=np.float32)
    for kind in ("CMYK JPEG", "CMYK TIFF", "LAB TIFF"):
        picture = read_image(picture_in(kind))
        assert picture.mode == "RGB"
        assert np.abs(np.asarray(picture, dtype=np.float32) - reference).mean() < 6, kind  # not a band copy
    grey = np.asarray(synthetic_subject(3, alpha=False).convert("L"), dtype=np.float32)
    for kind in ("F TIFF", "I;16 PNG", "I TIFF"):  # scaled to 8 bits, not clipped to white
        values = np.asarray(read_image(picture_in(kind)).convert("L"), dtype=np.float32)
        scale = 1000 * 255 / (grey.max() * 1000) if kind == "I TIFF" else 1.0
        assert np.abs(values - grey * scale).mean() < 2, kind
    assert read_image(picture_in("P with transparency PNG")).mode == "RGBA"


# -- 1, 2. archives: zip bombs, lying sizes, corrupt pictures ------------------------------------------


def small_project(stories: Stories, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A real project export (one character, one panel, one version); returns it and its members by role."""
    mia = add(stories.library, "Mia", "a girl")
    story = stories.create_story("The walk")
    panel = stories.add_panel(story.id, "[Mia] walks", characters=[mia.id])
    version = stories.add_version(panel.id, {}, "tiny", png(size=(64, 64)), b"maps")
    data = stories.database.data_dir
    roles = {
        "version image": version.image_path.relative_to(data).as_posix(),
        "character image": mia.image_path.relative_to(data).as_posix(),
        "encoding": mia.encoding_path.relative_to(data).as_posix(),
    }
    return stories.export_project(story.id, tmp_path / "walk.zip"), roles


def replace_member(archive: Path, target: Path, name: str, write) -> Path:
    """A copy of `archive` where member `name` is written by `write(file)` (streamed, deflate 9)."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            if info.filename == name:
                with dst.open(name, "w") as f:
                    write(f)
            else:
                dst.writestr(info, src.read(info))
    return target


def zeros(count: int, head: bytes = b"\x89PNG\r\n\x1a\n"):
    def write(f):
        f.write(head)
        chunk = bytes(1 << 20)
        for start in range(len(head), count, len(chunk)):
            f.write(chunk[: min(len(chunk), count - start)])

    return write


def declare_size(archive: Path, name: str, declared: int) -> Path:
    """Make the zip's headers lie: `name` claims `declared` bytes (the data and CRC stay)."""
    data = bytearray(archive.read_bytes())
    encoded = name.encode()
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at : name_at + len(encoded)] == encoded:
                data[at + size_at : at + size_at + 4] = declared.to_bytes(4, "little")
            start = at + 4
    archive.write_bytes(bytes(data))
    return archive


def imported_nothing(database: StudioDatabase) -> bool:
    tables = ("characters", "stories", "panels", "versions")
    files = [p for p in database.data_dir.rglob("*") if p.is_file() and not p.name.startswith(storage.DB_NAME)]
    return not any(database.db[t].count for t in tables) and [p.name for p in files] in ([], [storage.RESERVE_NAME])


def peak_bytes(call) -> tuple[int, Exception | None]:
    """The Python heap's peak while `call()` runs (tracemalloc), and what it raised."""
    import tracemalloc

    tracemalloc.start()
    try:
        call()
        raised = None
    except Exception as err:  # noqa: BLE001 - returned for the test to check
        raised = err
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, raised


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A 1.1 MB project archive whose panel image is one 1 GiB "PNG" (signature + zeros)."""
    folder = tmp_path_factory.mktemp("bomb")
    with StudioDatabase(folder / "data") as database:
        good, roles = small_project(Stories(database), folder)
    return replace_member(good, folder / "bomb.zip", roles["version image"], zeros(1 << 30)), roles


def test_a_zip_bomb_is_refused_before_it_is_inflated(bomb, tmp_path):
    archive, _ = bomb
    assert archive.stat().st_size < 1_200_000
    target = StudioDatabase(tmp_path / "target")
    peak, raised = peak_bytes(lambda: Stories(target).import_project(archive, check_picture=check_stored_picture))
    assert isinstance(raised, ValueError) and "too large" in str(raised)
    assert peak < 16 * 2**20 and imported_nothing(target)


def test_a_member_that_inflates_past_its_declared_size_is_refused(bomb, tmp_path):
    archive, roles = bomb
    liar = tmp_path / "liar.zip"
    liar.write_bytes(archive.read_bytes())
    declare_size(liar, roles["version image"], 100_000)  # under every limit: only inflating finds it
    target = StudioDatabase(tmp_path / "target")
    peak, raised = peak_bytes(lambda: Stories(target).import_project(liar, check_picture=check_stored_picture))
    assert isinstance(raised, ValueError) and "damaged" in str(raised), raised
    assert peak < 16 * 2**20 and imported_nothing(target)


def test_large_members_stream_to_disk(stories, tmp_path):
    """A 96 MiB encoding (within its limit) imports with a small, bounded Python heap."""
    good, roles = small_project(stories, tmp_path)
    big = replace_member(good, tmp_path / "big.zip", roles["encoding"], zeros(96 * 2**20, head=b""))
    target = Stories(StudioDatabase(tmp_path / "target"))
    peak, raised = peak_bytes(lambda: target.import_project(big, check_picture=check_stored_picture))
    assert raised is None and peak < 16 * 2**20
    assert target.library.get_character("Mia").encoding_path.stat().st_size == 96 * 2**20


def png_bomb(side: int = 100_000) -> bytes:
    """A PNG whose header claims side x side pixels, with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(side))) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


BAD_PICTURES = {
    "signature + garbage": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40,
    "truncated": png_of(synthetic_subject(4))[:300],
    "header bomb": png_bomb(),
    "a JPEG": saved(synthetic_subject(4, alpha=False), "JPEG"),
    "too large for its kind": None,  # zeros: more bytes than any picture the app writes
}


@pytest.mark.parametrize("role", ["version image", "character image"])
@pytest.mark.parametrize("bad", list(BAD_PICTURES))
def test_every_picture_an_archive_brings_is_decoded_before_anything_is_written(stories, tmp_path, role, bad):
    good, roles = small_project(stories, tmp_path)
    data = BAD_PICTURES[bad]
    kind_limit_plus = 220 * 2**20 if role == "version image" else 80 * 2**20  # over the kind, under any member
    write = zeros(kind_limit_plus) if data is None else (lambda f: f.write(data))
    archive = replace_member(good, tmp_path / "bad.zip", roles[role], write)
    target = StudioDatabase(tmp_path / "target")
    with pytest.raises(ValueError, match="too large|not a readable picture|too many pixels|larger than|PNG only"):
        Stories(target).import_project(archive, check_picture=check_stored_picture)
    assert imported_nothing(target)
    if role == "character image":  # the cast archive takes the same door
        cast = tmp_path / "cast.zip"
        with zipfile.ZipFile(archive) as src, zipfile.ZipFile(cast, "w") as dst:
            for info in src.infolist():
                if info.filename != "project.json":
                    dst.writestr(info, src.read(info))
        with pytest.raises(ValueError, match="too large|not a readable picture|too many pixels|larger than|PNG only"):
            Library(target).import_characters(cast, check_picture=check_stored_picture)
        assert imported_nothing(target)


def test_a_route_map_file_with_a_nested_bomb_is_refused(stories, tmp_path):
    story = stories.create_story("s")
    panel = stories.add_panel(story.id, "a park")
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as inner:
        with inner.open("final.npy", "w") as f:
            zeros(600 * 2**20, head=b"\x93NUMPY")(f)
    stories.add_version(panel.id, {}, "tiny", png(size=(64, 64)), nested.getvalue(), route_maps_suffix=".npz")
    archive = stories.export_project(story.id, tmp_path / "maps.zip")
    target = StudioDatabase(tmp_path / "target")
    with pytest.raises(ValueError, match="route maps is not an acceptable file.*too large"):
        Stories(target).import_project(archive, check_picture=check_stored_picture)
    assert imported_nothing(target)


def test_archive_limits_fit_what_the_app_writes():
    from anystory import archive, images, library, story

    assert library.MAX_STORED_SIDE == images.MAX_SIDE  # the door downscales uploads to it
    assert library.MAX_PICTURE_BYTES >= 4096 * 4096 * 4 and story.MAX_PANEL_PICTURE_BYTES >= 8192 * 8192 * 3
    assert max(library.MAX_PICTURE_BYTES, story.MAX_PANEL_PICTURE_BYTES, library.MAX_ENCODING_BYTES,
               story.MAX_ROUTE_MAPS_BYTES) <= archive.MAX_MEMBER_BYTES
    noisy = Image.effect_noise((4096, 4096), 128).convert("RGB")  # what PNG cannot compress
    assert len(png_of(noisy.convert("RGBA"), compress_level=1)) <= library.MAX_PICTURE_BYTES


def test_a_route_record_that_claims_too_many_slots_is_refused(tmp_path):
    import numpy as np

    from anystory import render

    gates = np.eye(2, dtype=bool)[np.zeros((8, 8), int)].transpose(2, 0, 1)  # one-hot: slot 0 everywhere
    maps = render.route_maps_bytes(np.zeros((2, 8, 8), bool), [{"step": 0, "site": 0, "grid": (8, 8), "gates": gates}])
    path = tmp_path / "maps.npz"
    path.write_bytes(maps)
    assert render.load_route_maps(path)[1] is not None
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "forged.npz", "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename == "g0_num_slots.npy":
                buffer = io.BytesIO()
                np.save(buffer, np.array(10**9))
                payload = buffer.getvalue()
            dst.writestr(info, payload)
    with pytest.raises(ValueError, match="claims 1000000000 slots"):  # not 64 x 10^9 one-hot gates
        render.load_route_maps(tmp_path / "forged.npz")


def test_an_import_that_cannot_fit_on_the_disk_is_refused_first(stories, tmp_path, monkeypatch):
    from anystory import archive as archive_module

    good, _ = small_project(stories, tmp_path)
    target = StudioDatabase(tmp_path / "target")
    real = archive_module.shutil.disk_usage
    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda path: real(path)._replace(free=100))
    with pytest.raises(DiskFull, match="the archive needs .* MB and 0.0 MB are free"):
        Stories(target).import_project(good, check_picture=check_stored_picture)
    assert imported_nothing(target)


# -- the file route serves the exports folder and nothing else ----------------------------------------


@IGNORE_GRADIO_WARNINGS
@pytest.mark.slow
def test_the_app_serves_its_exports_and_nothing_else(gradio_temp, preview_pipe, tmp_path):
    import urllib.error
    import urllib.parse
    import urllib.request

    from .ui_support import launch, preview_studio

    studio = preview_studio(tmp_path / "data", preview_pipe, side=64)
    exported = studio.exports_dir / "story.pdf"
    exported.parent.mkdir(parents=True, exist_ok=True)
    exported.write_bytes(b"%PDF-1.4 exported")
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    demo, url = launch(studio)

    def fetch(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={urllib.parse.quote(path)}", timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, b""

    try:
        assert fetch(str(exported)) == (200, b"%PDF-1.4 exported")
        for path in (str(secret), str(studio.data_dir / storage.DB_NAME), "/etc/passwd",
                     f"{studio.exports_dir}/../{storage.DB_NAME}", str(studio.data_dir / "characters")):
            status, body = fetch(path)
            assert status in (403, 404) and b"not yours" not in body and b"SQLite" not in body, path
    finally:
        demo.close()
