"""Train the preview model: a small AnyStory, trained by this project's own code on the toy world.

    python -m anystory.training.preview_model --out work/preview-model --export assets/preview-model

The app's preview mode (no GPU) runs this model. It is made exactly as the CPU proof's model is
(proof.py), with the proof's base and longer stage 1 for identity:

1. The base: the proof's scenes and fitted tiny SDXL (`proof.prepare_base`, the same settings and so
   the same content-keyed cache entry: a finished proof run leaves it there and this command copies
   it; without one it is fitted, ~20-45 CPU-minutes).
2. The base UNet fitted further on whole scenes (`scene_fit_steps`; see the config).
3. Stage 1 (subject encoder) on the proof's paired scenes, each scene twice: with its caption ("a
   red stripes disc and a blue solid square") and with the shapes alone ("a disc and a square").
   The full caption names colour and texture, so a model trained on it alone learns to draw a
   seen identity from the words and can ignore the reference; without those words only the
   reference tells what the subject looks like, so identity must go through the encoder.
   Measured: the held-out diffusion loss (shape-only captions) with each subject's own reference
   against the same scenes with references of other subjects: the gap is what the reference adds.
4. Stage 2 (router) on the proof's two-subject scenes, as the proof trains it (t in [300, 800)).
5. Routing IoU on held-out scenes and on identities never trained on (evaluate.routing_iou).

Steps, data and seeds define the result; CPU time is reported, never a budget. `--export DIR`
writes the shipped files (fp16 safetensors where a generation shows no difference, see `export`):
`DIR/base` (a diffusers SDXL folder), `DIR/adapter` (an AnyStory checkpoint) and
`DIR/preview-model.json` (this command's config, its figures and the files' SHA-256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import write_atomic
from .data import MANIFEST, ManifestDataset
from .evaluate import DEFAULT_TIMESTEPS, diffusion_loss, routing_iou
from .proof import Clock, ProofConfig, _train_config, base_key, cpu_seconds, default_cache, prepare_base
from .tiny_base import fit_unet, load_images
from .trainer import Trainer

SHAPES_MANIFEST = "manifest-shapes.jsonl"  # the held-out scenes with shape-only captions
STAGE1_MANIFEST = "manifest-preview.jsonl"  # stage 1: every scene with both captions
REPORT_FILE = "preview-model.json"
COMMAND = "python -m anystory.training.preview_model --out work/preview-model --export assets/preview-model"


@dataclass
class PreviewModelConfig:
    """What the preview model is made from, besides the proof's base (`proof`)."""

    proof: ProofConfig = field(default_factory=ProofConfig)  # scenes and base: the proof's (same cache key)
    # The proof's base UNet is fitted on 64 px crops (what its router reads best) and cannot compose
    # a whole picture: from noise it draws texture everywhere, no background. A short fit on whole
    # 256 px scenes (1 a step) gives it the background and the sprites as wholes.
    scene_fit_steps: int = 1200
    stage1_steps: int = 1500
    stage1_lr: float = 5e-4
    stage1_shape_captions: bool = True  # stage 1 also sees each scene with shape-only captions
    stage2_steps: int = 4000
    stage2_lr: float = 1.5e-3
    stage2_timesteps: tuple[int, int] = (300, 800)
    routing_weight: float = 0.1
    eval_scenes: int = 24  # held-out scenes for the stage-1 losses and the routing IoU
    seed: int = 0

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples as lists: as the JSON file holds it


def shape_caption(caption: str) -> str:
    """ "a red stripes disc and a blue solid square" -> "a disc and a square" (the synthetic captions'
    last word of each part is the shape)."""
    return " and ".join(f"a {part.split()[-1]}" for part in caption.split(" and ") if part.split())


def write_manifest(folder: Path, name: str, both: bool) -> None:
    """A manifest next to `folder`'s own: shape-only captions (`both`: each row with its caption, then
    again with the shapes alone)."""
    rows = [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines() if line.strip()]
    out = []
    for row in rows:
        if both:
            out.append(row)
        out.append({**row, "id": f"{row['id']}-shapes", "caption": shape_caption(row["caption"])})
    write_atomic(folder / name, "".join(json.dumps(r) + "\n" for r in out).encode())


def with_other_references(dataset: ManifestDataset) -> ManifestDataset:
    """The same scenes, each instance given the references of the next scene's instance (another
    identity, mostly): the loss of a subject drawn from the wrong picture."""
    other = ManifestDataset.__new__(ManifestDataset)
    other.__dict__.update(dataset.__dict__)
    rows = dataset.rows
    other.rows = []
    for i, row in enumerate(rows):
        donor = rows[(i + 1) % len(rows)]
        instances = [
            type(inst)(inst.mask, donor.instances[j % len(donor.instances)].references)
            for j, inst in enumerate(row.instances)
        ]
        other.rows.append(type(row)(row.line, row.id, row.image, row.caption, instances))
    return other


def reference_losses(pipe, dataset: ManifestDataset, seed: int, max_scenes: int) -> dict:
    """Held-out stage-1 loss with each subject's own reference and with another subject's."""
    own = diffusion_loss(pipe, dataset, 1, seed=seed, max_scenes=max_scenes)
    other = diffusion_loss(pipe, with_other_references(dataset), 1, seed=seed, max_scenes=max_scenes)
    return {"own_reference": own, "other_reference": other, "gap": other - own}


def train(config: PreviewModelConfig, out: Path, cache: Path | None) -> dict:
    """Base, stage 1, stage 2 and their figures in `out`; returns the report (also out/preview-model.json)."""
    clock = Clock()
    proof = config.proof
    fitted, base_source = prepare_base(proof, out, cache, clock)
    data, base = out / "data", out / "tiny-sdxl"
    if config.scene_fit_steps:
        images, captions = load_images([data / "stage1", data / "stage2"])
        fitted["scene_fit"] = clock.run(
            "base: whole-scene UNet fit",
            fit_unet,
            base,
            images,
            captions,
            config.scene_fit_steps,
            batch=1,
            crop=proof.size,
            seed=config.seed + 5,
        )
    write_manifest(data / "stage1", STAGE1_MANIFEST, both=True)
    write_manifest(data / "heldout", SHAPES_MANIFEST, both=False)
    stage1_manifest = STAGE1_MANIFEST if config.stage1_shape_captions else MANIFEST

    stage1 = Trainer(
        _train_config(
            out / "stage1",
            base,
            data / "stage1",
            1,
            resolution=proof.size,
            manifest=stage1_manifest,
            max_steps=config.stage1_steps,
            learning_rate=config.stage1_lr,
            seed=config.seed,
            progress_bar=False,
        )
    )
    size, reference_size = proof.size, stage1.pipe.anystory_config.reference_size
    heldout = ManifestDataset(
        data / "heldout", stage1.pipe.feature_extractor, size, reference_size, manifest=SHAPES_MANIFEST
    )
    before = clock.run("stage 1 losses before", reference_losses, stage1.pipe, heldout, config.seed, config.eval_scenes)
    stage1_checkpoint = clock.run("stage 1", stage1.run)
    after = clock.run("stage 1 losses after", reference_losses, stage1.pipe, heldout, config.seed, config.eval_scenes)

    stage2 = Trainer(
        _train_config(
            out / "stage2",
            base,
            data / "stage2",
            2,
            init=str(stage1_checkpoint),
            resolution=size,
            max_steps=config.stage2_steps,
            learning_rate=config.stage2_lr,
            lr_scheduler="cosine",
            seed=config.seed,
            augment={"enabled": False},
            cache_subjects=True,
            routing_weight=config.routing_weight,
            timesteps=list(config.stage2_timesteps),
            progress_bar=False,
        )
    )
    stage2_checkpoint = clock.run("stage 2", stage2.run)
    routing = {}
    for name in ("heldout", "unseen"):
        dataset = ManifestDataset(data / name, stage2.pipe.feature_extractor, size, reference_size)
        routing[name] = clock.run(
            f"routing IoU ({name})",
            routing_iou,
            stage2.pipe,
            dataset,
            DEFAULT_TIMESTEPS,
            config.seed,
            config.eval_scenes,
        )
        print(routing[name].table(), flush=True)

    report = {
        "command": COMMAND,
        "config": config.to_dict(),
        "base_key": base_key(proof),
        "base_source": base_source,
        "base": fitted,
        "threads": torch.get_num_threads(),
        "phases": clock.phases,
        "cpu_s": round(sum(p["cpu_s"] for p in clock.phases.values()), 1),
        "stage1": {
            "steps": stage1.step,
            "cpu_s_per_step": round(clock.phases["stage 1"]["cpu_s"] / max(stage1.step, 1), 4),
            "heldout_losses_before": before,
            "heldout_losses_after": after,
            "checkpoint": str(stage1_checkpoint),
        },
        "stage2": {
            "steps": stage2.step,
            "cpu_s_per_step": round(clock.phases["stage 2"]["cpu_s"] / max(stage2.step, 1), 4),
            "checkpoint": str(stage2_checkpoint),
        },
        "routing_iou": {name: asdict(r) for name, r in routing.items()},
    }
    write_atomic(out / REPORT_FILE, json.dumps(report, indent=1).encode())
    return report


# -- export --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every weight file under `folder` (relative paths)."""
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*.safetensors"))}


def _generate(base: Path, adapter: Path) -> np.ndarray:
    from ..pipeline import AnyStoryPipeline
    from .synthetic import COMPACT_SHAPES, identity, reference

    pipe = AnyStoryPipeline.from_pretrained(str(base), adapter=str(adapter), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.RandomState(0)
    subjects = []
    for index in (0, 9):
        picture, mask = reference(identity(index, COMPACT_SHAPES), 96, rng)
        subjects.append(pipe.encode_subject(Image.fromarray(picture), Image.fromarray(mask.astype(np.uint8) * 255)))
    out = pipe(
        "a red stripes disc and a cyan dots hexagon",
        subjects=subjects,
        num_inference_steps=8,
        guidance_scale=1.0,
        height=256,
        width=256,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return out.images[0]


def export(out: Path, dest: Path, tolerance: float = 2 / 255) -> dict:
    """Write the trained model of `out` to `dest` (base/, adapter/, preview-model.json), in fp16 when
    a generation from the fp16 files differs from the float32 one by at most `tolerance` per pixel
    (mean abs), else in float32. Whole or not at all: written beside `dest`, then renamed."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file, save_file

    report = json.loads((out / REPORT_FILE).read_text())
    checkpoint = Path(report["stage2"]["checkpoint"])
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    reference_image = _generate(out / "tiny-sdxl", checkpoint)

    def write(dtype: torch.dtype) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        base = StableDiffusionXLPipeline.from_pretrained(str(out / "tiny-sdxl"), local_files_only=True)
        base.to(dtype=dtype)
        base.save_pretrained(tmp / "base", safe_serialization=True)
        (tmp / "adapter").mkdir(parents=True)
        shutil.copy(checkpoint / "config.json", tmp / "adapter" / "config.json")
        state = load_file(str(checkpoint / "anystory.safetensors"))
        save_file(
            {k: v.to(dtype).contiguous() for k, v in state.items()},
            str(tmp / "adapter" / "anystory.safetensors"),
            metadata={"format": "anystory"},
        )

    write(torch.float16)
    difference = float(np.abs(_generate(tmp / "base", tmp / "adapter") - reference_image).mean())
    dtype = "float16"
    if difference > tolerance:
        write(torch.float32)
        difference, dtype = float(np.abs(_generate(tmp / "base", tmp / "adapter") - reference_image).mean()), "float32"
    adapter_config = json.loads((tmp / "adapter" / "config.json").read_text())
    adapter_config["base_model"] = "../base"  # the shipped base, not the training folder
    write_atomic(tmp / "adapter" / "config.json", json.dumps(adapter_config, indent=2).encode())
    record = {
        "what": "AnyStory trained by this project's code on a toy world of textured shapes (training/synthetic.py)",
        "command": COMMAND,
        "config": report["config"],  # the run's
        "base_key": report["base_key"],
        "dtype": dtype,
        "mean_abs_difference_from_float32": difference,
        "training": {k: report[k] for k in ("cpu_s", "phases", "threads", "base", "stage1", "stage2", "routing_iou")},
        "files": file_hashes(tmp),
        "bytes": sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()),
    }
    for stage in ("stage1", "stage2"):
        record["training"][stage] = {k: v for k, v in record["training"][stage].items() if k != "checkpoint"}
    (tmp / REPORT_FILE).write_text(json.dumps(record, indent=1) + "\n")
    old = dest.with_name(dest.name + f".old-{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return record


def summary(report: dict) -> str:
    s1, s2 = report["stage1"], report["stage2"]
    source = report["base_source"]["from_cache"]
    before, after = s1["heldout_losses_before"], s1["heldout_losses_after"]
    lines = [
        f"base: {'from the cache ' + source if source else 'fitted in this run'}",
        f"stage 1 ({s1['steps']} steps, {s1['cpu_s_per_step']} CPU-s/step): held-out loss (shape-only captions), "
        f"own reference / another subject's: before {before['own_reference']:.4f} / {before['other_reference']:.4f}, "
        f"after {after['own_reference']:.4f} / {after['other_reference']:.4f}",
        f"stage 2 ({s2['steps']} steps, {s2['cpu_s_per_step']} CPU-s/step)",
        f"CPU time: {report['cpu_s'] / 60:.1f} min ({report['threads']} thread(s)); "
        + ", ".join(f"{k} {v['cpu_s']}" for k, v in report["phases"].items()),
    ]
    for name, r in report["routing_iou"].items():
        lines.append(
            f"routing IoU ({name}, {r['scenes']} scenes): "
            + ", ".join(f"t={t}: {r['map_iou'][t]:.3f}" for t in r["timesteps"])
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="the run's folder (default: a temporary folder, removed after)")
    parser.add_argument("--export", help="write the shipped files here (e.g. assets/preview-model)")
    parser.add_argument("--export-only", action="store_true", help="export the finished run in --out without training")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cache", help="the proof's cache of scenes and fitted bases (default: as the proof's)")
    for name in ("scene_fit_steps", "stage1_steps", "stage2_steps"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(PreviewModelConfig, name))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = PreviewModelConfig(scene_fit_steps=args.scene_fit_steps, stage1_steps=args.stage1_steps,
                                stage2_steps=args.stage2_steps)  # fmt: skip
    cache = Path(args.cache) if args.cache else default_cache()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="anystory-preview-"))
    try:
        started = cpu_seconds()
        report = json.loads((out / REPORT_FILE).read_text()) if args.export_only else train(config, out, cache)
        print(summary(report))
        if args.export:
            record = export(out, Path(args.export))
            print(
                f"exported to {args.export}: {record['bytes'] / 1e6:.1f} MB, {record['dtype']} "
                f"(mean abs difference from float32 {record['mean_abs_difference_from_float32']:.5f}); "
                f"{(cpu_seconds() - started) / 60:.1f} CPU-min in all"
            )
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
