"""The training loop of both stages, on `accelerate`: one process per GPU (`accelerate launch`),
mixed precision, gradient accumulation and checkpointing, resumable AnyStory checkpoints.

A checkpoint folder `output_dir/checkpoint-<step>` is an AnyStory checkpoint (config.json +
anystory.safetensors: `AnyStoryPipeline.from_pretrained(base, adapter=folder)` loads it) plus
`trainer_state.json` and `training/optimizer.pt` for resuming.

Every random draw of a sample (its row, augmentation, noise, timestep, Gumbel noise) is a function
of (seed, the sample's position in the global data stream), never of the process that takes it:
P processes with batch B train the same model as one process with batch P * B (up to the float
rounding of the gradient all-reduce; measured in docs/TRAINING.md), and a run resumed from a
checkpoint, with any number of processes, continues the stream where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..pipeline import AnyStoryConfig, AnyStoryPipeline
from ..processes import cpu_processes
from ..weights import (
    WEIGHTS_NAME,
    CheckpointError,
    adapter_tensors,
    load_state_dict_file,
    read_adapter_config,
    save_adapter,
)
from .config import TrainConfig
from .data import ManifestDataset, StreamBatchSampler, collate, draw_seed
from .shards import ShardDataset, is_shard_folder
from .step import InputEncoder, TrainingModule, content_key, stage_parameters

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "training/optimizer.pt"
LOG_FILE = "logs/train.jsonl"
SAMPLES_LOG = "logs/samples.jsonl"
# Offsets mixed into a sample's draw seed: its noise and timestep, and torch's global generator
# (Gumbel noise, dropout) for its forward pass.
NOISE_DRAW, TORCH_DRAW = 1, 2


class ProcessesDisagree(RuntimeError):
    """The processes of a run hold different weights after a step (they must never)."""


# -- checkpoints ---------------------------------------------------------------------------------


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoint-<step> folders of a run, oldest first."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        if path.is_dir() and path.name.split("-", 1)[1].isdigit() and (path / STATE_FILE).is_file():
            found.append(path)
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """"latest" -> the newest checkpoint of output_dir (None if there is none yet); else the folder."""
    if not resume:
        return None
    if resume == "latest":
        found = checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path} is not a training checkpoint (no {STATE_FILE})")
    return path


def load_stage1_weights(pipe: AnyStoryPipeline, folder: str | Path) -> None:
    """Load a stage-1 checkpoint into a pipeline that also has (fresh) routing parts."""
    folder = Path(folder)
    state = load_state_dict_file(folder / WEIGHTS_NAME)
    targets = dict(adapter_tensors(pipe))
    unexpected = sorted(set(state) - set(targets))
    missing = sorted(k for k in set(targets) - set(state) if ".router." not in k and "routing_qformer" not in k)
    if unexpected or missing:
        raise CheckpointError(f"{folder} does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for key, value in state.items():
            if value.shape != targets[key].shape:
                raise CheckpointError(f"{folder}: {key} has shape {tuple(value.shape)}, expected {tuple(targets[key].shape)}")
            targets[key].copy_(value.to(targets[key].dtype))
    refresh(pipe)


def refresh(pipe: AnyStoryPipeline) -> None:
    """After the AnyStory weights changed: new encoder identity, no cached background encoding."""
    pipe.encoder_id = pipe._fingerprint()
    pipe._background = None


def _default_config(base: str) -> AnyStoryConfig | None:
    """AnyStoryConfig.for_models from the base's config files alone (None where there are none)."""
    try:
        unet = UNet2DConditionModel.load_config(base, subfolder="unet")
        vae = AutoencoderKL.load_config(base, subfolder="vae")
    except (OSError, ValueError, EnvironmentError):
        return None
    return AnyStoryConfig.for_models(SimpleNamespace(config=SimpleNamespace(**unet)), 2 ** (len(vae["block_out_channels"]) - 1))


def build_pipeline(config: TrainConfig, resume_from: Path | None, device) -> AnyStoryPipeline:
    """The pipeline a run starts from: a checkpoint to resume, else fresh parts (stage 1) or the
    stage-1 checkpoint with fresh routing parts (stage 2). AnyStory parts stay float32."""
    extra = {"image_encoder_source": tuple(config.image_encoder)} if config.image_encoder else {}
    load = lambda adapter, cfg=None: AnyStoryPipeline.from_pretrained(  # noqa: E731
        config.base, adapter=adapter, config=cfg, torch_dtype=torch.float32, device=device, **extra
    )
    if resume_from is not None:
        return load(str(resume_from))
    overrides = dict(config.anystory)
    if config.stage == 1:
        overrides.setdefault("routing_dim", 0)  # stage-1 checkpoints have no router (weights.py parts)
        default = _default_config(config.base)
        if default is not None:
            return load("init", replace(default, **overrides))
        pipe = load("init")
        pipe.init_anystory(replace(pipe.anystory_config, **overrides))
        return pipe
    stage1 = AnyStoryConfig(**read_adapter_config(config.init)["anystory"])
    default = _default_config(config.base) or AnyStoryConfig()
    routing = {k: getattr(default, k) for k in ("routing_dim", "router_dim", "router_heads")}
    routing.update({k: v for k, v in overrides.items() if k in routing})
    pipe = load("init", replace(stage1, **routing))
    load_stage1_weights(pipe, config.init)
    return pipe


# -- processes -----------------------------------------------------------------------------------


def check_launch() -> None:
    """`accelerate launch --cpu --num_processes N` starts ONE process unless it is given an mpirun
    hostfile (accelerate runs CPU processes through mpirun); it then sets MASTER_PORT but no
    WORLD_SIZE. Refuse, rather than train one process at a batch the user did not ask for."""
    env = os.environ
    asked_cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    ranked = any(k in env for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    if asked_cpu and "MASTER_PORT" in env and not ranked:
        raise RuntimeError(
            "accelerate launch --cpu --num_processes N started one process: accelerate runs several CPU "
            "processes only through mpirun (--mpirun_hostfile). On CPU use `accelerate launch --multi_gpu "
            "--num_processes N ...` (without --cpu: on a machine without a GPU the trainer joins the "
            "processes on CPU with gloo) or `torchrun --nproc_per_node N -m anystory.training.stage1 ...`"
        )


def make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (its moments block-wise quantised: a quarter of the memory)."""
    if config.optimizer == "adamw_8bit":
        try:
            import bitsandbytes
        except ImportError as err:
            raise ImportError("optimizer 'adamw_8bit' needs bitsandbytes (pip install bitsandbytes)") from err
        cls = bitsandbytes.optim.AdamW8bit
    else:
        cls = torch.optim.AdamW
    return cls(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
               eps=config.adam_epsilon, weight_decay=config.weight_decay)  # fmt: skip


def cast_frozen(pipe: AnyStoryPipeline, mixed_precision: str) -> None:
    """Frozen base models in the mixed-precision dtype; VAE and AnyStory parts stay float32 (the
    SDXL VAE overflows in fp16; checkpoints keep full precision)."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
    if dtype is None:
        return
    for name in ("text_encoder", "text_encoder_2", "image_encoder"):
        part = getattr(pipe, name, None)
        if part is not None:
            part.to(dtype=dtype)
    pipe.unet.to(dtype=dtype)
    if pipe.anystory_blocks is not None:  # outside the UNet: unet.to(dtype) leaves them as they are
        pipe.anystory_blocks.to(dtype=torch.float32)


# -- the run -------------------------------------------------------------------------------------


class Trainer:
    """Set-up and loop of one stage. `run()` returns the last checkpoint folder."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        check_launch()
        self.accelerator = Accelerator(
            cpu=cpu_processes(),
            mixed_precision=config.mixed_precision,
            log_with=self._trackers(),
            project_dir=str(self.output_dir / "logs"),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.accelerator.num_processes:
            running = self.accelerator.num_processes
            raise RuntimeError(f"launched as {launched} processes, but accelerate runs {running}: no device for them?")
        self.resume_from = resolve_resume(config.resume, self.output_dir)
        self.pipe = build_pipeline(config, self.resume_from, self.accelerator.device)
        self.pipe.release_encoders_after_use = False  # parts being trained stay where accelerate puts them
        self.pipe.set_progress_bar_config(disable=True)
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        dataset_class = ShardDataset if is_shard_folder(config.data) else ManifestDataset  # shards.py
        self.dataset = dataset_class(
            config.data, self.pipe.feature_extractor, config.resolution, self.pipe.anystory_config.reference_size,
            manifest=config.manifest, augment=config.augment, check=config.validate,
            max_instances=self.pipe.anystory_config.max_subjects,
        )  # fmt: skip
        cache_subjects = config.cache_subjects and config.stage == 2  # stage 1 trains the encoder
        self.encoder = InputEncoder(self.pipe, cache=config.cache_latents, cache_subjects=cache_subjects)
        self.module = TrainingModule(
            self.pipe, config.stage, self.noise_scheduler, config.routing_weight, config.gumbel_tau, cache_subjects=cache_subjects
        )
        self.trainable = self._select_trainable()
        self._cast_frozen()
        if config.gradient_checkpointing:
            self.pipe.unet.enable_gradient_checkpointing()
            if config.stage == 1:
                self.pipe.reference_net.enable_gradient_checkpointing()

        params = list(self.trainable.values())
        optimizer = make_optimizer(config, params)
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_steps
        )
        self.model, self.optimizer = self.accelerator.prepare(self.module, optimizer)
        self.step = 0
        self.samples = 0  # stream position: samples drawn by all processes so far
        if self.resume_from is not None:
            self._load_training_state(self.resume_from)
        self._stop = False

    # -- set-up helpers --

    def _trackers(self) -> list[str] | None:
        wanted = self.config.report_to
        if wanted == "none":
            return None
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            if wanted == "tensorboard":
                print("tensorboard is not installed: losses go to logs/train.jsonl only")
            return None
        return ["tensorboard"]

    def _select_trainable(self) -> dict[str, torch.nn.Parameter]:
        """The stage's parameters that can reach the loss. One probe step on the first row finds
        them: the ReferenceNet after the last block's attn1 and block 1's reference K/V never
        do, and leaving them out lets DDP run without an unused-parameter search."""
        candidates = stage_parameters(self.pipe, self.config.stage)
        for module in self.pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
        for param in candidates.values():
            param.requires_grad_(True)
        with torch.random.fork_rng(devices=[]):
            batch = self.encoder([self.dataset[(0, 0)]], torch.Generator().manual_seed(0), self.config.timesteps)
            try:
                self.module(batch)["loss"].backward()
            finally:
                self.module.release()
        used = {}
        for key, param in candidates.items():
            if param.grad is None:
                param.requires_grad_(False)
            else:
                used[key] = param
            param.grad = None
        return used

    def _cast_frozen(self) -> None:
        cast_frozen(self.pipe, self.config.mixed_precision)

    # -- checkpoints --

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step, all processes together."""
        c = self.config
        return c.batch_size * c.gradient_accumulation_steps * self.accelerator.num_processes

    def _state(self) -> dict:
        return {"step": self.step, "samples": self.samples, "global_batch": self.global_batch,
                "stage": self.config.stage, "seed": self.config.seed,
                "processes": self.accelerator.num_processes, "config": self.config.to_dict()}  # fmt: skip

    def save_checkpoint(self) -> Path:
        folder = self.output_dir / f"checkpoint-{self.step}"
        self.check_processes_agree()  # what the main process writes is what every process holds
        if self.accelerator.is_main_process:
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_adapter(self.pipe, tmp, base_model=self.config.base)
            (tmp / OPTIMIZER_FILE).parent.mkdir(parents=True, exist_ok=True)
            torch.save({"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()}, tmp / OPTIMIZER_FILE)
            (tmp / STATE_FILE).write_text(json.dumps(self._state(), indent=1))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
            keep = self.config.keep_checkpoints
            if keep is not None:
                for old in checkpoints(self.output_dir)[:-keep]:
                    if old != folder:
                        shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return folder

    def _load_training_state(self, folder: Path) -> None:
        state = json.loads((folder / STATE_FILE).read_text())
        if state["stage"] != self.config.stage:
            raise CheckpointError(f"{folder} is a stage-{state['stage']} checkpoint; this run trains stage {self.config.stage}")
        saved_config = state.get("config", {})
        saved_batch = state.get("global_batch") or (  # checkpoints from before issue 21
            saved_config.get("batch_size", 1) * saved_config.get("gradient_accumulation_steps", 1)
        ) * state.get("processes", 1)
        if saved_batch != self.global_batch and self.accelerator.is_main_process:
            print(f"warning: {folder} was trained with {saved_batch} samples a step, this run takes "
                  f"{self.global_batch}: the data stream continues where it stopped, but the steps "
                  "are not those of an uninterrupted run")  # fmt: skip
        saved = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_scheduler.load_state_dict(saved["lr_scheduler"])
        self.step = int(state["step"])
        self.samples = int(state.get("samples", self.step * saved_batch))

    # -- agreement between processes --

    def weights_fingerprint(self) -> str:
        """A digest of this process's trained weights (every value, bit for bit)."""
        return content_key(*(p.detach() for p in self.trainable.values()))

    def check_processes_agree(self) -> None:
        """Raise ProcessesDisagree unless every process holds the same trained weights (DDP keeps
        full copies; under FSDP / DeepSpeed each holds a shard and there is nothing to compare)."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1 or accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
            return
        prints = gather_object([self.weights_fingerprint()])
        if len(set(prints)) != 1:
            raise ProcessesDisagree(f"step {self.step}: the processes hold different weights ({prints})")

    # -- the loop --

    def _on_signal(self, signum, frame) -> None:
        if self._stop:  # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        print(f"\nsignal {signum}: finishing this step, then saving a checkpoint (again to abort)")
        self._stop = True

    def _log(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        path = self.output_dir / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def _log_samples(self, rows: list[int]) -> None:
        """logs/samples.jsonl: the rows each process trained on in this step (rank order)."""
        every = gather_object([rows]) if self.accelerator.num_processes > 1 else [rows]
        if self.accelerator.is_main_process:
            path = self.output_dir / SAMPLES_LOG
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps({"step": self.step + 1, "rows": every}) + "\n")

    def _trim_log(self) -> None:
        """A resumed run rewrites the logs from its checkpoint's step on."""
        for path in (self.output_dir / LOG_FILE, self.output_dir / SAMPLES_LOG):
            if self.accelerator.is_main_process and path.is_file():
                lines = [line for line in path.read_text().splitlines() if line]
                lines = [line for line in lines if json.loads(line)["step"] <= self.step]
                path.write_text("".join(line + "\n" for line in lines))

    def run(self, callback: Callable[[int, dict], bool | None] | None = None) -> Path:
        """Train to max_steps. `callback(step, losses)` after each step; returning True stops the
        run there with a checkpoint, as SIGINT / SIGTERM do."""
        config, accelerator = self.config, self.accelerator
        accum, world, rank = config.gradient_accumulation_steps, accelerator.num_processes, accelerator.process_index
        self._trim_log()
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            accelerator.init_trackers(f"anystory-stage{config.stage}", config={k: str(v) for k, v in config.to_dict().items()})
        sampler = StreamBatchSampler(len(self.dataset), config.batch_size, config.seed, self.samples, rank, world)
        loader = iter(DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=config.num_workers))
        handlers = {}
        if hasattr(signal, "SIGTERM") and _in_main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handlers[signum] = signal.signal(signum, self._on_signal)
        show = config.progress_bar and accelerator.is_local_main_process
        progress = tqdm(total=config.max_steps, initial=self.step, disable=not show, desc=f"stage {config.stage}")
        sums, count, last = {}, 0, None
        started = time.time()
        try:
            self.model.train()
            while self.step < config.max_steps:
                losses = self._train_step(loader, accum, world, rank)
                self.step += 1
                self.samples += self.global_batch
                if config.check_processes_every and self.step % config.check_processes_every == 0:
                    self.check_processes_agree()
                progress.update(1)
                progress.set_postfix(loss=f"{losses['loss']:.4f}")
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value
                count += 1
                if self.step % config.log_every == 0 or self.step == config.max_steps:
                    record = {"step": self.step, **{k: v / count for k, v in sums.items()}}
                    record.update(lr=self.lr_scheduler.get_last_lr()[0], seconds=round(time.time() - started, 2))
                    self._log(record)
                    sums, count = {}, 0
                if callback is not None and callback(self.step, losses):
                    self._stop = True
                if self._agree_to_stop():
                    last = self.save_checkpoint()
                    break
                if self.step % config.checkpoint_every == 0 or self.step == config.max_steps:
                    last = self.save_checkpoint()
        finally:
            progress.close()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            accelerator.end_training()
        if last is None:  # already at max_steps when resumed
            last = self.save_checkpoint()
        refresh(self.pipe)
        return last

    def _agree_to_stop(self) -> bool:
        flag = torch.tensor([float(self._stop)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "max").item()) if self.accelerator.num_processes > 1 else self._stop

    def _train_step(self, loader, accum: int, world: int, rank: int) -> dict[str, float]:
        """One optimizer step: `accum` micro-batches, each sample its own forward and backward
        (gradients add up; DDP syncs on the last backward only)."""
        config, accelerator = self.config, self.accelerator
        totals, rows = {}, []
        for micro in range(accum):
            samples = next(loader)
            rows += [sample["index"] for sample in samples]
            # per sample, from its stream position (its draw seed): not from the process or the batch
            generators = [torch.Generator().manual_seed(draw_seed(sample["draw"], NOISE_DRAW)) for sample in samples]
            batch = self.encoder(samples, generators, config.timesteps)
            for j, (item, sample) in enumerate(zip(batch, samples)):
                sync = micro == accum - 1 and j == len(batch) - 1
                scale = accum * len(batch)
                torch.manual_seed(draw_seed(sample["draw"], TORCH_DRAW))  # Gumbel noise, dropout
                with contextlib.nullcontext() if sync else accelerator.no_sync(self.model):
                    try:
                        with accelerator.autocast():
                            losses = self.model([item])
                        accelerator.backward(losses["loss"] / scale)
                    finally:
                        self.module.release()
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + value.detach().float() / scale
        if config.log_samples:
            self._log_samples(rows)
        out = {}
        for name, value in totals.items():
            value = accelerator.reduce(value, "mean") if world > 1 else value
            if not math.isfinite(value.item()):  # before the update: the weights stay usable
                raise FloatingPointError(f"step {self.step + 1}: the {name} loss is {value.item()}")
            out[name] = value.item()
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(list(self.trainable.values()), config.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(config: TrainConfig, callback=None) -> tuple[Path, AnyStoryPipeline]:
    """Run one stage; returns (last checkpoint folder, the trained pipeline)."""
    trainer = Trainer(config)
    folder = trainer.run(callback)
    return folder, trainer.pipe
