"""Training data: a folder with a JSONL manifest, loaded with the reference augmentations of METHOD.md §4.

One manifest row per target image (paths relative to the folder):

    {"id": "scene-000001",
     "image": "scenes/000001.png",
     "caption": "a red star and a blue ring",
     "instances": [
        {"mask": "scenes/000001-0.png",
         "references": [{"image": "refs/000001-0.png", "mask": "refs/000001-0-mask.png"}]},
        {"mask": "scenes/000001-1.png"}]}

- `mask`: the instance's mask in the target image (same size as it; 8-bit, >= 128 is inside).
- `references`: one or more pictures of the same subject, each with an optional mask (else its
  alpha channel, else the whole picture). Paired data (stage 1) gives pictures of the subject in
  another context; without `references` the instance's own crop of the target is its reference
  (unpaired multi-instance data, stage 2).

Every random choice of a sample (reference pick, augmentation, CLIP drop) is a function of the
seed and the sample's position in the training stream, so a resumed run draws what an
uninterrupted one would have.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..encoder import prepare_subject

MANIFEST = "manifest.jsonl"


class DatasetError(ValueError):
    """A manifest row is unusable; the message names the manifest line, the row id and the field."""


@dataclass
class Reference:
    image: Path
    mask: Path | None


@dataclass
class Instance:
    mask: Path
    references: list[Reference]


@dataclass
class Row:
    line: int
    id: str
    image: Path
    caption: str
    instances: list[Instance]

    def where(self, manifest: Path) -> str:
        return f"{manifest}:{self.line} (id {self.id!r})"


@dataclass
class AugmentConfig:
    """Reference augmentation (METHOD.md §4: rotation, crop, zero padding) and CLIP-condition drop."""

    enabled: bool = True
    rotation_prob: float = 0.5
    max_rotation: float = 20.0  # degrees
    crop_prob: float = 0.5
    min_crop: float = 0.8  # side of the random crop, as a fraction of the reference square
    pad_prob: float = 0.5
    max_pad: float = 0.25  # zero padding per side, as a fraction of the reference square
    clip_drop: float = 0.1  # samples whose subjects get the background (unconditional) CLIP tokens


# -- manifest ------------------------------------------------------------------------------------


def _image_size(path: Path, where: str, field: str) -> tuple[int, int]:
    if not path.is_file():
        raise DatasetError(f"{where}: {field}: file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as err:
        raise DatasetError(f"{where}: {field}: not a readable image: {path} ({err})") from err


def _parse_row(data: dict, line: int, folder: Path, where: str) -> Row:
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: a row must be a JSON object")
    for key in ("image", "instances"):
        if key not in data:
            raise DatasetError(f"{where}: the row has no {key!r}")
    instances = data["instances"]
    if not isinstance(instances, list) or not instances:
        raise DatasetError(f"{where}: the image has no instances (each row needs at least one instance mask)")
    image = folder / data["image"]
    parsed = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or "mask" not in instance:
            raise DatasetError(f"{where}: instances[{i}] has no 'mask'")
        references = instance.get("references")
        if references is None:  # unpaired data: the instance's own crop of the target
            refs = [Reference(image, folder / instance["mask"])]
        elif not isinstance(references, list) or not references:
            raise DatasetError(f"{where}: instances[{i}].references must be a non-empty list")
        else:
            refs = []
            for j, ref in enumerate(references):
                if not isinstance(ref, dict) or "image" not in ref:
                    raise DatasetError(f"{where}: instances[{i}].references[{j}] has no 'image'")
                refs.append(Reference(folder / ref["image"], folder / ref["mask"] if ref.get("mask") else None))
        parsed.append(Instance(folder / instance["mask"], refs))
    return Row(line, str(data.get("id", line)), image, str(data.get("caption", "")), parsed)


def _check_files(row: Row, where: str) -> None:
    """Every file exists and is an image; masks have their image's size (headers only)."""
    size = _image_size(row.image, where, "image")
    for i, instance in enumerate(row.instances):
        mask_size = _image_size(instance.mask, where, f"instances[{i}].mask")
        if mask_size != size:
            raise DatasetError(
                f"{where}: instances[{i}].mask is {mask_size[0]}x{mask_size[1]} but the image is {size[0]}x{size[1]}"
            )
        for j, ref in enumerate(instance.references):
            ref_size = _image_size(ref.image, where, f"instances[{i}].references[{j}].image")
            if ref.mask is not None:
                ref_mask = _image_size(ref.mask, where, f"instances[{i}].references[{j}].mask")
                if ref_mask != ref_size:
                    raise DatasetError(
                        f"{where}: instances[{i}].references[{j}].mask is {ref_mask[0]}x{ref_mask[1]} "
                        f"but its image is {ref_size[0]}x{ref_size[1]}"
                    )


def read_manifest(folder: str | Path, manifest: str = MANIFEST, check: str = "files", max_instances: int | None = None) -> list[Row]:
    """Parse and check a manifest. check: "files" (existence and sizes, from image headers),
    "full" (also decodes every mask: no empty instance), or "none"."""
    folder = Path(folder)
    path = folder / manifest
    if not path.is_file():
        raise DatasetError(f"{path}: no manifest (a dataset is a folder with {manifest}, one JSON object a line)")
    rows = []
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path}:{line}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{where}: not valid JSON: {err}") from err
        row = _parse_row(data, line, folder, f"{where} (id {data.get('id', line)!r})" if isinstance(data, dict) else where)
        where = row.where(path)
        if max_instances is not None and len(row.instances) > max_instances:
            raise DatasetError(f"{where}: {len(row.instances)} instances; the model takes at most {max_instances}")
        if check in ("files", "full"):
            _check_files(row, where)
        if check == "full":
            for i, instance in enumerate(row.instances):
                _load_mask(instance.mask, where, f"instances[{i}].mask")
        rows.append(row)
    if not rows:
        raise DatasetError(f"{path}: the dataset is empty (no rows)")
    return rows


def _load_mask(path: Path, where: str, field: str) -> np.ndarray:
    with Image.open(path) as image:
        values = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if not (values >= 0.5).any():
        raise DatasetError(f"{where}: {field} is empty (no pixel >= 128): {path}")
    return values


# -- augmentation --------------------------------------------------------------------------------


def augment_reference(image: Image.Image, mask: np.ndarray, rng: random.Random, config: AugmentConfig) -> tuple[Image.Image, np.ndarray]:
    """Rotation, crop and zero padding of a square reference crop (image and mask alike)."""
    size = image.size[0]
    mask_image = Image.fromarray((mask * 255).round().astype(np.uint8), "L")
    if rng.random() < config.rotation_prob:
        angle = rng.uniform(-config.max_rotation, config.max_rotation)
        image = image.rotate(angle, Image.BILINEAR, fillcolor=(0, 0, 0))
        mask_image = mask_image.rotate(angle, Image.BILINEAR, fillcolor=0)
    if rng.random() < config.crop_prob:
        side = max(1, round(size * rng.uniform(config.min_crop, 1.0)))
        x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
        box = (x0, y0, x0 + side, y0 + side)
        image = image.crop(box).resize((size, size), Image.BICUBIC)
        mask_image = mask_image.crop(box).resize((size, size), Image.BILINEAR)
    if rng.random() < config.pad_prob:
        pads = [round(size * rng.uniform(0, config.max_pad)) for _ in range(4)]  # left, top, right, bottom
        canvas = (size + pads[0] + pads[2], size + pads[1] + pads[3])
        padded, padded_mask = Image.new("RGB", canvas), Image.new("L", canvas)
        padded.paste(image, (pads[0], pads[1]))
        padded_mask.paste(mask_image, (pads[0], pads[1]))
        image = padded.resize((size, size), Image.BICUBIC)
        mask_image = padded_mask.resize((size, size), Image.BILINEAR)
    return image, np.asarray(mask_image, dtype=np.float32) / 255.0


# -- dataset -------------------------------------------------------------------------------------


def _square(image: Image.Image, size: int, resample) -> Image.Image:
    """Resize the shorter side to `size` and centre-crop a square."""
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), resample)
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _to_pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


class ManifestDataset(Dataset):
    """Rows of a manifest as training samples. Keys are (row index, draw seed) pairs (see
    `StreamBatchSampler`); a plain int key draws with seed 0.

    A sample is a dict: `pixels` [3, R, R] in [-1, 1], `masks` [N, R, R] (0/1), `caption`,
    `clip_pixels` [N, 3, c, c] (the CLIP processor's input), `reference_pixels` [N, 3, S, S]
    in [-1, 1], `reference_masks` [N, S, S], `drop_clip` (bool), `row` (for error messages),
    `index` (the row) and `draw` (the draw seed: the trainer seeds the sample's noise from it).
    """

    def __init__(
        self,
        folder: str | Path,
        clip_processor,
        resolution: int,
        reference_size: int,
        manifest: str = MANIFEST,
        augment: AugmentConfig | None = None,
        check: str = "files",
        max_instances: int | None = None,
    ):
        self.folder = Path(folder)
        self.manifest_path = self.folder / manifest
        self.rows = read_manifest(self.folder, manifest, check, max_instances)
        self.clip_processor = clip_processor
        self.resolution, self.reference_size = resolution, reference_size
        self.augment = augment or AugmentConfig(enabled=False, clip_drop=0.0)

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> Row:
        """Row `index`, its files openable by PIL (paths here; in-memory files in shards.py)."""
        return self.rows[index]

    def __getitem__(self, key) -> dict:
        index, draw = key if isinstance(key, tuple) else (key, 0)
        row = self.row(index)
        where = row.where(self.manifest_path)
        rng = random.Random(draw)
        try:
            return {**self._load(row, index, where, rng), "draw": draw}
        except DatasetError:
            raise
        except (OSError, ValueError) as err:
            raise DatasetError(f"{where}: {err}") from err

    def _load(self, row: Row, index: int, where: str, rng: random.Random) -> dict:
        with Image.open(row.image) as image:
            size = image.size
            pixels = _to_pixels(_square(image.convert("RGB"), self.resolution, Image.BICUBIC))
        masks = []
        for i, instance in enumerate(row.instances):
            values = _load_mask(instance.mask, where, f"instances[{i}].mask")
            if (values.shape[1], values.shape[0]) != size:
                raise DatasetError(f"{where}: instances[{i}].mask is not the size of the image")
            mask = _square(Image.fromarray((values * 255).astype(np.uint8), "L"), self.resolution, Image.BILINEAR)
            masks.append(torch.from_numpy((np.asarray(mask) >= 128).astype(np.float32)))

        clip_pixels, reference_pixels, reference_masks = [], [], []
        for i, instance in enumerate(row.instances):
            j = rng.randrange(len(instance.references))
            subject = self._reference(instance.references[j], rng, where, f"instances[{i}].references[{j}]")
            clip_pixels.append(self.clip_processor(images=subject.clip_image, return_tensors="pt").pixel_values[0])
            reference_pixels.append(_to_pixels(subject.reference_image))
            reference_masks.append(subject.mask)
        return {
            "pixels": pixels,
            "masks": torch.stack(masks),
            "caption": row.caption,
            "clip_pixels": torch.stack(clip_pixels),
            "reference_pixels": torch.stack(reference_pixels),
            "reference_masks": torch.stack(reference_masks),
            "drop_clip": self.augment.enabled and rng.random() < self.augment.clip_drop,
            "row": where,
            "index": index,
        }

    def _reference(self, ref: Reference, rng: random.Random, where: str, field: str):
        with Image.open(ref.image) as image:
            image = image.copy()
        mask = None
        if ref.mask is not None:
            mask = _load_mask(ref.mask, where, f"{field}.mask")
        try:
            square = prepare_subject(image, mask, self.reference_size, crop=True)
        except ValueError as err:
            raise DatasetError(f"{where}: {field}: {err}") from err
        if not self.augment.enabled:
            return prepare_subject(square.reference_image, square.mask.numpy(), self.reference_size, crop=False)
        augmented, augmented_mask = augment_reference(square.reference_image, square.mask.numpy(), rng, self.augment)
        if not (augmented_mask >= 0.5).any():  # the crop cut the subject away: keep the plain crop
            augmented, augmented_mask = square.reference_image, square.mask.numpy()
        return prepare_subject(augmented, augmented_mask, self.reference_size, crop=False)


def collate(samples: list[dict]) -> list[dict]:
    """Samples stay a list: each has its own number of subjects."""
    return samples


class StreamBatchSampler(Sampler):
    """An endless, seeded stream of (row index, draw seed) batches, shuffled per epoch.

    Stream position p belongs to epoch p // len and draws row perm_epoch[p % len]; its draw seed
    is `draw_seed(seed, p)`, so everything random about a sample (augmentation, noise, timestep,
    Gumbel noise) is a function of (seed, p), whichever process takes it. A global batch is
    `batch_size * world` consecutive positions; process `rank` takes the `batch_size` positions
    at offset rank * batch_size of each, so the processes of one epoch never see a position twice
    and together see what one process with a `world` times larger batch would. `start` is the
    stream position (samples of all processes) to begin at: a resumed run continues the stream
    exactly, with any number of processes.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not one of {world} processes")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.rank, self.world = start, rank, world
        self._perms: dict[int, list[int]] = {}

    def row(self, position: int) -> int:
        epoch = position // self.size
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch)).tolist()}
        return self._perms[epoch][position % self.size]

    def positions(self, batch: int) -> range:
        """The stream positions of this process's `batch`-th batch (counted from `start`)."""
        first = self.start + (batch * self.world + self.rank) * self.batch_size
        return range(first, first + self.batch_size)

    def __iter__(self):
        batch = 0
        while True:
            yield [(self.row(p), draw_seed(self.seed, p)) for p in self.positions(batch)]
            batch += 1

    def __len__(self) -> int:  # endless: the trainer stops by step count
        return 2**62


def draw_seed(seed: int, position: int) -> int:
    """A well-mixed 63-bit seed for stream position `position`."""
    return int(np.random.SeedSequence([seed, position]).generate_state(2, np.uint64)[0] >> np.uint64(1))
