"""The shipped preview model (assets/preview-model): its files, its loading, and what it draws.

The four properties of issue 17 are measured by `anystory.training.preview_checks` (the same
functions give docs/TRAINING.md its figures) on the shipped weights with fixed seeds.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from anystory.pipeline import AnyStoryPipeline
from anystory.studio import PREVIEW_MODEL_DIR, PREVIEW_PANEL, Studio, load_pipeline, preview_model_folder
from anystory.training import preview_checks
from anystory.training.preview_model import REPORT_FILE, PreviewModelConfig, file_hashes, shape_caption
from anystory.training.proof import ProofConfig
from anystory.training.synthetic import COMPACT_SHAPES, identity


@pytest.fixture(scope="module")
def record():
    return json.loads((PREVIEW_MODEL_DIR / REPORT_FILE).read_text())


@pytest.fixture(scope="module")
def shipped():
    return preview_checks.load_model(PREVIEW_MODEL_DIR)


@pytest.fixture(scope="module")
def checks(shipped):
    settings = preview_checks.DrawSettings(PREVIEW_PANEL["width"], PREVIEW_PANEL["steps"], PREVIEW_PANEL["guidance"])
    report = preview_checks.run_checks(shipped, preview_checks.load_cast(), settings)
    print(report.table())
    return report


def test_shipped_files_are_the_ones_the_command_made(record):
    """The files are those the record names (SHA-256), within the size budget, in the recorded
    dtype; the record's config is what the command runs today."""
    assert record["files"] == file_hashes(PREVIEW_MODEL_DIR)
    assert set(record["files"]) >= {"adapter/anystory.safetensors", "base/unet/diffusion_pytorch_model.safetensors"}
    total = sum(p.stat().st_size for p in PREVIEW_MODEL_DIR.rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024, total
    assert record["config"] == PreviewModelConfig().to_dict()
    assert record["config"]["proof"] == json.loads(json.dumps(dataclasses.asdict(ProofConfig())))
    with safe_open(str(PREVIEW_MODEL_DIR / "adapter" / "anystory.safetensors"), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {"F16" if record["dtype"] == "float16" else "F32"}
    steps = record["training"]
    assert steps["stage1"]["steps"] == record["config"]["stage1_steps"]
    assert steps["stage2"]["steps"] == record["config"]["stage2_steps"]


def test_shipped_model_loads_through_from_pretrained(shipped):
    folder = PREVIEW_MODEL_DIR
    adapter = json.loads((folder / "adapter" / "config.json").read_text())
    assert shipped.mode == "checkpoint" and shipped.default_router == "learned"
    assert dataclasses.asdict(shipped.anystory_config) == adapter["anystory"]
    assert shipped.vae.config.block_out_channels == list(ProofConfig().vae_channels)
    again = AnyStoryPipeline.from_pretrained(
        str(folder / "base"), adapter=str(folder / "adapter"), local_files_only=True
    )
    assert again.encoder_id == shipped.encoder_id  # the same weights, the same encoder identity


def test_preview_mode_runs_the_shipped_model(shipped, tmp_path):
    pipe = load_pipeline(tmp_path, preview=True)
    assert preview_model_folder() == PREVIEW_MODEL_DIR
    assert pipe.encoder_id == shipped.encoder_id
    assert not (tmp_path / "models").exists()  # nothing is built at launch
    studio = Studio(tmp_path / "data", pipe, preview=True)
    assert studio.panel_defaults["width"] == 256 and studio.panel_defaults["router"] == "learned"


@pytest.mark.hostile
def test_an_incomplete_preview_model_is_named(tmp_path):
    (tmp_path / "base").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter/config.json"):
        preview_model_folder(tmp_path)


def test_example_cast_is_of_the_toy_world():
    """Descriptions in the words of the training captions; one character is an identity outside the
    training pool; the pictures are what make_example_cast.py draws."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_example_cast", PREVIEW_MODEL_DIR.parent / "make_example_cast.py"
    )
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    entries = json.loads((PREVIEW_MODEL_DIR.parent / "cast" / "cast.json").read_text())["characters"]
    start, stop = ProofConfig().identities
    for entry in entries:
        assert entry["description"] == f"a {identity(entry['identity'], COMPACT_SHAPES).name}"
        assert entry["trained_on"] == (start <= entry["identity"] < stop)
        stem = entry["file"].removesuffix(".png")
        _, index, angle = maker.CAST[stem]
        drawn = np.asarray(maker.draw_character(index, angle, seed=index))
        assert np.array_equal(drawn, np.asarray(Image.open(PREVIEW_MODEL_DIR.parent / "cast" / entry["file"])))
    assert any(not e["trained_on"] for e in entries) and any(e["trained_on"] for e in entries)


def test_shape_captions():
    assert shape_caption("a red stripes disc and a blue solid square") == "a disc and a square"
    assert shape_caption("a lime dots hexagon") == "a hexagon"


# -- what it draws ------------------------------------------------------------------------------


# Not reached by the shipped model (issue 17; docs/TRAINING.md "The preview model"): the figure it
# measured is in each reason. strict: a model that reaches the target turns these into failures, so
# the mark is removed with the model that earns it. The targets are the issue's, unchanged.
@pytest.mark.xfail(strict=True, reason="shipped model: mean placement IoU 0.460 (0.518, 0.439, 0.506, 0.379) < 0.6")
def test_placement_agrees_with_the_route_maps(checks):
    """Two characters, learned router: the pixels that differ from the background are where the
    route maps put the characters (IoU at the latent grid, mean of four panels)."""
    assert np.mean(checks.placement_iou) >= 0.6, checks.placement_iou


def test_layout_router_keeps_each_character_in_its_box(checks):
    assert all(share >= 0.6 for share in checks.layout_inside.values()), checks.layout_inside


@pytest.mark.xfail(strict=True, reason="shipped model: 75% (6 of 6 present characters right; Rex absent in 2 panels)")
def test_identity_holds_across_panels(checks):
    """A character's region, in four panels with other prompts and partners, is nearer its own
    reference than any other character's in at least 80% of the character-panels."""
    assert checks.identity_share >= 0.8, [(c["name"], c["nearest"]) for c in checks.identity]


@pytest.mark.xfail(strict=True, reason="shipped model: identity margin routed 0.111 vs router='none' 0.129")
def test_routing_off_blends_more(checks):
    assert checks.margin_none < checks.margin_routed, (checks.margin_none, checks.margin_routed)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="shipped model: the router gives Rex no region beside Mia (panel 3, seed 3)")
def test_example_story_draws_the_cast_alone_and_together(shipped, tmp_path):
    """Preview mode's example story on the shipped model, through the Studio: every panel gets a
    picture, and each character it names has a region of the route maps (none is absent)."""
    studio = Studio(tmp_path / "data", shipped, preview=True)
    assert studio.add_example_cast() == ["Mia", "Rex", "Bolt"]
    story = studio.add_example_story()
    (tmp_path / "cast.json").write_text('{"characters": []}')
    assert story is not None and studio.add_example_story(tmp_path) is None  # a cast file without a story
    panels = studio.panels(story.id)
    assert [len(studio.panel_cast(p)) for p in panels] == [1, 1, 2, 1, 2, 2]
    versions = studio.generate_story(story.id)
    assert len(versions) == len(panels)
    for version in versions:
        scores = studio.version_scores(version.id)
        assert scores is not None and not scores.absent(), scores


@pytest.mark.training
@pytest.mark.slow
def test_command_trains_and_exports_at_toy_size(tmp_path):
    """The command's whole path at toy size: base (fitted, then from the cache), whole-scene fit,
    both stages with exactly their steps, the export (fp16 when it draws the same picture), and
    the exported folder loads as the preview mode loads the shipped one."""
    from anystory.training import preview_model

    proof = ProofConfig(size=64, reference_size=48, stage1_scenes=3, stage2_scenes=3, heldout_scenes=2,
                        vae_steps=2, unet_steps=2, vae_channels=(8, 16, 16, 16), unet_batch=2)  # fmt: skip
    steps = dict(scene_fit_steps=2, stage1_steps=2, stage2_steps=3, eval_scenes=2)
    config = preview_model.PreviewModelConfig(proof=proof, **steps)
    report = preview_model.train(config, tmp_path / "run", tmp_path / "cache")
    assert report["stage1"]["steps"] == 2 and report["stage2"]["steps"] == 3
    assert "base: whole-scene UNet fit" in report["phases"] and report["base_source"]["from_cache"] is None
    losses = report["stage1"]["heldout_losses_after"]
    assert losses["gap"] == pytest.approx(losses["other_reference"] - losses["own_reference"])
    record = preview_model.export(tmp_path / "run", tmp_path / "export")
    assert record["dtype"] in ("float16", "float32") and record["files"] == file_hashes(tmp_path / "export")
    assert record["config"] == config.to_dict()
    pipe = preview_checks.load_model(tmp_path / "export")
    assert pipe.mode == "checkpoint" and pipe.default_router == "learned"
    again = preview_model.train(config, tmp_path / "again", tmp_path / "cache")
    assert again["base_source"]["from_cache"] and again["routing_iou"] == report["routing_iou"]
