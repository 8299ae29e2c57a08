"""Preparing real data (issue 21, item 4): pictures -> masks (CLIPSeg) + captions (BLIP) -> a
dataset the trainer loads; resumable, transactional, every dropped picture named with its reason.
The models are tiny random ones built offline and loaded through `from_pretrained`."""

import json
from collections import deque

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessor

from anystory.files import is_temp_name
from anystory.training import prepare as prepare_module
from anystory.training.config import load_config
from anystory.training.data import MANIFEST, ManifestDataset
from anystory.training.instances import find_instances, label_components
from anystory.training.prepare import (
    DROPPED,
    MASK_TOO_SMALL,
    NO_INSTANCE,
    NO_SUBJECT_IN_CAPTION,
    REPORT,
    TOO_SMALL,
    UNREADABLE,
    PrepareConfig,
    main,
    prepare,
)
from anystory.training.prepare_models import Captioner, Segmenter
from anystory.training.prepare_tiny import write_tiny_blip, write_tiny_clipseg
from anystory.training.synthetic import SyntheticConfig, generate
from anystory.training.trainer import Trainer

pytestmark = pytest.mark.training

SUBJECTS = ("dog", "person")
# Random models give random maps: a threshold of 0 puts every pixel in some word's mask (the
# word with the highest probability there), so rows are kept whatever the weights are.
KEEP = dict(mask_threshold=0.0, min_area=0.0, min_side=32, work_side=64)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare-models")
    seg, cap = write_tiny_clipseg(root / "clipseg"), write_tiny_blip(root / "blip")
    return (
        seg,
        cap,
        Segmenter.from_pretrained(str(seg), local_files_only=True),
        Captioner.from_pretrained(str(cap), local_files_only=True),
    )


@pytest.fixture
def pictures(tmp_path):
    """Four synthetic scenes (64 px), an unreadable .png and a 20 px picture."""
    scenes = generate(
        tmp_path / "scenes", SyntheticConfig(scenes=4, size=64, subjects=(1, 2), self_reference=True, seed=5)
    )
    folder = scenes / "images"
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a picture")
    Image.new("RGB", (20, 20), (90, 120, 30)).save(folder / "tiny.png")
    (folder / "notes.txt").write_text("not a picture: ignored")
    return folder


def clip_processor():
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def load(out, rows):
    dataset = ManifestDataset(out, clip_processor(), resolution=64, reference_size=32, check="full")
    assert len(dataset) == rows
    for i in range(rows):
        sample = dataset[i]
        assert sample["masks"].shape[1:] == (64, 64) and sample["masks"].sum() > 0
        assert sample["reference_pixels"].shape[0] == sample["masks"].shape[0]
    return dataset


def no_temp_files(out):
    return not [p for p in out.rglob("*") if is_temp_name(p.name)]


# -- instances from probability maps -------------------------------------------------------------


def flood_count(mask):
    """Components by breadth-first search (8-connected), the slow obvious way."""
    seen, count = np.zeros_like(mask), 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        queue = deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
    return count


def test_label_components_matches_a_flood_fill():
    rng = np.random.RandomState(0)
    for density in (0.2, 0.45, 0.6):
        mask = rng.rand(40, 33) < density
        labels, count = label_components(mask)
        assert count == flood_count(mask)
        assert ((labels > 0) == mask).all()
        for label in range(1, count + 1):  # each label is one component
            assert flood_count(labels == label) == 1
    diagonal = np.eye(5, dtype=bool)
    assert label_components(diagonal)[1] == 1  # 8-connected


def test_find_instances_owner_threshold_area_and_count():
    probs = np.zeros((2, 20, 20), np.float32)
    probs[0, 1:6, 1:6] = 0.9  # dog, 25 px
    probs[0, 12:19, 12:19] = 0.8  # a second dog, 49 px
    probs[1, 4:10, 4:10] = 0.95  # person, 36 px, over a corner of the first dog: it owns the overlap
    probs[1, 0, 19] = 0.7  # one stray person pixel
    found = find_instances(probs, threshold=0.5, min_area=0.01, max_instances=4, mode="components")
    assert [(f.word, int(f.mask.sum())) for f in found.kept] == [(0, 49), (1, 36), (0, 25 - 4)]
    assert found.candidates == 4 and found.too_small == 1 and found.cut == 0
    masks = np.stack([f.mask for f in found.kept])
    assert masks.sum(0).max() == 1  # instances never overlap
    assert found.kept[1].score == pytest.approx(0.95)

    words = find_instances(probs, threshold=0.5, min_area=0.01, max_instances=4, mode="words")
    assert [(f.word, int(f.mask.sum())) for f in words.kept] == [(0, 49 + 21), (1, 37)]
    cut = find_instances(probs, threshold=0.5, min_area=0.0, max_instances=2)
    assert len(cut.kept) == 2 and cut.cut == 2
    nothing = find_instances(probs, threshold=0.99, min_area=0.0, max_instances=4)
    assert nothing.candidates == 0 and not nothing.kept
    small = find_instances(probs, threshold=0.5, min_area=0.5, max_instances=4)
    assert not small.kept and small.too_small == 4 and small.largest == pytest.approx(49 / 400)


# -- the command ---------------------------------------------------------------------------------


def test_prepare_writes_a_dataset_the_trainer_loads_and_a_rerun_skips_everything(models, pictures, tmp_path, capsys):
    seg, cap, _, _ = models
    out = tmp_path / "out"
    argv = [str(pictures), str(out), "--subjects", ",".join(SUBJECTS), "--segmenter", str(seg), "--captioner", str(cap),
            "--mask-threshold", "0", "--min-area", "0", "--min-side", "32", "--work-side", "64", "--instances", "words",
            "--device", "cpu", "--local-files-only"]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / REPORT).read_text())
    assert printed == report
    assert report["pictures"] == 6 and report["written"] == 4 and report["rows"] == 4
    assert report["dropped"] == {UNREADABLE: 1, TOO_SMALL: 1}
    reasons = {d["source"]: d["reason"] for d in report["dropped_pictures"]}
    assert reasons == {"broken.png": UNREADABLE, "tiny.png": TOO_SMALL}
    assert "20x20" in next(d["detail"] for d in report["dropped_pictures"] if d["source"] == "tiny.png")

    dataset = load(out, 4)
    rows = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    for row, parsed in zip(rows, dataset.rows):
        assert row["source"].endswith(".png") and row["caption"] == parsed.caption
        assert all(i["label"] in SUBJECTS for i in row["instances"])
        masks = [np.asarray(Image.open(out / i["mask"])) >= 128 for i in row["instances"]]
        assert np.sum(masks, 0).max() == 1 and np.sum(masks, 0).min() == 1  # threshold 0: every pixel, once
        assert Image.open(out / row["image"]).size == (64, 64)
        for instance in parsed.instances:  # the instance's own crop, with its mask
            assert instance.references[0].image.parent.name == "references" and instance.references[0].mask.is_file()
    assert isinstance(rows[0]["caption"], str)

    manifest = (out / MANIFEST).read_bytes()
    assert main(argv) == 0  # resume: nothing left to do
    again = json.loads(capsys.readouterr().out)
    assert (
        again["written"] == 0
        and again["already_written"] == 4
        and again["dropped_before"] == 2
        and again["dropped"] == {}
    )
    assert (out / MANIFEST).read_bytes() == manifest and no_temp_files(out)


def test_a_threshold_nothing_reaches_drops_every_picture_and_retry_takes_them(models, pictures, tmp_path):
    _, _, segmenter, captioner = models
    out = tmp_path / "out"
    config = PrepareConfig(SUBJECTS, **{**KEEP, "mask_threshold": 1.0})
    report = prepare(pictures, out, config, segmenter, captioner, log=lambda m: None)
    assert report.written == 0 and report.dropped == {NO_INSTANCE: 4, UNREADABLE: 1, TOO_SMALL: 1}
    assert "--mask-threshold 1.0" in next(d["detail"] for d in report.dropped_pictures if d["reason"] == NO_INSTANCE)
    assert len((out / DROPPED).read_text().splitlines()) == 6

    kept = prepare(pictures, out, PrepareConfig(SUBJECTS, **KEEP), segmenter, captioner, log=lambda m: None)
    assert kept.written == 0 and kept.dropped_before == 6  # dropped before: skipped
    config = PrepareConfig(SUBJECTS, **{**KEEP, "work_side": 24}, retry_dropped=True)  # masks found at 24 px, scaled
    retried = prepare(pictures, out, config, segmenter, captioner, log=lambda m: None)
    assert retried.written == 4 and retried.dropped == {UNREADABLE: 1, TOO_SMALL: 1}
    for row in load(out, 4).rows:
        masks = [np.asarray(Image.open(i.mask)) >= 128 for i in row.instances]
        assert masks[0].shape == (64, 64) and np.sum(masks, 0).max() == 1  # still disjoint


class FixedSegmenter:
    """A segmenter whose answer the test sets: one small square for every word."""

    def probabilities(self, image, words):
        maps = np.zeros((len(words), 32, 32), np.float32)
        maps[:, 10:13, 10:13] = 0.9
        return maps


class FixedCaptioner:
    def __init__(self, text):
        self.text = text

    def caption(self, image):
        return self.text


def test_small_masks_and_captions_without_subjects_are_dropped_with_their_reason(pictures, tmp_path):
    small = PrepareConfig(("dog",), mask_threshold=0.5, min_area=0.05, min_side=32, work_side=64)
    report = prepare(pictures, tmp_path / "small", small, FixedSegmenter(), FixedCaptioner("a dog"), log=lambda m: None)
    assert report.dropped[MASK_TOO_SMALL] == 4 and report.written == 0
    assert "under --min-area 0.05" in next(
        d["detail"] for d in report.dropped_pictures if d["reason"] == MASK_TOO_SMALL
    )

    config = PrepareConfig(SUBJECTS, subjects_from_caption=True, **KEEP)
    report = prepare(
        pictures, tmp_path / "cats", config, FixedSegmenter(), FixedCaptioner("a cat on a mat"), log=lambda m: None
    )
    assert report.dropped[NO_SUBJECT_IN_CAPTION] == 4

    # a plural in the caption names its subject; only the named words are prompted
    report = prepare(
        pictures, tmp_path / "dogs", config, FixedSegmenter(), FixedCaptioner("two dogs play"), log=lambda m: None
    )
    assert report.written == 4
    rows = [json.loads(line) for line in (tmp_path / "dogs" / MANIFEST).read_text().splitlines()]
    assert {i["label"] for r in rows for i in r["instances"]} == {"dog"}
    load(tmp_path / "dogs", 4)


class FailingCaptioner:
    """The tiny captioner, failing at its `fail_at`-th call (a crash in the middle of a run)."""

    def __init__(self, inner, fail_at):
        self.inner, self.calls, self.fail_at = inner, 0, fail_at

    def caption(self, image):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("out of memory (simulated)")
        return self.inner.caption(image)


def test_an_interrupted_run_leaves_a_valid_manifest_and_the_next_run_finishes(models, pictures, tmp_path, monkeypatch):
    _, _, segmenter, captioner = models
    out = tmp_path / "out"
    config = PrepareConfig(SUBJECTS, **KEEP)
    with pytest.raises(RuntimeError, match="simulated"):  # pictures sort as 0005-000000..3, broken, tiny
        prepare(pictures, out, config, segmenter, FailingCaptioner(captioner, fail_at=3), log=lambda m: None)
    report = json.loads((out / REPORT).read_text())
    assert report["interrupted"] == "RuntimeError: out of memory (simulated)" and report["written"] == 2
    load(out, 2)

    # a crash between a row's files: the picture is written, its mask is not -> no row, no temp file
    real_save, saves = prepare_module._save_png, []

    def failing_save(image, path):
        saves.append(path)
        if len(saves) == 2:
            raise OSError("disk error (simulated)")
        real_save(image, path)

    monkeypatch.setattr(prepare_module, "_save_png", failing_save)
    with pytest.raises(OSError, match="simulated"):
        prepare(pictures, out, config, segmenter, captioner, log=lambda m: None)
    monkeypatch.undo()
    load(out, 2)
    assert no_temp_files(out)

    # a killed process's cut last line and its temp file: removed at the next start
    with open(out / MANIFEST, "ab") as f:
        f.write(b'{"id": "cut", "image": "ima')
    with open(out / DROPPED, "ab") as f:
        f.write(b'{"source": "broken.p')
    (out / "masks" / ".x.png.tmp-0123456789ab").write_bytes(b"half")
    report = prepare(pictures, out, config, segmenter, captioner, log=lambda m: None)
    assert report.repaired_manifest and report.written == 2 and report.already_written == 2 and report.rows == 4
    dataset = load(out, 4)
    assert len({row.id for row in dataset.rows}) == 4 and no_temp_files(out)
    drops = [json.loads(line) for line in (out / DROPPED).read_text().splitlines()]  # the cut line is gone
    assert sorted(d["source"] for d in drops) == ["broken.png", "tiny.png"]


def test_bad_settings_and_folders_are_refused_with_a_message(models, pictures, tmp_path):
    _, _, segmenter, captioner = models
    with pytest.raises(ValueError, match="--mask-threshold"):
        prepare(pictures, tmp_path / "a", PrepareConfig(SUBJECTS, mask_threshold=1.5), segmenter, captioner)
    with pytest.raises(ValueError, match="subject word"):
        prepare(pictures, tmp_path / "a", PrepareConfig(("dog", " ")), segmenter, captioner)
    with pytest.raises(ValueError, match="not a folder"):
        prepare(tmp_path / "missing", tmp_path / "a", PrepareConfig(SUBJECTS), segmenter, captioner)
    other = generate(tmp_path / "other", SyntheticConfig(scenes=1, size=32, seed=1))  # a dataset prepare did not write
    with pytest.raises(ValueError, match="prepare did not write"):
        prepare(pictures, other, PrepareConfig(SUBJECTS, **KEEP), segmenter, captioner)
    with pytest.raises(ValueError, match="must be a CLIPSeg model"):
        Segmenter.from_pretrained(str(models[1]), local_files_only=True)


def test_the_command_names_the_model_that_does_not_load(models, pictures, tmp_path, capsys):
    seg, cap, _, _ = models
    argv = [str(pictures), str(tmp_path / "out"), "--subjects", "dog", "--local-files-only"]
    assert main([*argv, "--segmenter", str(cap), "--captioner", str(cap)]) == 2
    assert "the segmenter" in capsys.readouterr().err
    assert main([*argv, "--segmenter", str(seg), "--captioner", str(tmp_path / "missing")]) == 2
    assert f"the captioner {str(tmp_path / 'missing')!r} does not load" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing"), str(tmp_path / "out"), "--subjects", "dog"]) == 2  # before any model loads
    assert "not a folder of pictures" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_output_folder_inside_the_pictures_folder_is_not_read_as_pictures(pictures):
    config = PrepareConfig(("dog",), mask_threshold=0.5, min_area=0.0, min_side=32, work_side=64)
    out = pictures / "prepared"
    first = prepare(pictures, out, config, FixedSegmenter(), FixedCaptioner("a dog"), log=lambda m: None)
    again = prepare(pictures, out, config, FixedSegmenter(), FixedCaptioner("a dog"), log=lambda m: None)
    assert first.pictures == again.pictures == 6 and first.written == 4 and again.written == 0
    rows = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [r["source"] for r in rows] == [f"0005-00000{i}.png" for i in range(4)]
    assert all(0.5 <= r["instances"][0]["score"] <= 0.9 for r in rows)  # the fixed 0.9 square, blurred by scaling
    load(out, 4)


@pytest.mark.slow
def test_stage_1_trains_on_a_prepared_folder(models, pictures, tiny_folder, tmp_path):
    _, _, segmenter, captioner = models
    out = tmp_path / "prepared"
    report = prepare(pictures, out, PrepareConfig(SUBJECTS, **KEEP), segmenter, captioner, log=lambda m: None)
    assert report.written == 4
    values = {"base": str(tiny_folder), "data": str(out), "output_dir": str(tmp_path / "run"), "resolution": 64,
              "max_steps": 2, "log_every": 1, "report_to": "none", "progress_bar": False,
              "validate": "full"}  # fmt: skip
    Trainer(load_config(None, 1, values)).run()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "logs/train.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
