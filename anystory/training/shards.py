"""Training data in tar shards (WebDataset layout), for datasets too large for one folder.

    python -m anystory.training.shards DATASET_FOLDER OUT_FOLDER [--rows-per-shard 1000]

A shard folder holds `shard-000000.tar`, `shard-000001.tar`, ... and `shards.json` (the shards,
their row counts, written last: a folder without it is not a finished conversion). Each row is a
group of tar members sharing the key `<row number, 9 digits>`, WebDataset's convention:

    000000042.json                the manifest row, its file fields naming members of this group
    000000042.image.png           the target
    000000042.0.mask.png          instance 0's mask
    000000042.0.ref0.png          instance 0's reference 0 (and .ref0.mask.png, its mask)

The row semantics are manifest.jsonl's exactly (data.py): a `ShardDataset` gives, for the same
(row, draw seed), the same sample as a `ManifestDataset` of the folder it was converted from
(tested), so the seeded data stream, its sharding across processes and resuming all hold. Pick a
shard folder as `data` in a training config and the trainer reads it. The dataset keeps only the
offsets of every member (the tar headers, read once at start); pictures are read from the shards
when a sample is drawn, so millions of rows need neither one folder nor the memory for them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_path
from .data import MANIFEST, AugmentConfig, DatasetError, Instance, ManifestDataset, Reference, Row, read_manifest

SHARD_INDEX = "shards.json"
FORMAT = "anystory-shards/1"


def is_shard_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / SHARD_INDEX).is_file()


# -- writing -------------------------------------------------------------------------------------


def _row_members(row: Row, key: str) -> tuple[dict, list[tuple[str, Path]]]:
    """The row as JSON naming its members, and (member name, source file) of each file."""
    files: list[tuple[str, Path]] = []

    def member(name: str, path: Path) -> str:
        suffix = path.suffix.lower() or ".bin"
        files.append((f"{key}.{name}{suffix}", path))
        return files[-1][0]

    data = {"id": row.id, "caption": row.caption, "image": member("image", row.image), "instances": []}
    for i, instance in enumerate(row.instances):
        item = {"mask": member(f"{i}.mask", instance.mask), "references": []}
        for j, ref in enumerate(instance.references):
            if ref.image == row.image and ref.mask == instance.mask:  # self-reference (unpaired data)
                item.pop("references")
                break
            entry = {"image": member(f"{i}.ref{j}", ref.image)}
            if ref.mask is not None:
                entry["mask"] = member(f"{i}.ref{j}.mask", ref.mask)
            item["references"].append(entry)
        data["instances"].append(item)
    return data, files


def write_shards(folder: str | os.PathLike, out: str | os.PathLike, rows_per_shard: int = 1000,
                 manifest: str = MANIFEST) -> Path:  # fmt: skip
    """Convert a dataset folder (checked as training would: files and sizes) into shards in `out`.
    Each shard is written to a temporary name and renamed; `shards.json` comes last."""
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be >= 1")
    rows = read_manifest(folder, manifest, check="files")
    out = Path(out)
    if is_shard_folder(out):
        raise FileExistsError(f"{out} already holds shards ({SHARD_INDEX}); choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for first in range(0, len(rows), rows_per_shard):
        name = f"shard-{len(shards):06d}.tar"
        chunk = rows[first : first + rows_per_shard]
        with atomic_path(out / name) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for number, row in enumerate(chunk, start=first):
                key = f"{number:09d}"
                data, files = _row_members(row, key)
                payload = json.dumps(data).encode()
                info = tarfile.TarInfo(f"{key}.json")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                for member, path in files:
                    tar.add(path, arcname=member, recursive=False)
        shards.append({"file": name, "rows": len(chunk)})
    index = {"format": FORMAT, "rows": len(rows), "shards": shards, "source": str(Path(folder).resolve())}
    with atomic_path(out / SHARD_INDEX) as tmp:
        Path(tmp).write_text(json.dumps(index, indent=1))
    return out


# -- reading -------------------------------------------------------------------------------------


class MemberFile(io.BytesIO):
    """A tar member's bytes, named for error messages (`shard-000003.tar:000004242.image.png`)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__


@dataclass
class _Member:
    offset: int
    size: int


class ShardDataset(ManifestDataset):
    """A shard folder as training samples, with ManifestDataset's keys and samples."""

    def __init__(self, folder: str | os.PathLike, clip_processor, resolution: int, reference_size: int,
                 augment: AugmentConfig | None = None, max_instances: int | None = None, **_ignored):  # fmt: skip
        self.folder = Path(folder)
        index_path = self.folder / SHARD_INDEX
        try:
            index = json.loads(index_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(f"{index_path}: not a shard index ({err})") from err
        if index.get("format") != FORMAT:
            raise DatasetError(f"{index_path}: format {index.get('format')!r}, expected {FORMAT!r}")
        self.manifest_path = index_path
        self.clip_processor = clip_processor
        self.resolution, self.reference_size = resolution, reference_size
        self.augment = augment or AugmentConfig(enabled=False, clip_drop=0.0)
        self.max_instances = max_instances
        self._rows: list[tuple[str, str]] = []  # (shard file, key) per row
        self._members: dict[str, dict[str, _Member]] = {}
        for shard in index["shards"]:
            members = self._scan(shard["file"])
            keys = sorted(name[: -len(".json")] for name in members if name.endswith(".json"))
            if len(keys) != shard["rows"]:
                raise DatasetError(f"{self.folder / shard['file']}: {len(keys)} rows, the index says {shard['rows']}")
            self._rows += [(shard["file"], key) for key in keys]
        if not self._rows:
            raise DatasetError(f"{index_path}: the dataset is empty (no rows)")

    def _scan(self, name: str) -> dict[str, _Member]:
        path = self.folder / name
        try:
            with tarfile.open(path, "r:") as tar:
                members = {m.name: _Member(m.offset_data, m.size) for m in tar if m.isfile()}
        except (OSError, tarfile.TarError) as err:
            raise DatasetError(f"{path}: not a readable shard ({err})") from err
        self._members[name] = members
        return members

    def __len__(self) -> int:
        return len(self._rows)

    def _read(self, shard: str, member: str) -> bytes:
        found = self._members[shard].get(member)
        if found is None:
            raise DatasetError(f"{self.folder / shard}: no member {member!r}")
        with open(self.folder / shard, "rb") as f:
            f.seek(found.offset)
            data = f.read(found.size)
        if len(data) != found.size:
            raise DatasetError(f"{self.folder / shard}: {member} is cut short (the shard is truncated)")
        return data

    def row(self, index: int) -> Row:
        shard, key = self._rows[index]
        data = json.loads(self._read(shard, f"{key}.json"))
        where = f"{self.folder / shard}:{key}"
        file = lambda member: MemberFile(self._read(shard, member), f"{shard}:{member}")  # noqa: E731
        image = data["image"]
        instances = []
        for instance in data["instances"]:
            if "references" in instance:
                refs = [
                    Reference(file(r["image"]), file(r["mask"]) if r.get("mask") else None)
                    for r in instance["references"]
                ]
            else:  # the instance's own crop of the target
                refs = [Reference(file(image), file(instance["mask"]))]
            instances.append(Instance(file(instance["mask"]), refs))
        if self.max_instances is not None and len(instances) > self.max_instances:
            raise DatasetError(f"{where}: {len(instances)} instances; the model takes at most {self.max_instances}")
        return Row(int(key), str(data.get("id", key)), file(image), data.get("caption", ""), instances)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anystory.training.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a dataset folder with manifest.jsonl")
    parser.add_argument("out", help="the shard folder to write")
    parser.add_argument("--rows-per-shard", type=int, default=1000)
    parser.add_argument("--manifest", default=MANIFEST)
    args = parser.parse_args(argv)
    try:
        out = write_shards(args.folder, args.out, args.rows_per_shard, args.manifest)
    except (DatasetError, FileExistsError, ValueError) as err:
        print(f"error: {err}")
        return 2
    index = json.loads((out / SHARD_INDEX).read_text())
    print(f"{index['rows']} rows in {len(index['shards'])} shards: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
