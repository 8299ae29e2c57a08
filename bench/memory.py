"""Peak memory of one image at 1024x1024: plain SDXL against AnyStory with 0-3 subjects.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/memory.py --model-dir work/full-sdxl      # CPU: bf16, 2 steps
    HF_HUB_OFFLINE=1 python bench/memory.py                                           # CUDA: fp16, 25 steps

What a GPU holds while it makes one image = the weights and encodings resident on it + the peak
of the tensors made during the call (activations, latents, attention inputs). On CUDA both are
read off the caching allocator (`torch.cuda.max_memory_allocated`). Without a GPU the same
quantity is measured on the CPU: the second term from torch's CPU allocator, whose every
allocation and free the profiler records in order (`profile_memory=True`): the peak of the bytes
alive during the call over those alive before it; the first from the parameter and encoding
sizes. bf16 has the bytes of fp16. Kernels differ between devices (flash attention's work
buffers, cuDNN workspaces), so the CPU figures estimate the GPU's; the AnyStory-minus-plain
difference is what the target is about, and both sides share the kernels' choices.

The denoising loop (`output_type="latent"`) and the VAE decode are measured apart. Without
offload the GPU peak is the larger of resident + denoising peak and resident + decode peak; the
decode is the same call for plain SDXL and AnyStory, so what AnyStory adds is the difference of
the denoising phase ("over plain SDXL"). Under `enable_model_cpu_offload()` the GPU holds one
model at a time, so the offload peak is the largest of (UNet with the AnyStory parts +
encodings + denoising peak), (VAE + decode peak) and the text encoders.
The full-size model is random (bench/full_sdxl.py): memory does not depend on weight values.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.full_sdxl import add_machine_arguments, full_anystory, machine_from, plain_twin, subject_pictures  # noqa: E402
from bench.overhead import PROMPT, TARGET_MEMORY_GB, encoding_mb  # noqa: E402

GIB = 2**30
# SDXL's two text encoders (CLIP ViT-L/14 text 123,060,480 + OpenCLIP bigG text 694,659,840
# parameters): the benchmark's own are small, so the resident figures count the real ones.
SDXL_TEXT_ENCODER_PARAMS = 123_060_480 + 694_659_840
CARD_GB = 12  # the offload target: the whole app at 1024x1024 on a 12 GB card


def allocation_peak_cpu(run) -> tuple[int, int | None, object]:
    """Bytes: the peak of CPU tensor memory alive during `run()` over what was alive at its start,
    from the profiler's allocation records; None (what was alive before is not recorded); and
    run's result."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = run()
    records, pending = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        pending.extend(node.children)
        if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == "cpu":
            records.append((node.start_time_ns, node.typed[1].alloc_size))
    records.sort()
    live = peak = 0
    for _, size in records:  # frees are negative sizes
        live += size
        peak = max(peak, live)
    return peak, None, result


def allocation_peak_cuda(run) -> tuple[int, int, object]:
    """Bytes: the CUDA allocator's peak during `run()` over what was allocated at its start; that
    start; and run's result."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start, start, result


def module_bytes(*modules) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in list(m.parameters()) + list(m.buffers()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_machine_arguments(parser)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=None, help="default: 25 on CUDA, 2 on CPU (the peak is per step)")
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    device, dtype = machine_from(args)
    cuda = device.type == "cuda"
    steps = args.steps or (25 if cuda else 2)
    peak_of = allocation_peak_cuda if cuda else allocation_peak_cpu
    started = datetime.datetime.now().isoformat(timespec="minutes")

    pipe = full_anystory(args.model_dir, dtype, device)
    plain = plain_twin(pipe)
    images = subject_pictures(3)
    subjects = [pipe.encode_subject(image) for image in images]  # encoders released after (to CPU on CUDA)
    background = pipe.background_encoding()

    # The AnyStory parts that act in the UNet's attention (pipe.anystory_blocks, outside the UNet):
    # W~ leaves the GPU with the encoders after encoding (pipe.encoder_modules()); W' and the routers
    # stay for generation, also under model CPU offload (excluded from it: no hook would bring them).
    self_attn, _ = pipe.anystory_processors()
    encode_side = [m for m in pipe.encoder_modules() if any(m is p.weights for p in self_attn)]
    w_tilde_gb = module_bytes(*encode_side) / GIB
    anystory_gb = module_bytes(pipe.anystory_blocks) / GIB - w_tilde_gb
    unet_gb = module_bytes(pipe.unet) / GIB  # plain SDXL: the AnyStory weights live outside it
    vae_gb = module_bytes(pipe.vae) / GIB
    text_gb = SDXL_TEXT_ENCODER_PARAMS * torch.finfo(dtype).bits / 8 / GIB
    encodings_gb = [sum(encoding_mb(s) for s in subjects[:n]) / 1024 + encoding_mb(background) / 1024 for n in range(4)]

    machine = f"{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}"
    machine += f", {torch.cuda.get_device_name()}" if cuda else f", {torch.get_num_threads()} threads"
    print(f"## bench/memory.py, {started}\n")
    print(f"machine: {machine}")
    print(f"full SDXL UNet + VAE, {str(dtype).split('.')[-1]}, {args.size}x{args.size}, {steps} steps, CFG 5.0")
    print(f"weights (GB): UNet {unet_gb:.2f}, AnyStory parts inside it at generation (W', 70 routers) {anystory_gb:.2f} + W~ {w_tilde_gb:.2f} (leaves the GPU with the encoders), "
          f"VAE {vae_gb:.2f}, text encoders (SDXL's sizes) {text_gb:.2f}; one encoding {encoding_mb(subjects[0]):.0f} MB")  # fmt: skip
    if not cuda:
        print("peaks: the CPU allocator's (profiler allocation records); resident: parameter and encoding bytes")
    print()

    common = dict(num_inference_steps=steps, height=args.size, width=args.size, output_type="latent")
    rows = [("plain SDXL (diffusers pipeline)", 0, lambda g: plain(PROMPT, generator=g, **common))]
    rows += [(f"AnyStory, {n} subject{'s' * (n != 1)}", n,
              (lambda n: lambda g: pipe(PROMPT, subjects=subjects[:n], router="learned" if n else None, generator=g, **common))(n))
             for n in [0] + args.subjects]  # fmt: skip

    print("| run | resident GB | denoising peak GB | resident + denoising GB | over plain SDXL GB | resident + decode GB | offload peak GB |")
    print("|---|---|---|---|---|---|---|")
    decode_gb = None
    plain_total = None
    summary = {}
    for label, n, run in rows:
        gc.collect()
        peak, start, output = peak_of(lambda: run(torch.Generator("cpu").manual_seed(0)))
        denoise_gb = peak / GIB
        if decode_gb is None:  # the same VAE decode for every row
            latents = output.images / pipe.vae.config.scaling_factor
            decode_peak, _, _ = peak_of(lambda: pipe.vae.decode(latents.to(pipe.vae.dtype)))
            decode_gb = decode_peak / GIB
        plain_row = label.startswith("plain")
        extra_gb = 0 if plain_row else anystory_gb + encodings_gb[n]
        if start is None:  # CPU: what the GPU would hold
            resident = unet_gb + vae_gb + text_gb + extra_gb
        else:  # CUDA: measured; the plain pipeline shares the UNet but would not hold AnyStory's parts
            resident = start / GIB - (anystory_gb if plain_row else 0)
        total = resident + denoise_gb  # the denoising phase; the decode that follows is the same call for every row
        plain_total = total if plain_row else plain_total
        unet_side = unet_gb + (0 if plain_row else extra_gb + w_tilde_gb) + denoise_gb
        offload = max(unet_side, vae_gb + decode_gb, text_gb)
        over = total - plain_total
        summary[n if not plain_row else "plain"] = (over, offload)
        print(f"| {label} | {resident:.2f} | {denoise_gb:.2f} | {total:.2f} | {over:+.2f} | {resident + decode_gb:.2f} | {offload:.2f} |")

    if 2 in summary:
        over, offload = summary[2]
        print(f"\ntarget, GPU peak with 2 subjects <= plain SDXL + {TARGET_MEMORY_GB} GB: {over:+.2f} GB -> "
              f"{'MET' if over <= TARGET_MEMORY_GB else 'MISSED'}{'' if cuda else ' (CPU estimate)'}")  # fmt: skip
        print(f"target, 2 subjects at {args.size}x{args.size} with model CPU offload within a {CARD_GB} GB card: "
              f"{offload:.2f} GB -> {'MET' if offload <= CARD_GB else 'MISSED'}{'' if cuda else ' (CPU estimate)'}")  # fmt: skip


if __name__ == "__main__":
    main()
