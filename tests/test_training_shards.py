"""Tar shards (issue 21): a dataset folder converted to shards gives the same samples, row for
row and draw for draw, and the same training run; bad shards are named."""

import json

import pytest
import torch

from anystory.training.config import load_config
from anystory.training.data import AugmentConfig, DatasetError, ManifestDataset
from anystory.training.shards import SHARD_INDEX, ShardDataset, main, write_shards
from anystory.training.synthetic import SyntheticConfig, generate
from anystory.training.trainer import Trainer

pytestmark = [pytest.mark.training, pytest.mark.slow]

RESOLUTION = 64


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    paired = generate(root / "paired", SyntheticConfig(scenes=6, size=RESOLUTION, reference_size=48, seed=3))
    unpaired = generate(root / "unpaired", SyntheticConfig(scenes=3, size=RESOLUTION, seed=4, self_reference=True))
    return root, paired, unpaired


def same_sample(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif key != "row":  # where: a manifest line, or a shard and key
            assert a[key] == b[key], key


@pytest.mark.parametrize("which", ["paired", "unpaired"])
def test_shards_round_trip_row_for_row(folders, pipe, which):
    root, paired, unpaired = folders
    source = paired if which == "paired" else unpaired
    out = write_shards(source, root / f"{which}-shards", rows_per_shard=4)
    index = json.loads((out / SHARD_INDEX).read_text())
    rows = 6 if which == "paired" else 3
    assert index["rows"] == rows and [s["rows"] for s in index["shards"]] == ([4, 2] if rows == 6 else [3])
    augment = AugmentConfig(clip_drop=0.5)
    folder = ManifestDataset(source, pipe.feature_extractor, RESOLUTION, 64, augment=augment)
    shards = ShardDataset(out, pipe.feature_extractor, RESOLUTION, 64, augment=augment)
    assert len(shards) == len(folder) == rows
    for index_ in range(rows):
        for draw in (1, 7):
            same_sample(folder[(index_, draw)], shards[(index_, draw)])
        assert shards.row(index_).id == folder.row(index_).id
    with pytest.raises(FileExistsError, match="already holds shards"):
        write_shards(source, out)


def test_training_on_shards_is_training_on_the_folder(folders, tiny_folder, tmp_path):
    root, paired, _ = folders
    shards = write_shards(paired, tmp_path / "shards", rows_per_shard=2)
    logs = []
    for name, data in (("folder", paired), ("shards", shards)):
        values = {"base": str(tiny_folder), "data": str(data), "output_dir": str(tmp_path / name),
                  "resolution": RESOLUTION, "max_steps": 2, "log_every": 1, "report_to": "none",
                  "progress_bar": False}  # fmt: skip
        trainer = Trainer(load_config(None, 1, values))
        assert isinstance(trainer.dataset, ShardDataset) == (name == "shards")
        trainer.run()
        logs.append(
            [json.loads(line)["loss"] for line in (tmp_path / name / "logs/train.jsonl").read_text().splitlines()]
        )
    assert logs[0] == logs[1]


@pytest.mark.hostile
def test_a_cut_or_mislabelled_shard_is_named(folders, pipe, tmp_path, capsys):
    root, paired, _ = folders
    out = write_shards(paired, tmp_path / "shards", rows_per_shard=3)
    shard = out / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:2000])
    with pytest.raises(DatasetError, match="shard-000001.tar"):
        ShardDataset(out, pipe.feature_extractor, RESOLUTION, 64)[(4, 1)]
    (out / SHARD_INDEX).write_text("{}")
    with pytest.raises(DatasetError, match="format None"):
        ShardDataset(out, pipe.feature_extractor, RESOLUTION, 64)
    assert main([str(paired), str(tmp_path / "cli"), "--rows-per-shard", "5"]) == 0
    assert "6 rows in 2 shards" in capsys.readouterr().out
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "cli2")]) == 2
    assert "no manifest" in capsys.readouterr().out
