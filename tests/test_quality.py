"""bench/quality.py end to end on the tiny offline models: every mode, every subject count, the
table and the CSV, and a second run resumes (makes nothing it already has)."""

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import quality  # noqa: E402


@pytest.mark.slow
def test_quality_harness_runs_every_mode_on_the_tiny_models(tmp_path, capsys):
    out = tmp_path / "q.csv"
    argv = ["--tiny", "--make-sample", str(tmp_path / "data"), "--limit", "2", "--out", str(out)]
    assert quality.main(argv) == 0
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(int(r["size"]), r["mode"]) for r in rows} == {(n, m) for n in (1, 2, 3) for m in quality.MODES}
    assert len(rows) == 4 * (2 + 2 + 1)  # --limit 2 per subject count; the sample has one 3-subject prompt
    for row in rows:
        for metric in ("clip_i", "dino", "clip_t"):
            assert -1 <= float(row[metric]) <= 1, (metric, row)
        assert 0 <= float(row["absent"]) <= 1
        if row["mode"] != "anystory":  # prompt / layout routes and the baseline's masks place everyone
            assert float(row["absent"]) == 0 and -1 <= float(row["region"]) <= 1
    table = capsys.readouterr().out
    assert "| 2 | ip-adapter | 2 |" in table and "| 3 | public-layout | 1 |" in table

    assert quality.main(argv) == 0  # resumed: everything is done already
    with out.open(newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
