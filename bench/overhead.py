"""What personalization costs over plain SDXL: time per image and peak memory, side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/overhead.py                 # CPU: bf16, 256x256, 4 steps
    HF_HUB_OFFLINE=1 python bench/overhead.py --compile --offload       # CUDA: fp16, 1024x1024, 25 steps

The FULL SDXL UNet and VAE with random weights (speed and memory do not depend on the values),
small text encoders of the right widths (they run once per image), written with save_pretrained
and loaded by `AnyStoryPipeline.from_pretrained(folder, adapter="init")` (bench/full_sdxl.py).
The plain pipeline is diffusers' `StableDiffusionXLPipeline` built from the SAME component
objects: its UNet carries the AnyStory processors, which without an InjectionContext are exactly
`AttnProcessor2_0` (the row "plain, stock processors" swaps diffusers' own in, to show that).

Subjects are encoded once before timing (reference 512x512), as the Studio caches them. All runs
alternate in one process (one round = every variant once), after one warm-up round; the table
gives the median over rounds. Memory: on CUDA the peak allocated during the call (and the plain
SDXL figure without the AnyStory weights that sit in the shared UNet); on CPU the peak RSS over
the RSS before the call (VmHWM reset through /proc/self/clear_refs).

--compile (CUDA): regional torch.compile of what the processors do not touch (every ResnetBlock2D
and every transformer block's feed-forward), on the shared UNet, so plain and AnyStory both get it.
--offload (CUDA): the memory rows again with `enable_model_cpu_offload()`.
--profile: torch profiler of one plain and one 2-subject run, by AnyStory region and by op.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.full_sdxl import (  # noqa: E402
    Timer,
    load_average,
    load_full_anystory,
    peak_rss_mb,
    plain_twin,
    reset_peak_rss,
    rss_mb,
    write_full_sdxl,
)
from anystory.tiny import synthetic_subject  # noqa: E402

PROMPT = "a girl and her dog walking in a park, storybook illustration"
LAYOUT = [(0.0, 0.1, 0.34, 1.0), (0.33, 0.1, 0.67, 1.0), (0.66, 0.1, 1.0, 1.0)]


def anystory_weight_bytes(pipe, device: torch.device) -> int:
    """Bytes of the AnyStory parts that live inside the UNet (processors: W~, W', routers) on `device`."""
    total = 0
    for proc in sum(pipe.anystory_processors(), []):
        for tensor in list(proc.parameters()) + list(proc.buffers()):
            if tensor.device.type == device.type:
                total += tensor.numel() * tensor.element_size()
    return total


def encoding_bytes(encoding) -> int:
    return sum(t.numel() * t.element_size() for t in encoding.state_dict().values())


def variants(pipe, plain, subjects, args) -> list[tuple[str, str, int, callable]]:
    """(label, router, subjects, run(generator)) for every row of the table."""
    common = dict(num_inference_steps=args.steps, height=args.size, width=args.size, output_type=args.output_type)

    def plain_run(generator):
        return plain(PROMPT, generator=generator, **common)

    @contextlib.contextmanager
    def stock_processors():
        from diffusers.models.attention_processor import AttnProcessor2_0

        saved = dict(pipe.unet.attn_processors)
        pipe.unet.set_attn_processor(AttnProcessor2_0())
        try:
            yield
        finally:
            pipe.unet.set_attn_processor(saved)

    def plain_stock(generator):
        with stock_processors():
            return plain(PROMPT, generator=generator, **common)

    def anystory(n, **extra):
        def run(generator):
            return pipe(PROMPT, subjects=subjects[:n], generator=generator, **common, **extra)

        return run

    rows = [
        ("plain SDXL (diffusers pipeline)", "-", 0, plain_run),
        ("plain, stock AttnProcessor2_0", "-", 0, plain_stock),
        ("AnyStory", "-", 0, anystory(0)),
    ]
    for n in args.subjects:
        if n:
            rows.append(("AnyStory", "learned", n, anystory(n, router="learned")))
    if not args.quick:
        n = 2
        rows += [
            ("AnyStory, layout router", "layout", n, anystory(n, router="layout", layout=LAYOUT[:n])),
            ("AnyStory, reference path off", "learned", n, anystory(n, router="learned", reference_schedule=None)),
            ("AnyStory, CLIP path off", "learned", n, anystory(n, router="learned", clip_schedule=None)),
            (
                "AnyStory, router only (both paths off)",
                "learned",
                n,
                anystory(n, router="learned", clip_schedule=None, reference_schedule=None),
            ),
        ]
    return rows


def measure(rows, device: torch.device, repeats: int) -> dict:
    """Alternating rounds after one warm-up round: times and peak memory per row."""
    results = {i: {"times": [], "peak": [], "delta": []} for i in range(len(rows))}
    for round_index in range(repeats + 1):
        for i, (_, _, _, run) in enumerate(rows):
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            else:
                before = rss_mb()
                reset_peak_rss()
            with Timer(device) as timer:
                run(torch.Generator("cpu").manual_seed(0))
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated() / 2**20
                delta = peak - before / 2**20
            else:
                peak = peak_rss_mb()
                delta = peak - before
            if round_index == 0:
                continue  # warm-up
            results[i]["times"].append(timer.seconds)
            results[i]["peak"].append(peak)
            results[i]["delta"].append(delta)
        if round_index:
            print(f"  round {round_index}/{repeats} done, load {load_average()}", file=sys.stderr, flush=True)
    return results


def print_table(rows, results, device, extra_mb: float) -> None:
    base = statistics.median(results[0]["times"])
    if device.type == "cuda":
        plain_peak = max(results[0]["peak"]) - extra_mb
        print("| run | router | subjects | s / image (median) | min-max | vs plain | peak alloc GB | vs plain SDXL GB |")
        print("|---|---|---|---|---|---|---|---|")
    else:
        print("| run | router | subjects | s / image (median) | min-max | vs plain | peak RSS over start MB |")
        print("|---|---|---|---|---|---|---|")
    for i, (label, router, n, _) in enumerate(rows):
        times = results[i]["times"]
        median = statistics.median(times)
        cells = [label, router, str(n), f"{median:.2f}", f"{min(times):.2f}-{max(times):.2f}", f"{median / base:.3f}x"]
        if device.type == "cuda":
            peak = max(results[i]["peak"])
            cells += [f"{peak / 1024:.2f}", f"{(peak - plain_peak) / 1024:+.2f}"]
        else:
            cells += [f"{max(results[i]['delta']):.0f}"]
        print("| " + " | ".join(cells) + " |")


def profile(pipe, plain, subjects, args, device) -> None:
    """Where the time goes: AnyStory regions (record_function labels) and the top ops."""
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

    from anystory import attention, router

    def labelled(cls, attr, label):
        original = getattr(cls, attr)

        def wrapper(*a, **k):
            with record_function(label):
                return original(*a, **k)

        return original, wrapper

    patches = [
        (attention.ReferenceAttnProcessor, "__call__", "## attn1 (self + reference)"),
        (attention.RoutedCrossAttnProcessor, "__call__", "## attn2 (text + CLIP path + router)"),
        (attention.RoutedCrossAttnProcessor, "_image_attention", "## attn2: CLIP path"),
        (router.SubjectRouter, "forward", "## attn2: learned router"),
        (attention.InjectionContext, "publish_routes", "## publish_routes (votes)"),
        (attention.InjectionContext, "previous_routes", "## attn1: previous routes resize"),
        (attention.InjectionContext, "reference_tokens", "## attn1: gather reference K/V"),
    ]
    saved = []
    for cls, attr, label in patches:
        original, wrapper = labelled(cls, attr, label)
        saved.append((cls, attr, original))
        setattr(cls, attr, wrapper)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    common = dict(num_inference_steps=args.steps, height=args.size, width=args.size, output_type="latent")
    try:
        for name, run in (
            ("plain", lambda g: plain(PROMPT, generator=g, **common)),
            ("2 subjects, learned router", lambda g: pipe(PROMPT, subjects=subjects[:2], router="learned", generator=g, **common)),
        ):
            run(torch.Generator().manual_seed(0))
            with torch_profile(activities=activities) as prof:
                run(torch.Generator().manual_seed(0))
            events = prof.key_averages()
            print(f"\n### profile: {name} ({args.size}x{args.size}, {args.steps} steps, denoising only)")
            print("| region | calls | total ms (inclusive) |")
            print("|---|---|---|")
            for event in sorted(events, key=lambda e: e.key):
                if event.key.startswith("## "):
                    total = event.device_time_total if device.type == "cuda" else event.cpu_time_total
                    print(f"| {event.key[3:]} | {event.count} | {total / 1000:.1f} |")
            print()
            print(events.table(sort_by=sort, row_limit=18, max_name_column_width=48))
    finally:
        for cls, attr, original in saved:
            setattr(cls, attr, original)


def regional_compile(unet) -> int:
    """torch.compile every ResnetBlock2D and every transformer feed-forward (the AnyStory
    processors stay eager); in place, so every pipeline sharing the UNet gets it."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D

    count = 0
    for module in unet.modules():
        if isinstance(module, (ResnetBlock2D, FeedForward)):
            module.compile(dynamic=False)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="default: fp16 on CUDA, bf16 on CPU")
    parser.add_argument("--size", type=int, default=None, help="default: 1024 on CUDA, 256 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 25 on CUDA, 4 on CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--output-type", default="pil")
    parser.add_argument("--quick", action="store_true", help="only plain and 0..3 subjects (no breakdown rows)")
    parser.add_argument("--compile", action="store_true", help="CUDA: also measure with regional torch.compile")
    parser.add_argument("--offload", action="store_true", help="CUDA: also measure with enable_model_cpu_offload()")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--model-dir", default=None, help="keep/reuse the written full-size folder here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype or ("fp16" if cuda else "bf16")]
    args.size = args.size or (1024 if cuda else 256)
    args.steps = args.steps or (25 if cuda else 4)
    started = datetime.datetime.now().isoformat(timespec="minutes")

    with contextlib.ExitStack() as stack:
        folder = args.model_dir or stack.enter_context(tempfile.TemporaryDirectory()) + "/full-sdxl"
        write_full_sdxl(folder, image_layers=2, dtype=dtype)
        pipe = load_full_anystory(folder, dtype, device)
    plain = plain_twin(pipe)

    images = [synthetic_subject(seed, size=(384, 512)) for seed in (1, 2, 3)]
    subjects = [pipe.encode_subject(image) for image in images]  # once, before any timing
    pipe.background_encoding()
    extra = anystory_weight_bytes(pipe, device) / 2**20
    where = {name: str(getattr(pipe, name).device) for name in ("reference_net", "image_encoder", "subject_encoder")}

    print(f"## bench/overhead.py, {started}")
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}" + (f", {torch.cuda.get_device_name()}" if cuda else ""))  # fmt: skip
    print(f"full SDXL UNet + VAE, {str(dtype).split('.')[-1]}, {args.size}x{args.size}, {args.steps} steps, CFG 5.0, "
          f"Euler, output {args.output_type}; median of {args.repeats} alternating rounds after 1 warm-up round")  # fmt: skip
    print(f"subjects encoded before timing (reference 512x512): {encoding_bytes(subjects[0]) / 2**20:.0f} MB per encoding "
          f"in memory; AnyStory weights inside the UNet (W~, W', 70 routers): {extra:.0f} MB; encoders after encoding: {where}")  # fmt: skip
    print(f"load average before: {load_average()}")

    rows = variants(pipe, plain, subjects, args)
    results = measure(rows, device, args.repeats)
    print(f"load average after: {load_average()}\n")
    print_table(rows, results, device, extra)

    if cuda and args.compile:
        try:
            count = regional_compile(pipe.unet)
            quick = [row for row in rows if row[0].startswith(("plain SDXL", "AnyStory")) and row[1] in ("-", "learned")]
            quick = [row for row in quick if "off" not in row[0]]
            results = measure(quick, device, args.repeats)
            print(f"\n### with torch.compile (regional: {count} ResnetBlock2D / FeedForward modules)\n")
            print_table(quick, results, device, extra)
        except Exception as err:  # report and go on: compile support varies
            print(f"\ntorch.compile failed: {type(err).__name__}: {err}")

    if cuda and args.offload:
        pipe.enable_model_cpu_offload()
        rows_offload = [
            ("plain SDXL path (AnyStory, 0 subjects)", "-", 0),
            ("AnyStory", "learned", 2),
        ]
        print("\n### enable_model_cpu_offload(): peak GPU memory (first call after encoding, then steady)\n")
        print("| run | router | subjects | first call GB | steady GB | s / image |")
        print("|---|---|---|---|---|---|")
        fresh = [pipe.encode_subject(image) for image in images[:2]]  # encoders hooked now
        for label, router, n in rows_offload:
            peaks, times = [], []
            for _ in range(3):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                kwargs = dict(router=router) if n else {}
                with Timer(device) as timer:
                    pipe(PROMPT, subjects=fresh[:n], num_inference_steps=args.steps, height=args.size,
                         width=args.size, generator=torch.Generator().manual_seed(0), **kwargs)  # fmt: skip
                peaks.append(torch.cuda.max_memory_allocated() / 2**30)
                times.append(timer.seconds)
            print(f"| {label} | {router} | {n} | {peaks[0]:.2f} | {statistics.median(peaks[1:]):.2f} | {statistics.median(times):.2f} |")
            if not n:
                fresh = [pipe.encode_subject(image) for image in images[:2]]  # encode right before the 2-subject call

    if args.profile:
        profile(pipe, plain, subjects, args, device)


if __name__ == "__main__":
    main()
