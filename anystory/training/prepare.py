"""Prepare a training dataset from a folder of pictures: instance masks and captions from models.

    python -m anystory.training.prepare PICTURES OUT --subjects "person,dog" \
        --segmenter CIDAS/clipseg-rd64-refined --captioner Salesforce/blip-image-captioning-base

For every picture under PICTURES (recursively, sorted by path): a caption from the captioner,
one probability map per subject word from the segmenter (CLIPSeg), instance masks from those
(instances.py), and a row of OUT/manifest.jsonl in the dataset format of data.py:

    images/<id>.png, masks/<id>-<i>.png, references/<id>-<i>.png (+ -mask.png)

References are the instance's own crop of the picture (self-references: a single picture has no
other view of its subject; see docs/TRAINING.md "Preparing real data").

Resumable and transactional: every file is written under a temporary name and renamed; the
manifest row is appended last, in one write, so an interrupted run leaves no half row (a cut last
line from a killed process is removed at the next start). A re-run skips pictures already written
and, unless --retry-dropped, pictures dropped before (OUT/dropped.jsonl: source, reason, detail).
Each run prints its report and writes it to OUT/prepare-report.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..files import atomic_path, is_temp_name, write_atomic
from .data import MANIFEST
from .instances import MODES, find_instances

DROPPED = "dropped.jsonl"
REPORT = "prepare-report.json"
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
REFERENCE_MARGIN = 0.1  # of the instance's side, around its square crop

# Why a picture gives no row (keys of the report's "dropped").
UNREADABLE = "unreadable picture"
TOO_SMALL = "picture too small"
NO_SUBJECT_IN_CAPTION = "no subject word in the caption"
NO_INSTANCE = "no instance found"
MASK_TOO_SMALL = "mask too small"


@dataclass
class PrepareConfig:
    subjects: tuple[str, ...]  # the words the segmenter is prompted with
    subjects_from_caption: bool = False  # prompt only the subjects the caption names
    mask_threshold: float = 0.5  # a pixel is a subject's where its probability is >= this
    min_area: float = 0.02  # least instance area, as a fraction of the picture
    mode: str = "components"  # an instance per connected component, or per word ("words")
    max_instances: int = 4  # the largest are kept (AnyStory's max_subjects is 4)
    min_side: int = 512  # pictures with a shorter side are dropped
    max_side: int = 2048  # larger pictures are scaled down to this longer side (0: never)
    work_side: int = 512  # masks are found at this longer side, then scaled to the picture
    references: str = "crop"  # "crop": write each instance's crop; "none": leave references out
    retry_dropped: bool = False

    def check(self) -> None:
        if not self.subjects or any(not s.strip() for s in self.subjects):
            raise ValueError('give at least one subject word (--subjects "person,dog"), none empty')
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise ValueError(f"--mask-threshold must be in [0, 1], got {self.mask_threshold}")
        if not 0.0 <= self.min_area < 1.0:
            raise ValueError(f"--min-area must be in [0, 1), got {self.min_area}")
        if self.mode not in MODES:
            raise ValueError(f"--instances must be one of {MODES}, got {self.mode!r}")
        if self.references not in ("crop", "none"):
            raise ValueError(f"--references must be 'crop' or 'none', got {self.references!r}")
        if self.max_instances < 1 or self.min_side < 1 or self.work_side < 8 or self.max_side < 0:
            raise ValueError("--max-instances and --min-side must be >= 1, --work-side >= 8, --max-side >= 0")


@dataclass
class Report:
    pictures: int = 0  # found under PICTURES
    written: int = 0  # rows written by this run
    instances: int = 0  # instances in those rows
    already_written: int = 0  # skipped: a row from an earlier run
    dropped_before: int = 0  # skipped: dropped by an earlier run (see --retry-dropped)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> pictures, this run
    dropped_pictures: list[dict] = field(default_factory=list)  # {source, reason, detail}, this run
    instances_too_small: int = 0  # instances left out for --min-area in written rows
    instances_cut: int = 0  # instances left out for --max-instances
    rows: int = 0  # rows in the manifest after this run
    repaired_manifest: bool = False  # a cut last line (killed run) was removed
    interrupted: str | None = None  # the error that stopped the run, if one did
    settings: dict = field(default_factory=dict)


class Dropped(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# -- the output folder ---------------------------------------------------------------------------


def cut_partial_line(path: Path) -> bool:
    """Remove a cut last line (a process killed in its write); True if there was one."""
    if not path.is_file():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data[: data.rfind(b"\n") + 1])
    return True


def read_done(out: Path) -> tuple[set[str], dict[str, dict], int, bool]:
    """Sources with a row, the last drop of every source, the row count, and whether a cut last
    manifest line was removed (it is redone). Refuses a manifest that prepare did not write."""
    path = out / MANIFEST
    repaired = cut_partial_line(path)
    cut_partial_line(out / DROPPED)
    written: set[str] = set()
    rows = 0
    if path.is_file():
        for line, text in enumerate(path.read_text().splitlines(), start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line}: not valid JSON ({err}); fix or remove that line") from err
            if not isinstance(row, dict) or "source" not in row:
                raise ValueError(f"{path}:{line}: a row without 'source': {out} holds a dataset prepare did not write")
            written.add(row["source"])
            rows += 1
    dropped: dict[str, dict] = {}
    if (out / DROPPED).is_file():
        for text in (out / DROPPED).read_text().splitlines():
            try:
                entry = json.loads(text)
                dropped[entry["source"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # not one of ours: that picture is simply tried again
    return written, dropped, rows, repaired


def remove_temp_files(out: Path) -> None:
    """Temporary files a killed run left in the folders prepare writes (a finished write renames its file)."""
    for folder in (out, out / "images", out / "masks", out / "references"):
        if folder.is_dir():
            for path in folder.iterdir():
                if is_temp_name(path.name) and path.is_file():
                    path.unlink(missing_ok=True)


def append_line(path: Path, record: dict) -> None:
    """One whole line appended in a single write, flushed to disk (a short write is an error; the
    cut line it leaves is removed at the next start)."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(f"{path}: a short write (is the disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)


def find_pictures(folder: Path, out: Path) -> list[Path]:
    """Pictures under `folder` by suffix, sorted; OUT is skipped when it lies inside."""
    out = out.resolve()
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in PICTURE_SUFFIXES and path.is_file() and out not in path.resolve().parents:
            found.append(path)
    return found


def row_id(source: str) -> str:
    """A file-safe, stable id: the stem and a hash of the relative path (a.jpg and a.png differ)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(source).stem)[:40] or "picture"
    return f"{stem}-{hashlib.sha1(source.encode()).hexdigest()[:10]}"


# -- one picture ---------------------------------------------------------------------------------


def load_picture(path: Path, config: PrepareConfig) -> Image.Image:
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
            rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise Dropped(UNREADABLE, f"{err}") from err
    if min(rgb.size) < config.min_side:
        raise Dropped(TOO_SMALL, f"{rgb.width}x{rgb.height}, the shorter side is under --min-side {config.min_side}")
    if config.max_side and max(rgb.size) > config.max_side:
        scale = config.max_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.LANCZOS)
    return rgb


def mentioned(caption: str, words: tuple[str, ...]) -> list[str]:
    """The subject words the caption names (whole words; a plural 's' or 'es' counts)."""
    text = caption.lower()
    return [w for w in words if re.search(rf"\b{re.escape(w.lower())}(s|es)?\b", text)]


def _scaled(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[K, h, w] -> [K, size[1], size[0]], bilinear."""
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    return torch.nn.functional.interpolate(tensor, size=(size[1], size[0]), mode="bilinear", align_corners=False)[
        0
    ].numpy()


def _resized(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask scaled to `size` (width, height), bilinear: uint8 0..255."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255, "L").resize(size, Image.BILINEAR))


def _reference_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """A square around the mask with a margin, clipped to the picture."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(bottom - top, right - left) * (1 + 2 * REFERENCE_MARGIN)
    cy, cx = (top + bottom) / 2, (left + right) / 2
    h, w = mask.shape
    box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    return max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def prepare_picture(
    path: Path, source: str, out: Path, config: PrepareConfig, segmenter, captioner, report: Report
) -> dict:
    """Write one picture's files and return its manifest row (not yet appended)."""
    image = load_picture(path, config)
    caption = captioner.caption(image)
    words = list(config.subjects)
    if config.subjects_from_caption:
        words = mentioned(caption, config.subjects)
        if not words:
            raise Dropped(NO_SUBJECT_IN_CAPTION, f"caption {caption!r} names none of {list(config.subjects)}")
    scale = min(1.0, config.work_side / max(image.size))
    work = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    probabilities = _scaled(segmenter.probabilities(image, words), work)
    found = find_instances(probabilities, config.mask_threshold, config.min_area, config.max_instances, config.mode)
    if not found.candidates:
        raise Dropped(NO_INSTANCE, f"no pixel reaches --mask-threshold {config.mask_threshold} for {words}")
    masks = []
    if found.kept:  # scale each mask smoothly to the picture, then give each pixel to the strongest: still disjoint
        soft = np.stack([_resized(instance.mask, image.size) for instance in found.kept])
        owner, strong = soft.argmax(0), soft.max(0) >= 128
        for k, instance in enumerate(found.kept):
            binary = strong & (owner == k)
            if binary.any():
                masks.append((instance, binary))
    if not masks:
        raise Dropped(
            MASK_TOO_SMALL,
            f"the largest instance covers {found.largest:.4f} of the picture, under --min-area {config.min_area}",
        )

    name = row_id(source)
    row = {"id": name, "image": f"images/{name}.png", "caption": caption, "source": source, "instances": []}
    _save_png(image, out / row["image"])
    for i, (instance, binary) in enumerate(masks):
        entry = {"mask": f"masks/{name}-{i}.png", "label": words[instance.word], "score": round(instance.score, 4)}
        mask_image = Image.fromarray(binary.astype(np.uint8) * 255, "L")
        _save_png(mask_image, out / entry["mask"])
        if config.references == "crop":
            box = _reference_box(binary)
            ref = {"image": f"references/{name}-{i}.png", "mask": f"references/{name}-{i}-mask.png"}
            _save_png(image.crop(box), out / ref["image"])
            _save_png(mask_image.crop(box), out / ref["mask"])
            entry["references"] = [ref]
        row["instances"].append(entry)
    report.instances_too_small += found.too_small
    report.instances_cut += found.cut
    return row


# -- the run -------------------------------------------------------------------------------------


def prepare(pictures: str | Path, out: str | Path, config: PrepareConfig, segmenter, captioner, log=print) -> Report:
    """Prepare every picture of `pictures` not done yet into the dataset folder `out`."""
    config.check()
    pictures, out = Path(pictures), Path(out)
    if not pictures.is_dir():
        raise ValueError(f"{pictures}: not a folder of pictures")
    out.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out)
    written, dropped_before, rows, repaired = read_done(out)
    report = Report(repaired_manifest=repaired, settings=asdict(config))
    found = find_pictures(pictures, out)
    report.pictures = len(found)
    reasons: Counter[str] = Counter()
    try:
        for n, path in enumerate(found, start=1):
            source = path.relative_to(pictures).as_posix()
            if source in written:
                report.already_written += 1
                continue
            if source in dropped_before and not config.retry_dropped:
                report.dropped_before += 1
                continue
            try:
                row = prepare_picture(path, source, out, config, segmenter, captioner, report)
            except Dropped as drop:
                entry = {"source": source, "reason": drop.reason, "detail": drop.detail}
                append_line(out / DROPPED, entry)
                report.dropped_pictures.append(entry)
                reasons[drop.reason] += 1
                log(f"[{n}/{len(found)}] dropped {source}: {drop}")
                continue
            append_line(out / MANIFEST, row)  # last: the row exists only with all its files
            written.add(source)
            rows += 1
            report.written += 1
            report.instances += len(row["instances"])
            log(f"[{n}/{len(found)}] {source}: {len(row['instances'])} instances, {row['caption']!r}")
    except BaseException as err:
        report.interrupted = f"{type(err).__name__}: {err}"
        raise
    finally:
        report.dropped = dict(reasons)
        report.rows = rows
        write_atomic(out / REPORT, (json.dumps(asdict(report), indent=1) + "\n").encode())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anystory.training.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("pictures", help="a folder of pictures (searched recursively)")
    parser.add_argument("out", help="the dataset folder to write (or to continue)")
    parser.add_argument("--subjects", required=True, help='comma-separated words the segmenter looks for: "person,dog"')
    parser.add_argument(
        "--subjects-from-caption", action="store_true", help="prompt only the subjects the caption names"
    )
    parser.add_argument("--segmenter", default="CIDAS/clipseg-rd64-refined", help="a CLIPSeg hub id or folder")
    parser.add_argument(
        "--captioner", default="Salesforce/blip-image-captioning-base", help="an image-to-text hub id or folder"
    )
    parser.add_argument("--caption-prompt", default="", help='a text prefix for the captioner (BLIP: "a picture of")')
    parser.add_argument("--caption-tokens", type=int, default=40, help="most new tokens of a caption")
    parser.add_argument("--mask-threshold", type=float, default=0.5)
    parser.add_argument("--min-area", type=float, default=0.02, help="least instance area, fraction of the picture")
    parser.add_argument(
        "--instances", choices=MODES, default="components", help="an instance per connected component or per word"
    )
    parser.add_argument("--max-instances", type=int, default=4)
    parser.add_argument("--min-side", type=int, default=512)
    parser.add_argument(
        "--max-side", type=int, default=2048, help="scale larger pictures down to this longer side (0: never)"
    )
    parser.add_argument("--work-side", type=int, default=512, help="longer side at which masks are found")
    parser.add_argument("--references", choices=("crop", "none"), default="crop")
    parser.add_argument("--retry-dropped", action="store_true", help="try the pictures an earlier run dropped again")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--local-files-only", action="store_true", help="never download (hub cache or folders only)")
    args = parser.parse_args(argv)
    config = PrepareConfig(
        subjects=tuple(s.strip() for s in args.subjects.split(",")), subjects_from_caption=args.subjects_from_caption,
        mask_threshold=args.mask_threshold, min_area=args.min_area, mode=args.instances,
        max_instances=args.max_instances, min_side=args.min_side, max_side=args.max_side, work_side=args.work_side,
        references=args.references, retry_dropped=args.retry_dropped,
    )  # fmt: skip
    from .prepare_models import Captioner, Segmenter

    try:
        config.check()  # bad settings and folders before the models load (minutes, for real ones)
        if not Path(args.pictures).is_dir():
            raise ValueError(f"{args.pictures}: not a folder of pictures")
        hub = {"local_files_only": True} if args.local_files_only else {}
        try:
            segmenter = Segmenter.from_pretrained(args.segmenter, args.device, args.dtype, **hub)
        except (ValueError, OSError) as err:
            raise ValueError(f"the segmenter {args.segmenter!r} does not load: {err}") from err
        try:
            captioner = Captioner.from_pretrained(
                args.captioner, args.device, args.dtype, args.caption_prompt, args.caption_tokens, **hub
            )
        except (ValueError, OSError) as err:
            raise ValueError(f"the captioner {args.captioner!r} does not load: {err}") from err
        log = lambda message: print(message, file=sys.stderr)
        report = prepare(args.pictures, args.out, config, segmenter, captioner, log=log)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(report), indent=1))
    dropped = sum(report.dropped.values())
    print(
        f"{report.written} rows written ({report.rows} in all), {dropped} dropped: {Path(args.out) / REPORT}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
