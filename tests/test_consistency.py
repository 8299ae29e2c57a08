"""Consistency scores: the metric's properties on the pipeline's own CLIP image encoder, absent
characters flagged, scores stored with the version, reloaded, exported and imported, best of N."""

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from anystory import storage
from anystory.consistency import Scorer, crop_region, reference_crop, region_masks
from anystory.scores import PanelScores
from anystory.storage import StudioDatabase, migrate
from anystory.studio import Studio, StudioError
from anystory.tiny import synthetic_subject


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def hard_subject(seed: int) -> tuple[Image.Image, np.ndarray]:
    """A subject picture (RGB) and its mask as a hard 0/1 region, as a router's region is."""
    picture = synthetic_subject(seed)
    return picture.convert("RGB"), np.asarray(picture.getchannel("A")) >= 128


def maps_of(*masks: np.ndarray) -> np.ndarray:
    """Route maps [N+1, h, w] at the image's own grid: the subjects' masks, then the background."""
    subjects = np.stack(masks).astype(np.float32)
    return np.concatenate([subjects, 1.0 - subjects.max(axis=0, keepdims=True)])


@pytest.fixture
def studio(public_pipe, tmp_path):
    studio = Studio(tmp_path / "data", public_pipe, preview=True)
    studio.panel_defaults.update(width=64, height=64, steps=2)
    return studio


def two_characters(studio):
    mia = studio.add_character("Mia", "a young woman", png(synthetic_subject(1)))
    rex = studio.add_character("Rex", "a small dog", png(synthetic_subject(2)))
    return mia, rex


# -- the metric --------------------------------------------------------------------------------------


def test_a_region_that_is_the_reference_itself_scores_the_maximum(public_pipe):
    picture, mask = hard_subject(1)
    other, _ = hard_subject(3)
    reference = reference_crop(picture, Image.fromarray(mask.astype(np.uint8) * 255))
    assert np.array_equal(np.asarray(crop_region(picture, mask)), np.asarray(reference))  # cut as encoded
    scorer = Scorer(public_pipe.image_embeddings)
    same = scorer.score(picture, maps_of(mask), ["Mia"], [("mia", lambda: reference)])
    (mia,) = same.characters
    assert mia.present and mia.clip == pytest.approx(1.0, abs=1e-5)
    assert mia.area == pytest.approx(mask.mean(), abs=1e-5)
    elsewhere = scorer.score(other.resize(picture.size), maps_of(mask), ["Mia"], [("mia", lambda: reference)])
    assert elsewhere.characters[0].clip < mia.clip  # another picture in that region scores lower
    assert same.model_seconds <= same.seconds


def test_a_character_with_no_routed_region_is_flagged_not_scored(public_pipe):
    picture, mask = hard_subject(1)
    nowhere = np.zeros_like(mask)
    scorer = Scorer(public_pipe.image_embeddings)
    references = [("mia", lambda: reference_crop(picture, None)), ("rex", lambda: reference_crop(picture, None))]
    scores = scorer.score(picture, maps_of(mask, nowhere), ["Mia", "Rex"], references)
    mia, rex = scores.characters
    assert mia.present and mia.clip is not None
    assert not rex.present and rex.clip is None and rex.box is None and rex.area == 0
    assert rex.low() and scores.absent() == ["Rex"]
    assert scores.mean() == mia.clip and scores.rank() == (1, mia.clip)


def test_regions_follow_the_route_maps_at_the_image_size():
    maps = np.zeros((3, 2, 2), np.float32)
    maps[0, 0, 0] = 1.0  # subject 0: the top-left cell
    maps[1] = 0.4  # subject 1: a minority everywhere (mean maps): no region
    maps[2] = 1.0 - maps[0]
    first, second = region_masks(maps, (8, 4))
    assert second is None
    assert first.shape == (4, 8) and first[:2, :4].all() and first.sum() == 8


@pytest.mark.hostile
def test_a_malformed_score_record_is_refused_with_the_reason():
    good = {"format": 1, "characters": [{"index": 0, "name": "Mia", "present": True, "area": 0.5,
                                         "box": [0, 0, 1, 1], "clip": 0.9}]}  # fmt: skip
    assert PanelScores.from_dict(good).characters[0].clip == 0.9
    bad = [
        ({**good, "format": 99}, "format"),
        ({**good, "characters": "all"}, "characters must be a list"),
        ({**good, "characters": [{**good["characters"][0], "clip": 7}]}, "clip must be between"),
        ({**good, "characters": [{**good["characters"][0], "clip": float("nan")}]}, "clip must be a number"),
        ({**good, "characters": [{**good["characters"][0], "present": False}]}, "absent character has no score"),
        ({**good, "characters": [{**good["characters"][0], "box": [0, 0]}]}, "box must be four"),
    ]
    for record, reason in bad:
        with pytest.raises(ValueError, match=reason):
            PanelScores.from_dict(record)


# -- stored with the version ---------------------------------------------------------------------------


@pytest.mark.slow
def test_scores_are_stored_reloaded_and_travel_with_the_project_archive(studio, public_pipe, tmp_path):
    mia, rex = two_characters(studio)
    story = studio.create_story("The walk")
    panel = studio.add_panel(story.id, "[Mia] walks [Rex] in the park", router="layout",
                             layout={mia.id: [0, 0, 0.5, 1], rex.id: [0.5, 0, 1, 1]})  # fmt: skip
    empty = studio.add_panel(story.id, "an empty street")
    version = studio.generate_panel(panel.id)
    scores = studio.version_scores(version.id)
    assert [c.name for c in scores.characters] == ["Mia", "Rex"]
    assert all(c.present and -1 <= c.clip <= 1 for c in scores.characters)
    assert [c.box for c in scores.characters] == [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]  # the layout's boxes
    assert scores.encoder.startswith(public_pipe.encoder_id) and scores.seconds > 0
    assert studio.version_scores(studio.generate_panel(empty.id).id) is None  # no character: nothing to score

    reopened = Studio(studio.data_dir, public_pipe, preview=True)
    assert reopened.version_scores(version.id) == scores

    (archive,) = studio.export_story(story.id, "project", tmp_path / "walk.zip")
    with zipfile.ZipFile(archive) as z:
        listed = json.loads(z.read("project.json"))["versions"]
    assert PanelScores.from_dict(listed[0]["scores"]) == scores
    other = Studio(tmp_path / "other", public_pipe, preview=True)
    imported = other.import_project(archive)
    (first, _) = other.panels(imported.id)
    assert other.version_scores(first.active_version_id) == scores
    table = other.story_scores(imported.id)
    assert table.characters == ["Mia", "Rex"] and table.cells[0][0] == scores.characters[0]
    assert table.cells[0][1] is None  # the empty street has no Mia


@pytest.mark.hostile
def test_an_archive_with_bad_scores_is_refused_and_imports_nothing(studio, tmp_path):
    mia, _ = two_characters(studio)
    story = studio.create_story("s")
    studio.generate_panel(studio.add_panel(story.id, "[Mia] waves").id)
    (archive,) = studio.export_story(story.id, "project", tmp_path / "s.zip")
    with zipfile.ZipFile(archive) as z:
        members = {name: z.read(name) for name in z.namelist()}
    project = json.loads(members["project.json"])
    project["versions"][0]["scores"]["characters"][0]["clip"] = "excellent"
    members["project.json"] = json.dumps(project).encode()
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(tampered, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    other = Studio(tmp_path / "other", studio.pipeline, preview=True)
    with pytest.raises(ValueError, match="version 1: scores character 1: clip must be a number"):
        other.import_project(tampered)
    assert other.stories() == [] and other.characters() == []


def test_versions_made_before_scores_read_as_not_scored(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    import sqlite_utils

    old = sqlite_utils.Database(data / storage.DB_NAME)
    migrate(old, target=4)  # the schema before scores
    old["stories"].insert({"id": 1, "title": "s", "created": "", "updated": ""})
    old["panels"].insert({"id": 1, "story_id": 1, "position": 0, "seed": 0, "steps": 2, "guidance": 5.0,
                          "width": 64, "height": 64, "router": "prompt", "status": "ready", "created": "",
                          "updated": ""})  # fmt: skip
    old["versions"].insert({"id": 1, "panel_id": 1, "settings": "{}", "model_id": "m", "image_path": "x.png",
                            "route_map_path": None, "created": ""})  # fmt: skip
    old.close()
    database = StudioDatabase(data)
    assert database.schema_version == storage.SCHEMA_VERSION
    assert database.db["versions"].get(1)["scores"] is None


# -- best of N -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_best_of_n_keeps_every_draw_and_activates_the_best(studio):
    mia, rex = two_characters(studio)
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Mia] and [Rex] at the beach", router="prompt")
    earlier = studio.generate_panel(panel.id)
    made = studio.best_of_panel(panel.id, 3)
    assert len(made) == 3 and len({v.settings["seed"] for v in made}) == 3
    assert [v.id for v in studio.versions(panel.id)] == sorted([earlier.id, *(v.id for v in made)])
    ranks = {v.id: studio.version_scores(v.id).rank() for v in made}
    best = max(made, key=lambda v: (ranks[v.id], -v.id))
    assert made[0].id == best.id
    now = studio.get_panel(panel.id)
    assert now.active_version_id == best.id and now.seed == best.settings["seed"] and now.status == "ready"
    assert "the best" in studio.notes[-1]
    studio.set_active_version(panel.id, made[-1].id, restore_settings=True)  # the writer can still choose
    assert studio.get_panel(panel.id).active_version_id == made[-1].id


@pytest.mark.hostile
def test_best_of_n_refuses_a_bad_n_before_any_model_call(studio):
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "a street")
    for n in (0, 9, "3", True):
        with pytest.raises(StudioError, match="best of N takes N from 1 to 8"):
            studio.best_of_panel(panel.id, n)
    assert studio.versions(panel.id) == []


# -- in the app --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_storyboard_shows_badges_and_the_story_table(studio):
    import gradio as gr

    from ui.storyboard.layout import layout_storyboard
    from ui.storyboard.view import StoryboardView

    mia, rex = two_characters(studio)
    story = studio.create_story("s")
    panel = studio.add_panel(story.id, "[Mia] and [Rex] in a park", router="layout",
                             layout={mia.id: [0, 0, 0.5, 1]})  # fmt: skip
    studio.update_panel(panel.id, layout={mia.id: [0, 0, 0.5, 1], rex.id: [0.5, 0, 1, 1]})
    version = studio.generate_panel(panel.id)
    with gr.Blocks():
        tab = layout_storyboard(studio.panel_defaults, studio.routers)
    shown = StoryboardView(tab).render(studio, story.id, panel.id)
    scores = studio.version_scores(version.id)
    badges, table = shown[tab.inspector.scores], shown[tab.inspector.story_scores]
    for entry in scores.characters:
        assert f"{entry.name}: {entry.clip:.2f}" in badges and f">{entry.clip:.2f}</td>" in table
    assert 'id="story-score-table"' in table and "<th>1</th>" in table
    studio.low_score = 1.01  # every score is under it now: flagged
    shown = StoryboardView(tab).render(studio, story.id, panel.id)
    assert shown[tab.inspector.scores].count('data-low="1"') == 2 and "2 flagged" in shown[tab.inspector.story_scores]
