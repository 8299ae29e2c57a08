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
4. Stage 2 (router): routing IoU on the held-out scenes with the untrained router, then training
   within a CPU-time budget (15 minutes), then the IoU again. IoU is measured on the noised
   target latent at t = 200, 400, 600 of 1000 (see evaluate.py for the figures).

CPU time is this process's user + system time (`resource.getrusage`); with --threads 1 it is close
to wall time. The figures print as a table and go to OUT/proof.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    stage2_max_steps: int = 5500  # cosine schedule over these; the CPU budget stops earlier on a slower machine
    stage2_cpu_minutes: float = 15.0
    stage2_lr: float = 1.5e-3
    routing_weight: float = 0.1  # lambda of L_route (the paper's)
    stage2_timesteps: tuple[int, int] = (0, 1000)  # training timesteps of stage 2, uniform in [start, stop)
    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    target_iou: float = 0.8
    seed: int = 0


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


def run(config: ProofConfig, out: Path, reuse: Path | None = None, refit_unet: bool = False) -> dict:
    """The whole proof in `out`. `reuse`: the OUT of an earlier run with the same data settings,
    whose scenes and fitted base are used as they are (stages 1 and 2 run again); with
    `refit_unet`, only its scenes and VAE: the UNet is fitted again from the random one."""
    clock = Clock()
    data, base = out / "data", out / "tiny-sdxl"
    if reuse is not None:
        earlier = json.loads((reuse / "proof.json").read_text())
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(reuse / "data", data)
        shutil.copytree(reuse / "tiny-sdxl", base)
        kept = ("data", "base: VAE") if refit_unet else ("data", "base")
        clock.phases.update({k: v for k, v in earlier["phases"].items() if k.startswith(kept)})
        vae, unet = earlier["base"], {}
        if refit_unet:
            vae = {k: v for k, v in vae.items() if not k.startswith("denoising")}
            with tempfile.TemporaryDirectory() as fresh:
                write_tiny_sdxl(fresh, seed=config.seed)
                shutil.rmtree(base / "unet")
                shutil.copytree(Path(fresh) / "unet", base / "unet")

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

    if reuse is None:
        clock.run("data + tiny SDXL", make_data)
    if reuse is None or refit_unet:
        images, captions = load_images([data / "stage1", data / "stage2"])
    if reuse is None:
        vae = clock.run("base: VAE fit", fit_vae, base, images, config.vae_steps, seed=config.seed)
    if reuse is None or refit_unet:
        unet = clock.run("base: UNet fit", fit_unet, base, images, captions, config.unet_steps, seed=config.seed,
                         crop=config.unet_crop, batch=config.unet_batch, max_noise_weight=config.unet_max_noise_weight)  # fmt: skip

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
                                    max_steps=config.stage2_max_steps, learning_rate=config.stage2_lr, lr_scheduler="cosine",
                                    seed=config.seed, augment={"enabled": False}, routing_weight=config.routing_weight,
                                    timesteps=list(config.stage2_timesteps)))  # fmt: skip
    sets = {name: ManifestDataset(data / name, trainer.pipe.feature_extractor, config.size, trainer.pipe.anystory_config.reference_size)
            for name in ("heldout", "unseen")}  # fmt: skip
    before = {name: clock.run(f"routing IoU before ({name})", routing_iou, trainer.pipe, d, config.timesteps, config.seed)
              for name, d in sets.items()}  # fmt: skip
    print(before["heldout"].table(), flush=True)

    budget, start = config.stage2_cpu_minutes * 60, cpu_seconds()
    state = {"steps": 0}

    def within_budget(step: int, losses: dict) -> bool:
        state["steps"] = step
        return cpu_seconds() - start >= budget  # True stops the run (with a checkpoint)

    stage2_checkpoint = clock.run("stage 2", trainer.run, within_budget)
    after = {name: clock.run(f"routing IoU after ({name})", routing_iou, trainer.pipe, d, config.timesteps, config.seed)
             for name, d in sets.items()}  # fmt: skip
    print(after["heldout"].table(), flush=True)

    passed = all(after["heldout"].map_iou[t] >= config.target_iou for t in config.timesteps) and loss_after < loss_before
    report = {
        "config": asdict(config),
        "reused_base_and_data_from": str(reuse) if reuse else None,
        "refit_unet": refit_unet,
        "threads": torch.get_num_threads(),
        "phases": clock.phases,
        "base": {**vae, **unet},
        "stage1": {"steps": config.stage1_steps, "heldout_loss_before": loss_before, "heldout_loss_after": loss_after,
                   "log_loss_first_tenth": stage1_log[0], "log_loss_last_tenth": stage1_log[1],
                   "checkpoint": str(stage1_checkpoint)},  # fmt: skip
        "stage2": {"steps": state["steps"], "cpu_s": clock.phases["stage 2"]["cpu_s"], "checkpoint": str(stage2_checkpoint)},
        "routing_iou_before": asdict(before["heldout"]),
        "routing_iou_after": asdict(after["heldout"]),
        "unseen_identities_before": asdict(before["unseen"]),
        "unseen_identities_after": asdict(after["unseen"]),
        "passed": passed,
    }
    (out / "proof.json").write_text(json.dumps(report, indent=1))
    return report


def summary(report: dict) -> str:
    before, after, config = report["routing_iou_before"], report["routing_iou_after"], report["config"]
    lines = [
        f"stage 1 ({report['stage1']['steps']} steps): held-out diffusion loss {report['stage1']['heldout_loss_before']:.4f} -> "
        f"{report['stage1']['heldout_loss_after']:.4f}; training log, first -> last tenth "
        f"{report['stage1']['log_loss_first_tenth']:.4f} -> {report['stage1']['log_loss_last_tenth']:.4f}",
        f"stage 2: {report['stage2']['steps']} steps in {report['stage2']['cpu_s'] / 60:.1f} CPU minutes "
        f"(budget {config['stage2_cpu_minutes']}), lambda {config['routing_weight']}, training t in "
        f"[{config['stage2_timesteps'][0]}, {config['stage2_timesteps'][1]})",
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
    parser.add_argument("--stage2-steps", type=int, default=ProofConfig.stage2_max_steps,
                        help="stage 2's cosine schedule length (the CPU budget may stop it earlier)")
    parser.add_argument("--stage2-cpu-minutes", type=float, default=ProofConfig.stage2_cpu_minutes)
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
    parser.add_argument("--reuse", help="the --out of an earlier run: reuse its scenes and fitted base")
    parser.add_argument("--refit-unet", action="store_true", help="with --reuse: keep its scenes and VAE, fit the UNet again")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = ProofConfig(stage2_cpu_minutes=args.stage2_cpu_minutes, stage2_max_steps=args.stage2_steps, seed=args.seed, routing_weight=args.routing_weight,
                         stage2_timesteps=tuple(args.stage2_timesteps), unet_steps=args.unet_steps, unet_crop=args.unet_crop,
                         unet_batch=args.unet_batch, unet_max_noise_weight=args.unet_max_noise_weight,
                         vae_channels=tuple(args.vae_channels), vae_steps=args.vae_steps)  # fmt: skip
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="anystory-proof-"))
    try:
        if args.refit_unet and not args.reuse:
            parser.error("--refit-unet needs --reuse")
        report = run(config, out, Path(args.reuse) if args.reuse else None, args.refit_unet)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(summary(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
