"""Hostile input and faults (issue 14): what an attacker or bad luck tries, and what must hold.

Every test here is marked `hostile` (pytest.ini): `pytest -m hostile --collect-only -q` counts the
bad inputs and faults covered (the README's "Threat model and limits" gives the figure).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sqlite_utils
from PIL import Image

from anystory import storage
from anystory.library import CharacterNotFound, Library
from anystory.names import name_key, validate_name
from anystory.storage import StudioDatabase, migrate
from anystory.story import Stories

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
    old = database_at_version(data, storage.SCHEMA_VERSION - 1)
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
