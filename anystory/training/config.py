"""Training configuration: one dataclass, read from a JSON file, overridable from the command line."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .data import MANIFEST, AugmentConfig


@dataclass
class TrainConfig:
    """Everything a stage-1 or stage-2 run needs. Paths may be relative to the working directory."""

    base: str  # SDXL: a diffusers folder, hub id, or single-file checkpoint
    data: str  # dataset folder (see data.py for the format)
    output_dir: str
    stage: int = 1
    init: str = "init"  # stage 1: "init" (fresh parts); stage 2: the stage-1 checkpoint folder
    manifest: str = MANIFEST
    validate: str = "files"  # "files" | "full" | "none" (see data.read_manifest)
    resolution: int = 1024
    anystory: dict = field(default_factory=dict)  # AnyStoryConfig fields: sizes of the new parts
    image_encoder: list[str] | None = None  # (repo or folder, subfolder) when the base has none

    batch_size: int = 1  # per process
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000  # optimizer steps
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"  # any of diffusers.optimization.get_scheduler's names
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"  # "adamw" | "adamw_8bit" (bitsandbytes: 2 bytes of state a parameter, not 8)
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16": the frozen base models run in it
    gradient_checkpointing: bool = False
    seed: int = 0

    timesteps: tuple[int, int] = (0, 1000)  # training timesteps, uniform in [start, stop)
    routing_weight: float = 0.1  # lambda of L_route (stage 2)
    gumbel_tau: float = 1.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cache_latents: bool = False  # keep target latents and prompt embeddings in memory
    # stage 2: keep what the frozen encoder makes of a sample's references (CLIP states, reference
    # latents, ReferenceNet features, Subject QFormer tokens), keyed by the pictures' content
    cache_subjects: bool = False
    num_workers: int = 0

    checkpoint_every: int = 500
    keep_checkpoints: int | None = 3  # newest N checkpoint-* folders; None keeps all
    log_every: int = 10
    progress_bar: bool = True
    report_to: str = "auto"  # "auto" (TensorBoard when installed) | "tensorboard" | "none"
    # several processes: compare every process's trained weights every N steps (0: only at each
    # checkpoint, which always compares); logs/samples.jsonl with the rows each process trained on
    check_processes_every: int = 0
    log_samples: bool = False
    resume: str | None = None  # "latest" or a checkpoint folder

    def __post_init__(self):
        if isinstance(self.augment, dict):
            self.augment = _build(AugmentConfig, self.augment, "augment")
        self.timesteps = tuple(self.timesteps)
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.stage == 2 and self.init == "init" and not self.resume:
            raise ValueError("stage 2 starts from a stage-1 checkpoint: set 'init' to its folder")
        if not 0 <= self.timesteps[0] < self.timesteps[1]:
            raise ValueError(f"timesteps must be [start, stop) with 0 <= start < stop, got {self.timesteps}")
        if self.optimizer not in ("adamw", "adamw_8bit"):
            raise ValueError(f"optimizer must be 'adamw' or 'adamw_8bit', got {self.optimizer!r}")
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def _build(cls, data: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**data)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string


def load_config(path: str | Path | None, stage: int, overrides: dict | None = None) -> TrainConfig:
    """The JSON file, then `overrides` (dotted keys for nested dicts: "augment.clip_drop")."""
    data = json.loads(Path(path).read_text()) if path else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds one JSON object")
    for key, value in (overrides or {}).items():
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    if data.setdefault("stage", stage) != stage:
        raise ValueError(f"{path} is a stage-{data['stage']} config; this command trains stage {stage}")
    missing = [k for k in ("base", "data", "output_dir") if k not in data]
    if missing:
        raise ValueError(f"the config needs {missing} (in the file or as --set key=value)")
    return _build(TrainConfig, data, str(path or "config"))


def command_line(stage: int, argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        prog=f"python -m anystory.training.stage{stage}",
        description=f"Train AnyStory stage {stage} ({'subject encoder' if stage == 1 else 'router'}). "
        "Multi-GPU / multi-node: `accelerate launch -m anystory.training.stage%d --config ...`." % stage,
    )
    parser.add_argument("--config", help="JSON file with TrainConfig fields (see docs/TRAINING.md)")
    parser.add_argument("--output-dir")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--resume", help='"latest" or a checkpoint folder')
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (JSON value)")
    parser.add_argument("--plan", action="store_true", help="memory per GPU at full size (--plan --help: its options)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key] = _parse_value(value)
    for key in ("output_dir", "max_steps", "resume"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return load_config(args.config, stage, overrides)
