"""Stories, panels, versions, mentions and project archives, on real SQLite files in tmp folders."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from anystory.images import check_stored_picture
from anystory.library import Library
from anystory.mentions import Mention, mentioned_names, rename_mentions, resolve_mentions
from anystory.storage import DB_NAME, RESERVE_NAME, StudioDatabase
from anystory.story import Stories


def png(color=(200, 30, 30), size=(8, 8), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def add(library: Library, name: str, description: str = "", color=(200, 30, 30)):
    return library.add_character(name, description, png(color), png(255, mode="L"), png(color, (4, 4)), b"enc-" + name.encode(), "enc-1")


def data_files(data_dir: Path) -> dict[str, bytes]:
    return {
        p.relative_to(data_dir).as_posix(): p.read_bytes()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(DB_NAME) and p.name != RESERVE_NAME
    }


def rows(database: StudioDatabase) -> dict[str, list[dict]]:
    return {t: list(database.db[t].rows_where(order_by="id")) for t in ("characters", "stories", "panels", "versions")}


@pytest.fixture
def database(tmp_path):
    with StudioDatabase(tmp_path / "data") as db:
        yield db


@pytest.fixture
def stories(database):
    return Stories(database)


CAST = {"Mia": (1, "a young woman with a red scarf"), "Rex": (2, "a scruffy dog")}


# -- mentions -----------------------------------------------------------------------------------------


def test_resolve_mentions_replaces_names_and_gives_spans():
    prompt, mentions = resolve_mentions("[mia] walks [REX] home; [Mia] smiles", CAST)
    assert prompt == "a young woman with a red scarf walks a scruffy dog home; a young woman with a red scarf smiles"
    assert [(m.name, m.character_id) for m in mentions] == [("Mia", 1), ("Rex", 2), ("Mia", 1)]
    for mention in mentions:
        assert prompt[mention.start : mention.end] == CAST[mention.name][1]
    assert mentions[1] == Mention("Rex", 2, 37, 50)


def test_resolve_mentions_leaves_other_brackets_as_text():
    text = "a sign [[Mia]] and [ ] and [] and Rex] and [Mia x"
    assert resolve_mentions(text, CAST) == (text, [])
    prompt, mentions = resolve_mentions("[[x]] [ Rex ]", CAST)
    assert prompt == "[[x]] a scruffy dog" and mentions == [Mention("Rex", 2, 6, 19)]
    assert resolve_mentions("no mentions", {}) == ("no mentions", [])


@pytest.mark.hostile
def test_resolve_mentions_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        resolve_mentions("[Mia] meets [Zed]", CAST)
    assert "[Zed]" in str(err.value) and "known characters: Mia, Rex" in str(err.value)
    with pytest.raises(ValueError, match="none yet"):
        resolve_mentions("[Zed]", {})


def test_resolve_mentions_unicode_and_empty_description():
    prompt, mentions = resolve_mentions("[éva] and [🤖 Bot]", {"Éva": (3, ""), "🤖 Bot": (4, "a robot")})
    assert prompt == "Éva and a robot"  # an empty description falls back to the name
    assert [(m.start, m.end) for m in mentions] == [(0, 3), (8, 15)]


def test_mentioned_names_and_rename():
    assert mentioned_names("[Mia] and [[x]] and [ Rex ]") == ["Mia", "Rex"]
    # one pass: a rename chain must not rename twice
    assert rename_mentions("[mia] [Mia (2)] [Rex]", {"Mia": "Mia (2)", "Mia (2)": "Mia (3)"}) == "[Mia (2)] [Mia (3)] [Rex]"


# -- stories and panels -------------------------------------------------------------------------------


def test_story_crud(stories, database):
    first = stories.create_story("The walk")
    second = stories.create_story("  Night  ")
    assert [s.title for s in stories.stories()] == ["The walk", "Night"]
    assert stories.rename_story(first.id, "The long walk").title == "The long walk"
    with pytest.raises(ValueError):
        stories.create_story("  ")
    with pytest.raises(KeyError):
        stories.get_story(99)

    panel = stories.add_panel(second.id, "rain")
    stories.add_version(panel.id, {}, "tiny", png())
    stories.delete_story(second.id)
    assert [s.id for s in stories.stories()] == [first.id]
    assert database.db["panels"].count == 0 and database.db["versions"].count == 0
    assert data_files(database.data_dir) == {}


@pytest.mark.hostile
def test_panel_defaults_and_validation(stories):
    story = stories.create_story("s")
    panel = stories.add_panel(story.id, "[Mia] in the rain", seed=7, characters=[3, 3, 1], strengths={3: 0.5}, layout={"3": [0, 0, 0.5, 1]})
    assert (panel.position, panel.status, panel.active_version_id, panel.error) == (0, "empty", None, "")
    assert (panel.steps, panel.guidance, panel.width, panel.height, panel.router) == (30, 5.0, 1024, 1024, "learned")
    assert panel.characters == [3, 1] and panel.strengths == {3: 0.5} and panel.layout == {3: [0.0, 0.0, 0.5, 1.0]}
    assert stories.get_panel(panel.id) == panel
    assert panel.generation_settings()["seed"] == 7

    for bad in (
        dict(router="magic"),
        dict(width=1004),
        dict(steps=0),
        dict(guidance=float("nan")),
        dict(seed=-1),
        dict(layout={1: [0.5, 0, 0.2, 1]}),
        dict(layout={1: [0, 0, 2, 1]}),
        dict(strengths={"x": 1}),
        dict(characters="Mia"),
    ):
        with pytest.raises(ValueError):
            stories.update_panel(panel.id, **bad)
    with pytest.raises(TypeError, match="unknown panel setting 'colour'"):
        stories.update_panel(panel.id, colour="red")
    with pytest.raises(KeyError):
        stories.add_panel(99)
    assert stories.get_panel(panel.id) == panel  # nothing half-applied


def test_panel_order_move_duplicate_delete(stories):
    story = stories.create_story("s")
    a, b, c = (stories.add_panel(story.id, p) for p in "abc")
    assert [p.prompt for p in stories.panels(story.id)] == ["a", "b", "c"]
    assert [p.position for p in stories.panels(story.id)] == [0, 1, 2]
    stories.add_panel(story.id, "first", position=0)
    assert [p.prompt for p in stories.panels(story.id)] == ["first", "a", "b", "c"]

    assert [p.prompt for p in stories.move_panel(a.id, 3)] == ["first", "b", "c", "a"]
    assert [p.prompt for p in stories.move_panel(a.id, -5)] == ["a", "first", "b", "c"]
    assert [p.prompt for p in stories.move_panel(c.id, 99)] == ["a", "first", "b", "c"]

    stories.update_panel(b.id, seed=42, router="layout", layout={1: [0, 0, 1, 1]})
    stories.add_version(b.id, {"seed": 42}, "tiny", png())
    copy = stories.duplicate_panel(b.id)
    assert [p.prompt for p in stories.panels(story.id)] == ["a", "first", "b", "b", "c"]
    assert copy.generation_settings() == stories.get_panel(b.id).generation_settings()
    assert (copy.position, copy.status, copy.active_version_id, stories.versions(copy.id)) == (3, "empty", None, [])

    stories.delete_panel(b.id)
    panels = stories.panels(story.id)
    assert [p.prompt for p in panels] == ["a", "first", "b", "c"] and [p.position for p in panels] == [0, 1, 2, 3]
    assert panels[2].id == copy.id
    with pytest.raises(KeyError):
        stories.get_panel(b.id)


def test_changing_settings_outdates_a_panel_with_versions(stories):
    story = stories.create_story("s")
    panel = stories.add_panel(story.id, "a cat")
    assert stories.update_panel(panel.id, seed=3).status == "empty"  # nothing to outdate
    stories.add_version(panel.id, panel.generation_settings(), "tiny", png())
    assert stories.update_panel(panel.id, seed=3, guidance=5).status == "ready"  # same values: no change
    assert stories.update_panel(panel.id, prompt="a dog").status == "outdated"
    assert stories.get_panel(panel.id).prompt == "a dog"


# -- versions -----------------------------------------------------------------------------------------


def test_versions_active_and_failure(stories, database):
    story = stories.create_story("s")
    panel = stories.add_panel(story.id, "a cat")
    other = stories.add_panel(story.id, "a dog")
    v1 = stories.add_version(panel.id, {"seed": 1}, "tiny-sdxl", png((1, 1, 1)), b"maps-1")
    v2 = stories.add_version(panel.id, {"seed": 2}, "tiny-sdxl", png((2, 2, 2)))
    assert v1.settings == {"seed": 1} and v1.route_map_path.read_bytes() == b"maps-1" and v2.route_map_path is None
    assert v1.image_path.parent == database.data_dir / "versions" / str(v1.id)
    assert [v.id for v in stories.versions(panel.id)] == [v1.id, v2.id]
    current = stories.get_panel(panel.id)
    assert (current.active_version_id, current.status) == (v2.id, "ready")

    assert stories.set_active_version(panel.id, v1.id).active_version_id == v1.id
    with pytest.raises(ValueError, match="belongs to panel"):
        stories.set_active_version(other.id, v1.id)

    failed = stories.mark_failed(panel.id, "CUDA out of memory")
    assert (failed.status, failed.error, failed.active_version_id) == ("failed", "CUDA out of memory", v1.id)
    assert [v.id for v in stories.versions(panel.id)] == [v1.id, v2.id] and v1.image_path.exists()

    v3 = stories.add_version(panel.id, {"seed": 3}, "tiny-sdxl", png((3, 3, 3)))
    assert (stories.get_panel(panel.id).status, stories.get_panel(panel.id).error) == ("ready", "")
    assert stories.active_version(panel.id) == v3

    assert stories.delete_version(v3.id).active_version_id == v2.id  # newest remaining
    assert not v3.image_path.parent.exists()
    stories.delete_version(v1.id)
    emptied = stories.delete_version(v2.id)
    assert (emptied.active_version_id, emptied.status) == (None, "empty")

    with pytest.raises(ValueError, match="PNG"):
        stories.add_version(panel.id, {}, "tiny", b"not png")
    with pytest.raises(ValueError, match="JSON"):
        stories.add_version(panel.id, {"x": object()}, "tiny", png())
    assert stories.versions(panel.id) == [] and data_files(database.data_dir) == {}


# -- panels and characters ----------------------------------------------------------------------------


def test_panels_using_character(stories):
    library = stories.library
    mia, rex, bolt = add(library, "Mia"), add(library, "Rex"), add(library, "Bolt")
    one, two = stories.create_story("one"), stories.create_story("two")
    ticked = stories.add_panel(one.id, "a park", characters=[mia.id])
    named = stories.add_panel(two.id, "[MIA] and [rex]")
    stories.add_panel(one.id, "[[Mia]] is not a mention", characters=[bolt.id])
    assert [p.id for p in stories.panels_using_character(mia.id)] == [ticked.id, named.id]
    assert [p.id for p in stories.panels_using_character(rex.id)] == [named.id]
    with pytest.raises(KeyError):
        stories.panels_using_character(99)


def test_mention_map_feeds_resolve_mentions(stories):
    mia = add(stories.library, "Mia", "a girl")
    prompt, mentions = resolve_mentions("[MIA] waves", stories.library.mention_map())
    assert prompt == "a girl waves" and mentions == [Mention("Mia", mia.id, 0, 6)]


def test_renaming_a_character_rewrites_prompts(stories):
    mia = add(stories.library, "Mia")
    story = stories.create_story("s")
    panel = stories.add_panel(story.id, "[mia] meets [[Mia]] and [Rex]")
    stories.library.update_character(mia.id, name="Mira")
    assert stories.get_panel(panel.id).prompt == "[Mira] meets [[Mia]] and [Rex]"


# -- project archives ---------------------------------------------------------------------------------


def make_project(stories: Stories):
    library = stories.library
    mia = add(library, "Mia", "a young woman with a red scarf")
    rex = add(library, "Rex", "a scruffy dog", color=(0, 0, 200))
    story = stories.create_story("The walk")
    p1 = stories.add_panel(story.id, "[Mia] walks [Rex]", characters=[mia.id, rex.id], strengths={rex.id: 0.8},
                           router="layout", layout={mia.id: [0, 0, 0.5, 1], rex.id: [0.5, 0.2, 1, 1]}, seed=11)
    p2 = stories.add_panel(story.id, "[Mia] alone", characters=[mia.id])
    stories.add_panel(story.id, "an empty street")
    v1 = stories.add_version(p1.id, stories.get_panel(p1.id).generation_settings(), "tiny", png((9, 9, 9)), b"maps")
    stories.add_version(p1.id, {"seed": 12}, "tiny", png((8, 8, 8)))
    stories.set_active_version(p1.id, v1.id)
    stories.add_version(p2.id, {}, "tiny", png((7, 7, 7)))
    stories.update_panel(p2.id, seed=5)  # outdated survives the trip
    return story, mia, rex


def test_project_export_import_into_empty_folder_is_identical(stories, database, tmp_path):
    story, _, _ = make_project(stories)
    archive = stories.export_project(story.id, tmp_path / "walk.zip")

    target = StudioDatabase(tmp_path / "fresh")
    imported = Stories(target).import_project(archive, check_picture=check_stored_picture)
    assert imported == stories.get_story(story.id)
    assert rows(target) == rows(database)
    assert data_files(target.data_dir) == data_files(database.data_dir)


def test_project_export_holds_only_the_cast_it_uses(stories, tmp_path):
    story, mia, rex = make_project(stories)
    add(stories.library, "Bolt", "an unused robot")
    archive = stories.export_project(story.id, tmp_path / "walk.zip")
    with zipfile.ZipFile(archive) as z:
        cast = json.loads(z.read("characters.json"))["characters"]
    assert sorted(c["name"] for c in cast) == ["Mia", "Rex"]


def test_project_import_into_a_used_folder_remaps_ids_and_names(stories, tmp_path):
    story, _, _ = make_project(stories)
    archive = stories.export_project(story.id, tmp_path / "walk.zip")

    target = Stories(StudioDatabase(tmp_path / "used"))
    add(target.library, "Bolt")
    other_mia = add(target.library, "mia", "someone else entirely")
    own_rex = target.library.add_character(  # the same Rex as in the archive: reused, not copied
        "Rex", "a scruffy dog", png((0, 0, 200)), png(255, mode="L"), png((0, 0, 200), (4, 4)), b"x", "enc-1"
    )
    target.create_story("already here")

    imported = target.import_project(archive, check_picture=check_stored_picture)
    assert imported.title == "The walk" and imported.id != story.id
    new_mia = target.library.get_character("Mia (2)")
    assert new_mia.id != other_mia.id
    assert {c.name for c in target.library.characters()} == {"Bolt", "mia", "Mia (2)", "Rex"}
    panels = target.panels(imported.id)
    assert [p.prompt for p in panels] == ["[Mia (2)] walks [Rex]", "[Mia (2)] alone", "an empty street"]
    assert panels[0].characters == [new_mia.id, own_rex.id] and panels[0].strengths == {own_rex.id: 0.8}
    assert set(panels[0].layout) == {new_mia.id, own_rex.id}
    assert [p.status for p in panels] == ["ready", "outdated", "empty"]
    versions = target.versions(panels[0].id)
    assert len(versions) == 2 and panels[0].active_version_id == versions[0].id
    assert versions[0].route_map_path.read_bytes() == b"maps" and versions[0].image_path.read_bytes() == png((9, 9, 9))
    assert target.panels_using_character(new_mia.id) == panels[:2]


def add_member(archive: Path, target: Path, name: str, data: bytes, edit_project=None) -> Path:
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename == "project.json" and edit_project is not None:
                project = json.loads(payload)
                edit_project(project)
                payload = json.dumps(project).encode()
            dst.writestr(info.filename, payload)
        if name:
            dst.writestr(zipfile.ZipInfo(name), data)
    return target


@pytest.mark.hostile
@pytest.mark.parametrize("member", ["../../evil.png", "/evil.png", "versions/../../evil.png"])
def test_project_zip_slip_is_refused_with_nothing_written(stories, tmp_path, member):
    story, _, _ = make_project(stories)
    archive = add_member(stories.export_project(story.id, tmp_path / "walk.zip"), tmp_path / "slip.zip", member, png())
    target = StudioDatabase(tmp_path / "deep" / "target")
    with pytest.raises(ValueError, match="archive member"):
        Stories(target).import_project(archive, check_picture=check_stored_picture)
    assert all(not rows for rows in rows(target).values()) and data_files(target.data_dir) == {}
    assert not any(tmp_path.rglob("evil.png"))


@pytest.mark.hostile
def test_project_json_paths_and_references_are_checked(stories, tmp_path):
    story, _, _ = make_project(stories)
    good = stories.export_project(story.id, tmp_path / "walk.zip")
    target = Stories(StudioDatabase(tmp_path / "target"))

    def escape(project):
        project["versions"][0]["image"] = "../../evil.png"

    def dangling(project):
        project["panels"][0]["active_version_id"] = 999

    def bad_router(project):
        project["panels"][0]["router"] = "magic"

    for edit, message in ((escape, "escapes"), (dangling, "active version"), (bad_router, "router")):
        with pytest.raises(ValueError, match=message):
            target.import_project(add_member(good, tmp_path / "bad.zip", "", b"", edit), check_picture=check_stored_picture)
    assert all(not r for r in rows(target.database).values()) and data_files(target.database.data_dir) == {}


# -- LoRA settings (issue 22) ------------------------------------------------------------------------


def test_migration_9_gives_stories_and_panels_no_lora(tmp_path):
    import sqlite_utils

    from anystory import storage
    from anystory.storage import migrate

    data = tmp_path / "data"
    data.mkdir()
    old = sqlite_utils.Database(data / DB_NAME)
    assert migrate(old, target=8) == 8  # the schema before LoRAs
    old["stories"].insert({"id": 1, "title": "s", "created": "", "updated": ""})
    old["panels"].insert({"id": 1, "story_id": 1, "position": 0, "seed": 0, "steps": 2, "guidance": 5.0,
                          "width": 64, "height": 64, "router": "prompt", "status": "ready", "created": "",
                          "updated": ""})  # fmt: skip
    old.close()
    database = StudioDatabase(data)
    assert database.schema_version == storage.SCHEMA_VERSION == 9
    stories = Stories(database)
    assert stories.get_story(1).lora == {} and stories.get_panel(1).lora == {}
    assert stories.get_panel(1).generation_settings()["lora"] == {}


def test_lora_settings_are_checked():
    from anystory.lora_settings import check_lora

    stored = "loras/" + "a" * 64 + ".safetensors"
    assert check_lora({"source": stored, "weight": 1}) == {"source": stored, "weight": 1.0}
    assert check_lora({"source": "owner/sdxl-style"}) == {"source": "owner/sdxl-style", "weight": 1.0}
    assert check_lora({"none": True}) == {"none": True} and check_lora(None) == {}
    for bad, message in [
        ({"source": "loras/x.safetensors"}, "neither a stored LoRA file"),
        ({"source": "owner/style.ckpt"}, "a pickle could run code"),
        ({"source": "relative/folder/style"}, "neither a stored LoRA file"),
        ({"source": stored, "weight": float("nan")}, "must be a number"),
        ({"source": stored, "scale": 1}, "unknown keys"),
        ([stored], "must be an object"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_lora(bad)
    with pytest.raises(ValueError, match="unknown keys"):
        check_lora({"none": True}, panel=False)  # a story has no "none": it has {} for none
