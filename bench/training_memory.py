"""The memory plan (anystory/training/plan.py) against measured peaks, on the tiny SDXL on CPU.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/training_memory.py [--resolution 512] [--reference-size 256]

For stage 1 and 2, gradient checkpointing off and on: one sample's forward and backward (float32)
on the tiny SDXL at the given shapes, in a fresh process each. Measured: the process's peak
resident memory during the step (VmHWM, reset just before it through /proc/self/clear_refs) minus
its resident memory just before, with glibc's mmap threshold fixed at 64 KiB so that every
tensor's memory goes back to the system when it is freed. Planned: the activations the plan counts
(saved tensors, on the meta device at the same shapes) + the float32 gradients of the trained
parameters. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MIB = 1024**2


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def pipeline(base: str, stage: int, device: str):
    """The tiny pipeline with fresh AnyStory parts (stage 2: with a router), on `device`."""
    from accelerate import init_empty_weights

    from anystory import AnyStoryPipeline
    from anystory.pipeline import AnyStoryConfig

    pipe = AnyStoryPipeline.from_pretrained(base, adapter="init", local_files_only=True)
    config = AnyStoryConfig.for_models(pipe.unet, pipe.vae_scale_factor)
    if stage == 1:
        config = AnyStoryConfig(**{**config.__dict__, "routing_dim": 0})
    if device == "meta":
        pipe._fingerprint = lambda: "meta"
        pipe.to("meta")
        with init_empty_weights(include_buffers=True):
            pipe.init_anystory(config)
    else:
        pipe.init_anystory(config)
    return pipe


def measure(base: str, stage: int, checkpointing: bool, resolution: int, reference_size: int) -> dict:
    """In this process (started with the mmap threshold set): planned and measured bytes."""
    import gc

    import torch
    from diffusers import DDPMScheduler

    from anystory.training.plan import PlanSettings, count, training_item
    from anystory.training.step import TrainingModule

    settings = PlanSettings(stage=stage, mixed_precision="no", resolution=resolution, reference_size=reference_size)
    meta = pipeline(base, stage, "meta")  # counted without checkpointing: the plan derives that case
    counts = count(meta, settings)
    planned = (counts.activations_checkpointed if checkpointing else counts.activations) + counts.trained * 4

    pipe = pipeline(base, stage, "cpu")
    module = TrainingModule(pipe, stage, DDPMScheduler.from_config(pipe.scheduler.config))
    real = count(pipe, settings, device="cpu")  # the same count on real tensors; sets the trained set
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        pipe.reference_net.enable_gradient_checkpointing()
    item = training_item(pipe, settings, "cpu")
    torch.manual_seed(0)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size
    before = _status("VmRSS")
    module._sample_loss(item)["loss"].backward()
    peak = _status("VmHWM")
    return {
        "stage": stage,
        "checkpointing": checkpointing,
        "planned": planned,
        "measured": peak - before,
        "activations_meta": counts.activations,
        "activations_real": real.activations,
        "trained": counts.trained,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--reference-size", type=int, default=256)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        base, stage, checkpointing = json.loads(args.child)
        print(json.dumps(measure(base, stage, checkpointing, args.resolution, args.reference_size)))
        return 0
    from anystory.tiny import write_tiny_sdxl

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = str(write_tiny_sdxl(Path(tmp) / "tiny"))
        for stage in (1, 2):
            for checkpointing in (False, True):
                child = json.dumps([base, stage, checkpointing])
                command = [sys.executable, __file__, "--resolution", str(args.resolution),
                           "--reference-size", str(args.reference_size), "--child", child]  # fmt: skip
                out = subprocess.run(command, env=env, capture_output=True, text=True)
                if out.returncode:
                    print(out.stderr[-3000:])
                    return 1
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    shapes = f"{args.resolution} px targets, {args.reference_size} px references"
    print(f"tiny SDXL, {shapes}, 2 subjects, float32, one sample\n")
    print("| stage | checkpointing | planned MiB (activations + grads) | measured peak MiB | measured / planned |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {'on' if r['checkpointing'] else 'off'} | {r['planned'] / MIB:.1f} | "
              f"{r['measured'] / MIB:.1f} | {r['measured'] / r['planned']:.2f} |")  # fmt: skip
    gap = max(abs(r["activations_meta"] / r["activations_real"] - 1) for r in rows)
    print(f"\nsaved-tensor count without checkpointing, meta device vs real tensors: within {gap:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
