"""Benchmark: stage 2 takes the held-out routing IoU from chance to >= 0.8 on the tiny SDXL, on CPU.

    python -m anystory.training.proof [--out DIR] [--threads 1]

1. The tiny SDXL (`anystory.tiny`) and synthetic scenes (`synthetic.py`): paired 1-2 subject scenes
   for stage 1, two-subject scenes for stage 2, and held-out two-subject scenes (another seed: new
   layouts, sizes, rotations, backgrounds and references of the same identity pool).
2. The base: the random tiny VAE and UNet carry no image content, so they get a brief fit on the
   training scenes (tiny_base.py): a base model is pretrained in AnyStory's setting too. The VAE is
   twice the tests' tiny one in width: the tiny one's latent keeps too little of a scene at t = 600
   for any router to reach 0.8 there (latent_probe.py measures it).
3. Stage 1 (subject encoder, oracle routes): its diffusion loss, start and end.
4. Stage 2 (router): routing IoU on the held-out scenes with the untrained router, then a fixed
   number of steps (`stage2_steps`), then the IoU again. IoU is measured on the noised target
   latent at t = 200, 400, 600 of 1000 (see evaluate.py for the figures).

The result is defined by steps, data and seeds alone: no time budget stops any phase, so a slower
machine takes longer and gets the same figures. CPU time is this process's user + system time
(`resource.getrusage`); with --threads 1 it is close to wall time. It is reported per phase and per
step, for comparing machines. The figures print as a table and go to OUT/proof.json.

The scenes and the fitted base (step 2, most of the CPU time) are kept in a cache folder keyed by
what they are made from: the settings they depend on, the seed, and the source of the code that
makes them (synthetic.py, tiny.py, tiny_base.py) with the torch and diffusers versions. A later run
with the same key copies them instead of fitting again (`--no-cache` fits afresh).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import diffusers
import numpy as np
import torch

from ..tiny import TINY_VAE_CHANNELS, write_tiny_sdxl
from .config import load_config
from .data import ManifestDataset
from .evaluate import DEFAULT_TIMESTEPS, diffusion_loss, routing_iou
from .synthetic import COMPACT_SHAPES, SyntheticConfig, generate
from .tiny_base import fit_unet, fit_vae, load_images, replace_vae
from .trainer import Trainer


@dataclass
class ProofConfig:
    size: int = 256  # the router grid of the tiny UNet is size / 16
    reference_size: int = 96
    scale: tuple[float, float] = (0.45, 0.65)  # sprite side / image side
    # Stars, rings and crosses have parts thinner than a router cell (16 px here): no router at
    # this grid can route them, so the proof's identities use the compact shapes.
    shapes: tuple[str, ...] = COMPACT_SHAPES
    stage1_scenes: int = 300
    stage2_scenes: int = 400
    heldout_scenes: int = 50
    identities: tuple[int, int] = (0, 16)  # the identity pool of training and held-out scenes
    unseen_identities: tuple[int, int] = (16, 24)  # an extra held-out set of identities never trained on
    # The base VAE's block widths: wider than the tests' tiny VAE (8, 16, 16, 16), whose latent keeps
    # too little of the scene at high noise for any router (latent_probe.py; docs/TRAINING.md).
    vae_channels: tuple[int, ...] = (16, 32, 32, 32)
    vae_steps: int = 6000
    unet_steps: int = 6000
    unet_crop: int = 64  # base UNet fit: side of the random crops (px) and crops per step
    unet_batch: int = 8
    unet_max_noise_weight: float = 1.0  # > 1: the base UNet's loss weighted towards high noise (tiny_base.fit_unet)
    stage1_steps: int = 300
    stage1_lr: float = 5e-4
    stage1_eval_scenes: int = 24  # stage-1 loss before/after: these held-out scenes x 5 timesteps, fixed noise
    # Stage 2 runs exactly this many steps (cosine schedule over them): steps, not time, define the proof.
    stage2_steps: int = 8000
    stage2_lr: float = 1.5e-3
    routing_weight: float = 0.1  # lambda of L_route (the paper's)
    # Training timesteps of stage 2, uniform in [start, stop): the hardest measured t (600) needs the
    # most samples; past ~800 the latent is nearly all noise and below ~300 routing is easy.
    stage2_timesteps: tuple[int, int] = (300, 800)
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    target_iou: float = 0.8
    seed: int = 0


# What the scenes and the fitted base are made from (the cache key's settings); the stages' settings
# are not among them, so changing those reuses the base.
BASE_FIELDS = (
    "size", "reference_size", "scale", "shapes", "stage1_scenes", "stage2_scenes", "heldout_scenes", "identities",
    "unseen_identities", "vae_channels", "vae_steps", "unet_steps", "unet_crop", "unet_batch", "unet_max_noise_weight", "seed",
)  # fmt: skip
BASE_CODE = ("synthetic.py", "tiny_base.py", "../tiny.py")  # the code that makes them
CACHE_FILE = "base.json"


def default_cache() -> Path:
    return Path(os.environ.get("ANYSTORY_PROOF_CACHE") or Path.home() / ".cache" / "anystory" / "proof-base")


def base_key(config: ProofConfig) -> str:
    """The content key of the scenes and fitted base `config` makes: any change to their settings,
    the seed, the code that makes them, or the torch / diffusers version gives another key."""
    settings = {name: getattr(config, name) for name in BASE_FIELDS}
    here = Path(__file__).resolve().parent
    code = {name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in BASE_CODE}
    inputs = {"settings": settings, "code": code, "torch": torch.__version__, "diffusers": diffusers.__version__}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=list).encode()).hexdigest()[:20]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Clock:
    """CPU and wall seconds of named phases."""

    phases: dict = field(default_factory=dict)

    def run(self, name: str, function, *args, **kwargs):
        cpu, wall = cpu_seconds(), time.time()
        result = function(*args, **kwargs)
        self.phases[name] = {"cpu_s": round(cpu_seconds() - cpu, 1), "wall_s": round(time.time() - wall, 1)}
        print(f"[{name}] {self.phases[name]['cpu_s']} s CPU, {self.phases[name]['wall_s']} s wall", flush=True)
        return result


def _train_config(out: Path, base: Path, data: Path, stage: int, **extra):
    values = {"base": str(base), "data": str(data), "output_dir": str(out), "stage": stage, "report_to": "none",
              "cache_latents": True, "checkpoint_every": 10**9, "log_every": 10, **extra}  # fmt: skip
    return load_config(None, stage, values)


def prepare_base(config: ProofConfig, out: Path, cache: Path | None, clock: Clock) -> tuple[dict, dict]:
    """The scenes (`out/data`) and the fitted base (`out/tiny-sdxl`) of `config`: copied from the
    cache where its key is there, else made and fitted (and stored in the cache when one is given).
    Returns (the fit's figures, where the base came from)."""
    data, base = out / "data", out / "tiny-sdxl"
    key = base_key(config)
    cached = cache / key if cache is not None else None

    def make_data():
        common = dict(size=config.size, reference_size=config.reference_size, scale=config.scale, shapes=config.shapes)
        seen = dict(common, identities=config.identities)
        generate(data / "stage1", SyntheticConfig(scenes=config.stage1_scenes, subjects=(1, 2), seed=config.seed + 1, **seen))
        generate(data / "stage2", SyntheticConfig(scenes=config.stage2_scenes, subjects=(2, 2), seed=config.seed + 2, **seen))
        generate(data / "heldout", SyntheticConfig(scenes=config.heldout_scenes, subjects=(2, 2), seed=config.seed + 99, **seen))
        generate(data / "unseen", SyntheticConfig(scenes=config.heldout_scenes, subjects=(2, 2), seed=config.seed + 98,
                                                  identities=config.unseen_identities, **common))  # fmt: skip
        write_tiny_sdxl(base, seed=config.seed)
        if tuple(config.vae_channels) != TINY_VAE_CHANNELS:
            replace_vae(base, tuple(config.vae_channels), seed=config.seed + 1)

    if cached is not None and (cached / CACHE_FILE).is_file():
        earlier = json.loads((cached / CACHE_FILE).read_text())
        out.mkdir(parents=True, exist_ok=True)
        clock.run("data + base from cache", lambda: (shutil.copytree(cached / "data", data), shutil.copytree(cached / "tiny-sdxl", base)))
        return earlier["base"], {"from_cache": str(cached), "fit_phases": earlier["phases"]}
    clock.run("data + tiny SDXL", make_data)
    images, captions = load_images([data / "stage1", data / "stage2"])
    vae = clock.run("base: VAE fit", fit_vae, base, images, config.vae_steps, seed=config.seed)
    unet = clock.run("base: UNet fit", fit_unet, base, images, captions, config.unet_steps, seed=config.seed,
                     crop=config.unet_crop, batch=config.unet_batch, max_noise_weight=config.unet_max_noise_weight)  # fmt: skip
    fitted = {**vae, **unet}
    if cached is not None:
        _store(cached, data, base, {"key": key, "base": fitted, "phases": dict(clock.phases)})
    return fitted, {"from_cache": None, "fit_phases": dict(clock.phases)}


def run(config: ProofConfig, out: Path, cache: Path | None = None) -> dict:
    """The whole proof in `out`. `cache`: the folder of cached scenes and fitted bases (None: fit
    afresh and keep nothing)."""
    clock = Clock()
    data, base = out / "data", out / "tiny-sdxl"
    key = base_key(config)
    fitted, base_source = prepare_base(config, out, cache, clock)

    stage1 = Trainer(_train_config(out / "stage1", base, data / "stage1", 1, resolution=config.size,
                                   max_steps=config.stage1_steps, learning_rate=config.stage1_lr, seed=config.seed))  # fmt: skip
    # The training log is too noisy to compare two points of a short run: the loss is measured
    # before and after on held-out paired scenes with fixed noise and timesteps.
    paired = ManifestDataset(data / "heldout", stage1.pipe.feature_extractor, config.size, stage1.pipe.anystory_config.reference_size)
    loss_before = clock.run("stage 1 loss before", diffusion_loss, stage1.pipe, paired, 1, seed=config.seed,
                            max_scenes=config.stage1_eval_scenes)  # fmt: skip
    stage1_checkpoint = clock.run("stage 1", stage1.run)
    loss_after = clock.run("stage 1 loss after", diffusion_loss, stage1.pipe, paired, 1, seed=config.seed,
                           max_scenes=config.stage1_eval_scenes)  # fmt: skip
    log = [json.loads(line) for line in (out / "stage1/logs/train.jsonl").read_text().splitlines()]
    tenth = max(1, len(log) // 10)
    stage1_log = (float(np.mean([r["diffusion"] for r in log[:tenth]])), float(np.mean([r["diffusion"] for r in log[-tenth:]])))

    trainer = Trainer(_train_config(out / "stage2", base, data / "stage2", 2, init=str(stage1_checkpoint), resolution=config.size,
                                    max_steps=config.stage2_steps, learning_rate=config.stage2_lr, lr_scheduler="cosine",
                                    seed=config.seed, augment={"enabled": False}, cache_subjects=True, routing_weight=config.routing_weight,
                                    timesteps=list(config.stage2_timesteps)))  # fmt: skip
    sets = {name: ManifestDataset(data / name, trainer.pipe.feature_extractor, config.size, trainer.pipe.anystory_config.reference_size)
            for name in ("heldout", "unseen")}  # fmt: skip
    before = {name: clock.run(f"routing IoU before ({name})", routing_iou, trainer.pipe, d, config.timesteps, config.seed)
              for name, d in sets.items()}  # fmt: skip
    print(before["heldout"].table(), flush=True)

    stage2_checkpoint = clock.run("stage 2", trainer.run)  # no callback: it stops at stage2_steps, nothing else
    after = {name: clock.run(f"routing IoU after ({name})", routing_iou, trainer.pipe, d, config.timesteps, config.seed)
             for name, d in sets.items()}  # fmt: skip
    print(after["heldout"].table(), flush=True)

    passed = all(after["heldout"].map_iou[t] >= config.target_iou for t in config.timesteps) and loss_after < loss_before
    report = {
        "config": asdict(config),
        "base_key": key,
        "base_source": base_source,
        "threads": torch.get_num_threads(),
        "phases": clock.phases,
        "cpu_s": round(sum(p["cpu_s"] for p in clock.phases.values()), 1),
        "base": fitted,
        "stage1": {"steps": stage1.step, "cpu_s_per_step": _per_step(clock.phases["stage 1"], stage1.step), "heldout_loss_before": loss_before, "heldout_loss_after": loss_after,
                   "log_loss_first_tenth": stage1_log[0], "log_loss_last_tenth": stage1_log[1],
                   "checkpoint": str(stage1_checkpoint)},  # fmt: skip
        "stage2": {"steps": trainer.step, "cpu_s": clock.phases["stage 2"]["cpu_s"],
                   "cpu_s_per_step": _per_step(clock.phases["stage 2"], trainer.step), "checkpoint": str(stage2_checkpoint)},
        "routing_iou_before": asdict(before["heldout"]),
        "routing_iou_after": asdict(after["heldout"]),
        "unseen_identities_before": asdict(before["unseen"]),
        "unseen_identities_after": asdict(after["unseen"]),
        "passed": passed,
    }
    (out / "proof.json").write_text(json.dumps(report, indent=1))
    return report


def _per_step(phase: dict, steps: int) -> float:
    return round(phase["cpu_s"] / max(steps, 1), 4)


def _store(cached: Path, data: Path, base: Path, record: dict) -> None:
    """Copy the scenes and the fitted base into the cache, whole or not at all (a folder renamed
    into place), so an interrupted run leaves no half entry."""
    tmp = cached.with_name(cached.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(data, tmp / "data")
    shutil.copytree(base, tmp / "tiny-sdxl")
    (tmp / CACHE_FILE).write_text(json.dumps(record, indent=1))
    try:
        os.replace(tmp, cached)
    except OSError:  # another run stored the same key first: its entry is as good
        shutil.rmtree(tmp, ignore_errors=True)


def summary(report: dict) -> str:
    before, after, config = report["routing_iou_before"], report["routing_iou_after"], report["config"]
    lines = [
        f"stage 1 ({report['stage1']['steps']} steps): held-out diffusion loss {report['stage1']['heldout_loss_before']:.4f} -> "
        f"{report['stage1']['heldout_loss_after']:.4f}; training log, first -> last tenth "
        f"{report['stage1']['log_loss_first_tenth']:.4f} -> {report['stage1']['log_loss_last_tenth']:.4f}",
        f"stage 2: {report['stage2']['steps']} steps in {report['stage2']['cpu_s'] / 60:.1f} CPU minutes "
        f"({report['stage2']['cpu_s_per_step']:.3f} CPU-s per step), lambda {config['routing_weight']}, training t in "
        f"[{config['stage2_timesteps'][0]}, {config['stage2_timesteps'][1]})",
        f"base: {'from the cache ' + report['base_source']['from_cache'] if report['base_source']['from_cache'] else 'fitted in this run'}"
        f" (fit: " + ", ".join(f"{k} {v['cpu_s']} CPU-s" for k, v in report["base_source"]["fit_phases"].items()) + ")",
        f"CPU time of this run: {report['cpu_s'] / 60:.1f} min ({report['threads']} thread(s)); per phase: "
        + ", ".join(f"{k} {v['cpu_s']}" for k, v in report["phases"].items()),
        "",
        "| t | map IoU before | map IoU after | site IoU before | site IoU after | latent-grid IoU after (ceiling) |",
        "|---|---|---|---|---|---|",
    ]
    for t in config["timesteps"]:
        lines.append(
            f"| {t} | {before['map_iou'][t]:.3f} | {after['map_iou'][t]:.3f} | {before['site_iou'][t]:.3f} | "
            f"{after['site_iou'][t]:.3f} | {after['latent_iou'][t]:.3f} ({after['latent_ceiling'][t]:.3f}) |"
        )
    unseen_before, unseen_after = report["unseen_identities_before"], report["unseen_identities_after"]
    lines.append("\nidentities never trained on (map IoU before -> after): " + ", ".join(
        f"t={t}: {unseen_before['map_iou'][t]:.3f} -> {unseen_after['map_iou'][t]:.3f}" for t in config["timesteps"]))
    verdict = "PASS" if report["passed"] else "FAIL"
    lines.append(f"\n{verdict}: map IoU after >= {config['target_iou']} at every t (held-out scenes: {after['scenes']}) "
                 "and stage 1's held-out loss fell")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="keep everything here (default: a temporary folder, removed after)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: CPU time ~ wall time)")
    parser.add_argument("--stage2-steps", type=int, default=ProofConfig.stage2_steps,
                        help="stage 2's steps (cosine schedule over them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--routing-weight", type=float, default=ProofConfig.routing_weight)
    parser.add_argument("--stage2-timesteps", type=int, nargs=2, default=ProofConfig.stage2_timesteps)
    parser.add_argument("--unet-steps", type=int, default=ProofConfig.unet_steps, help="steps of the base UNet fit")
    parser.add_argument("--vae-channels", type=int, nargs=4, default=ProofConfig.vae_channels, help="the base VAE's block widths")
    parser.add_argument("--vae-steps", type=int, default=ProofConfig.vae_steps, help="steps of the base VAE fit")
    parser.add_argument("--unet-crop", type=int, default=ProofConfig.unet_crop, help="base UNet fit: crop side in px")
    parser.add_argument("--unet-batch", type=int, default=ProofConfig.unet_batch, help="base UNet fit: crops per step")
    parser.add_argument("--unet-max-noise-weight", type=float, default=ProofConfig.unet_max_noise_weight,
                        help="base UNet fit: cap of the high-noise loss weight clamp(1/SNR, 1, cap); 1 = plain epsilon loss")
    parser.add_argument("--cache", help="cache folder of scenes and fitted bases (default: $ANYSTORY_PROOF_CACHE or "
                        "~/.cache/anystory/proof-base)")  # fmt: skip
    parser.add_argument("--no-cache", action="store_true", help="fit the base afresh and keep nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = ProofConfig(stage2_steps=args.stage2_steps, seed=args.seed, routing_weight=args.routing_weight,
                         stage2_timesteps=tuple(args.stage2_timesteps), unet_steps=args.unet_steps, unet_crop=args.unet_crop,
                         unet_batch=args.unet_batch, unet_max_noise_weight=args.unet_max_noise_weight,
                         vae_channels=tuple(args.vae_channels), vae_steps=args.vae_steps)  # fmt: skip
    cache = None if args.no_cache else Path(args.cache) if args.cache else default_cache()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="anystory-proof-"))
    try:
        report = run(config, out, cache)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(summary(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
