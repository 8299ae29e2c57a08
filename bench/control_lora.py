"""Memory and time of a panel with a ControlNet and with a LoRA, on the full-size SDXL (random weights).

    HF_HUB_OFFLINE=1 nice -n 15 .venv/bin/python bench/control_lora.py --threads 1 --size 256 --steps 2

Public-weights mode (the app's default), 2 subjects and no subjects; rows: as is, with a full-size
SDXL ControlNet (`ControlNetModel.from_unet` of the UNet: 1.25 B parameters, as the public SDXL
ControlNets), with a rank-16 LoRA on every attention projection of the UNet (PEFT, through
`load_lora`). Weight bytes are counted from the parameters; the peak is the process's resident
set (VmHWM, reset before each call) over what was resident before it; time is wall and CPU
seconds of the call (after a warm-up call; the best of --repeats by CPU time, which on a shared
machine varies less than wall time). Speed and memory
do not depend on the weights' values (bench/full_sdxl.py).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anystory.tiny_control import edge_picture  # noqa: E402
from bench.full_sdxl import (  # noqa: E402
    Timer,
    add_machine_arguments,
    load_average,
    load_full_public,
    machine_from,
    model_folder,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    subject_pictures,
)

PROMPT = "a girl and her dog in a park"
GIB = 2**30


def weight_gb(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / GIB


def full_controlnet(unet, dtype: torch.dtype):
    """A full-size SDXL ControlNet from the UNet, its zero convolutions drawn at random (so it acts)."""
    from anystory.tiny_control import tiny_controlnet

    return tiny_controlnet(unet, conditioning_channels=(16, 32, 96, 256)).to(dtype)


def write_full_lora(pipe, path: Path, rank: int = 16) -> Path:
    """A rank-`rank` LoRA of every attention projection of the UNet, as one .safetensors file."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0"])  # fmt: skip
    pipe.unet.add_adapter(config, adapter_name="bench_lora")
    state = get_peft_model_state_dict(pipe.unet, adapter_name="bench_lora")
    pipe.unet.delete_adapters("bench_lora")
    StableDiffusionXLPipeline.save_lora_weights(path.parent, unet_lora_layers=state, weight_name=path.name)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_arguments(parser)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (1024: SDXL's own)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per row after a warm-up (best kept)")
    args = parser.parse_args()
    device, dtype = machine_from(args)
    with model_folder(args.model_dir) as folder:
        pipe, _ = load_full_public(folder, dtype, device)
    subjects = [pipe.encode_subject(image) for image in subject_pictures(2)]
    controlnet = full_controlnet(pipe.unet, dtype)
    edges = edge_picture(args.size, seed=0)
    common = dict(height=args.size, width=args.size, num_inference_steps=args.steps, output_type="latent")
    with_subjects = dict(subjects=subjects, subject_phrases=["a girl", "her dog"])
    rows = []

    def run(label: str, **extra) -> None:
        """One warm-up call (kernels are made on first use), then the best of `--repeats`."""
        pipe(PROMPT, generator=torch.Generator().manual_seed(0), **common, **extra)
        best = None
        for _ in range(args.repeats):
            reset_peak_rss()
            before = rss_mb()
            with Timer(device) as timer:
                pipe(PROMPT, generator=torch.Generator().manual_seed(0), **common, **extra)
            row = (label, timer.seconds, timer.cpu_seconds, before / 1024, (peak_rss_mb() - before) / 1024)
            best = row if best is None or row[2] < best[2] else best
        rows.append(best)
        print(rows[-1], flush=True)

    control = dict(controlnet=controlnet, control_image=edges, controlnet_conditioning_scale=0.8)
    run("no subjects")
    run("no subjects + ControlNet", **control)
    run("2 subjects")
    run("2 subjects + ControlNet", **with_subjects, **control)
    with tempfile.TemporaryDirectory() as temporary:
        lora = write_full_lora(pipe, Path(temporary) / "bench-lora.safetensors")
        lora_gb = Path(lora).stat().st_size / GIB
        pipe.load_lora(lora, weight=0.8)
    run("no subjects + LoRA")
    run("2 subjects + LoRA", **with_subjects)

    print(f"\n{datetime.date.today()}, {platform.node()}, torch {torch.__version__}, {device} {dtype}, "
          f"threads {torch.get_num_threads()}, load {load_average()}; {args.size}x{args.size}, {args.steps} steps, "
          "CFG on, denoising only (output_type='latent')")  # fmt: skip
    print(f"weights: UNet {weight_gb(pipe.unet):.2f} GB, ControlNet {weight_gb(controlnet):.2f} GB, "
          f"LoRA file {lora_gb:.3f} GB ({dtype})\n")
    print("| run | wall s | CPU s | resident GB | peak over resident GB |\n|---|---|---|---|---|")
    for label, wall, cpu, before, peak in rows:
        print(f"| {label} | {wall:.1f} | {cpu:.1f} | {before:.2f} | {peak:.2f} |")


if __name__ == "__main__":
    main()
