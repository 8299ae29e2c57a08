"""What personalization costs over plain SDXL: time per image and peak memory, side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/overhead.py                   # CPU: bf16, 256x256, 4 steps
    HF_HUB_OFFLINE=1 .venv/bin/python bench/overhead.py --mode public     # the app's default path and its peer
    HF_HUB_OFFLINE=1 python bench/overhead.py --compile --offload         # CUDA: fp16, 1024x1024, 25 steps

--mode checkpoint (the default) measures AnyStory's own parts (`adapter="init"`, learned router).
--mode public measures the app's default path: public-weights mode (an IP-Adapter Plus file in the
release's exact layout, random values, over a ViT-H-shaped image encoder) with the prompt router
and the layout router, 1-3 subjects, with and without the route record the Studio keeps; and the
peer a user would pick instead: diffusers' own `StableDiffusionXLPipeline` + `load_ip_adapter` of
the same file with two images and `ip_adapter_masks` (its image embeddings made once, as
AnyStory's encodings are; a second row encodes the images at every call, as `ip_adapter_image`
does).

The FULL SDXL UNet and VAE with random weights (speed and memory do not depend on the values),
small text encoders of the right widths (they run once per image), written with save_pretrained
and loaded by `AnyStoryPipeline.from_pretrained(folder, adapter="init")` (bench/full_sdxl.py).
The plain pipeline is diffusers' `StableDiffusionXLPipeline` built from the SAME component
objects: its UNet carries the AnyStory processors, which without an InjectionContext are exactly
`AttnProcessor2_0` (the row "plain, stock AttnProcessor2_0" swaps diffusers' own in to show it).

Subjects are encoded once before timing (reference 512x512), as the Studio caches them. All runs
alternate in one process (a round = every row once), after one warm-up round; the table gives the
median over the rounds. Memory: on CUDA the peak allocated during the call, and its difference to
plain SDXL WITHOUT the AnyStory weights that sit in the shared UNet (what a plain SDXL pipeline
would hold); on CPU the peak RSS over the RSS before the call (VmHWM reset by /proc/self/clear_refs).

--compile (CUDA): the rows again with regional torch.compile of what the processors do not touch
(every ResnetBlock2D and transformer feed-forward), on the shared UNet, so plain and AnyStory
both get it. --offload (CUDA): peak memory with `enable_model_cpu_offload()`, for the first call
after encoding and in steady state. --profile: torch profiler of a plain and a 2-subject run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.full_sdxl import (  # noqa: E402
    Timer,
    add_machine_arguments,
    full_anystory,
    load_average,
    load_full_public,
    machine_from,
    model_folder,
    peak_rss_mb,
    plain_twin,
    reset_peak_rss,
    rss_mb,
    subject_pictures,
)

PROMPT = "a girl, her dog and a robot walking in a park, storybook illustration"
PHRASES = ["a girl", "her dog", "a robot"]  # each subject's words in PROMPT (prompt router)
LAYOUT = [(0.0, 0.1, 0.34, 1.0), (0.33, 0.1, 0.67, 1.0), (0.66, 0.1, 1.0, 1.0)]
TARGET_RATIO = {"cpu": 1.3, "cuda": 1.2}
TARGET_MEMORY_GB = 1.5
TARGET_PUBLIC = 1.12  # the default path, 2 subjects, route record on (issue 19), and <= the peer
DEFAULT_ROW = "AnyStory public, prompt router, route record"
PEER_ROW = "diffusers IP-Adapter Plus, 2 masked images"


def anystory_weight_mb(pipe, device: torch.device) -> float:
    """The AnyStory parts that act inside the UNet's attention (W~, W', routers: `pipe.anystory_blocks`,
    held outside the UNet's module tree) on `device`."""
    total = 0
    for module in [pipe.anystory_blocks] if pipe.anystory_blocks is not None else []:
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.device.type == device.type:
                total += tensor.numel() * tensor.element_size()
    return total / 2**20


def encoding_mb(encoding) -> float:
    return sum(t.numel() * t.element_size() for t in encoding.state_dict().values()) / 2**20


@contextlib.contextmanager
def stock_processors(unet):
    from diffusers.models.attention_processor import AttnProcessor2_0

    saved = dict(unet.attn_processors)
    unet.set_attn_processor(AttnProcessor2_0())
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


def table_rows(pipe, plain, subjects, args, device) -> list[tuple[str, str, int, callable]]:
    """(label, router, subjects, run(generator)) for every row of the checkpoint-mode table."""
    common = dict(num_inference_steps=args.steps, height=args.size, width=args.size, output_type=args.output_type)

    def plain_run(generator):
        return plain(PROMPT, generator=generator, **common)

    def plain_stock(generator):
        with stock_processors(pipe.unet):
            return plain(PROMPT, generator=generator, **common)

    def anystory(n, **extra):
        return lambda generator: pipe(PROMPT, subjects=subjects[:n], generator=generator, **common, **extra)

    rows = [("plain SDXL (diffusers pipeline)", "-", 0, plain_run)]
    if not args.quick:
        rows.append(("plain, stock AttnProcessor2_0", "-", 0, plain_stock))
    rows.append(("AnyStory", "-", 0, anystory(0)))
    rows += [("AnyStory", "learned", n, anystory(n, router="learned")) for n in args.subjects if n]
    if not args.quick:
        n = 2
        off = dict(router="learned", clip_schedule=None, reference_schedule=None)
        rows += [
            ("AnyStory, layout router", "layout", n, anystory(n, router="layout", layout=LAYOUT[:n])),
            ("AnyStory, reference path off", "learned", n, anystory(n, router="learned", reference_schedule=None)),
            ("AnyStory, CLIP path off", "learned", n, anystory(n, router="learned", clip_schedule=None)),
            ("AnyStory, router only (both paths off)", "learned", n, anystory(n, **off)),
        ]
        record = dict(router="learned", return_route_record=True)  # kept on the device, one copy at the end
        rows.append(("AnyStory, return_route_record (as the Studio)", "learned", n, anystory(n, **record)))
    return rows


def unet_attention_state(unet) -> tuple:
    """What `load_ip_adapter` changes on a UNet: its attention processors and image projection."""
    return dict(unet.attn_processors), unet.encoder_hid_proj, unet.config.encoder_hid_dim_type


def put_unet_attention_state(unet, state: tuple) -> None:
    processors, encoder_hid_proj, encoder_hid_dim_type = state
    unet.encoder_hid_proj = encoder_hid_proj  # first: its attention layers are among the processors
    unet.register_to_config(encoder_hid_dim_type=encoder_hid_dim_type)
    unet.set_attn_processor(dict(processors))


@contextlib.contextmanager
def unet_state(unet, state: tuple):
    """The shared UNet with another attention state for a while (the peer's IP-Adapter one),
    then back to what it had."""
    saved = unet_attention_state(unet)
    put_unet_attention_state(unet, state)
    try:
        yield
    finally:
        put_unet_attention_state(unet, saved)


def ip_adapter_peer(pipe, ip_file: Path, images, size: int, device):
    """diffusers' own SDXL pipeline over the SAME components, with `load_ip_adapter` of the same
    IP-Adapter Plus file, two subject images (cut out on white) and one mask each (the layout's
    boxes). Returns (peer pipeline, the UNet state it needs, embeddings made once, masks)."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.image_processor import IPAdapterMaskProcessor
    from diffusers.models.attention_processor import AttnProcessor2_0
    from PIL import Image

    from anystory.images import alpha_mask, cutout
    from anystory.pipeline import layout_mask

    unet = pipe.unet
    ours = unet_attention_state(unet)
    peer = StableDiffusionXLPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2, tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2, unet=unet, scheduler=pipe.scheduler, image_encoder=pipe.image_encoder,
        feature_extractor=pipe.feature_extractor, add_watermarker=False,
    )  # fmt: skip
    peer.set_progress_bar_config(disable=True)
    unet.set_attn_processor(AttnProcessor2_0())  # load_ip_adapter re-instantiates the installed attn1 classes
    peer.load_ip_adapter(str(ip_file.parent), subfolder="", weight_name=ip_file.name)
    theirs = unet_attention_state(unet)  # includes the attention of its resampler (encoder_hid_proj)
    put_unet_attention_state(unet, ours)  # AnyStory's processors, until a peer row asks for theirs

    pictures = [[cutout(image, alpha_mask(image)) for image in images[:2]]]
    boxes = [layout_mask(box, (size, size)).numpy() for box in LAYOUT[:2]]
    masks = IPAdapterMaskProcessor().preprocess([Image.fromarray((b * 255).astype("uint8")) for b in boxes], height=size, width=size)
    masks = [masks.reshape(1, masks.shape[0], masks.shape[2], masks.shape[3])]
    with unet_state(unet, theirs):
        embeddings = peer.prepare_ip_adapter_image_embeds(pictures, None, device, 1, True)
    return peer, theirs, pictures, embeddings, masks


def public_rows(pipe, plain, peer_parts, subjects, args) -> list[tuple]:
    """(label, router, subjects, run(generator), context) for every row of the public-mode table."""
    peer, peer_state, pictures, embeddings, masks = peer_parts
    common = dict(num_inference_steps=args.steps, height=args.size, width=args.size, output_type=args.output_type)

    def anystory(n, router, record):
        extra = dict(subject_phrases=PHRASES[:n]) if router == "prompt" else dict(layout=LAYOUT[:n])
        return lambda g: pipe(PROMPT, subjects=subjects[:n], router=router, return_route_record=record, generator=g, **common, **extra)

    def peer_run(**images):
        masked = dict(cross_attention_kwargs={"ip_adapter_masks": masks})
        return lambda g: peer(PROMPT, generator=g, **images, **masked, **common)

    peer_context = lambda: unet_state(pipe.unet, peer_state)  # noqa: E731
    rows = [("plain SDXL (diffusers pipeline)", "-", 0, lambda g: plain(PROMPT, generator=g, **common), None)]
    if args.stock:
        stock = lambda: stock_processors(pipe.unet)  # noqa: E731
        rows.append(("plain, stock AttnProcessor2_0", "-", 0, lambda g: plain(PROMPT, generator=g, **common), stock))
    rows.append((PEER_ROW, "masks", 2, peer_run(ip_adapter_image_embeds=embeddings), peer_context))
    if not args.quick:
        rows.append((PEER_ROW + ", encoded per call", "masks", 2, peer_run(ip_adapter_image=pictures), peer_context))
    for router in args.routers:
        for n in args.subjects:
            for record in (False, True):
                if args.quick and (router, record) == ("layout", False):
                    continue
                label = f"AnyStory public, {router} router" + (", route record" if record else "")
                rows.append((label, router, n, anystory(n, router, record), None))
    return rows


def measure(rows, device: torch.device, repeats: int) -> dict:
    """Alternating rounds after one warm-up round: times and peak memory per row."""
    results = {i: {"times": [], "cpu": [], "peak": [], "delta": []} for i in range(len(rows))}
    for round_index in range(repeats + 1):
        for i, (_, _, _, run, *context) in enumerate(rows):
            context = (context[0] if context else None) or contextlib.nullcontext  # set up outside the timer
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated() / 2**20
            else:
                before = rss_mb()
                reset_peak_rss()
            with context(), Timer(device) as timer:
                run(torch.Generator("cpu").manual_seed(0))
            peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb()
            if round_index == 0:
                continue  # warm-up
            results[i]["times"].append(timer.seconds)
            results[i]["cpu"].append(timer.cpu_seconds)
            results[i]["peak"].append(peak)
            results[i]["delta"].append(peak - before)
        if round_index:
            print(f"  round {round_index}/{repeats} done, load {load_average()}", file=sys.stderr, flush=True)
    return results


def print_table(rows, results, device, extra_mb: float) -> dict:
    """The markdown table; returns {(label, router, n): (ratio, memory over plain SDXL in GB or None)}.

    On CUDA the ratio is of wall time; on the CPU of this process's CPU time (the wall time is
    shown too): with a fixed thread count it does not depend on what else the machine runs."""
    cuda = device.type == "cuda"
    key = "times" if cuda else "cpu"
    base = statistics.median(results[0][key])
    header = "| run | router | subjects | s / image (median) | min-max |"
    header += " vs plain | peak alloc GB | over plain SDXL GB |" if cuda else " CPU s / image (median) | min-max | vs plain (CPU time) | peak RSS over start MB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    plain_peak = max(results[0]["peak"]) - extra_mb  # a plain SDXL pipeline holds no AnyStory weights
    summary = {}
    for i, (label, router, n, *_) in enumerate(rows):
        times, measured = results[i]["times"], results[i][key]
        ratio = statistics.median(measured) / base
        cells = [label, router, str(n), f"{statistics.median(times):.2f}", f"{min(times):.2f}-{max(times):.2f}"]
        over = None
        if cuda:
            peak = max(results[i]["peak"])
            over = (peak - plain_peak) / 1024
            cells += [f"{ratio:.3f}x", f"{peak / 1024:.2f}", f"{over:+.2f}"]
        else:
            cpu = results[i]["cpu"]
            cells += [f"{statistics.median(cpu):.2f}", f"{min(cpu):.2f}-{max(cpu):.2f}", f"{ratio:.3f}x", f"{max(results[i]['delta']):.0f}"]
        print("| " + " | ".join(cells) + " |")
        summary[(label, router, n)] = (ratio, over)
    return summary


def print_public_targets(summary) -> None:
    """The default path (public weights, prompt router, 2 subjects, route record) against plain
    SDXL and against the diffusers IP-Adapter peer measured in the same run."""
    ours, peer = summary.get((DEFAULT_ROW, "prompt", 2)), summary.get((PEER_ROW, "masks", 2))
    if ours is None or peer is None:
        return
    ratio, peer_ratio = ours[0], peer[0]
    print(f"\ntarget, the default path with 2 subjects <= {TARGET_PUBLIC}x plain SDXL: {ratio:.3f}x -> "
          f"{'MET' if ratio <= TARGET_PUBLIC else 'MISSED'}")  # fmt: skip
    print(f"target, at least as fast as the diffusers IP-Adapter peer ({peer_ratio:.3f}x): "
          f"{ratio / peer_ratio:.3f} of its time -> {'MET' if ratio <= peer_ratio else 'MISSED'}")  # fmt: skip


def print_targets(summary, device) -> None:
    key = ("AnyStory", "learned", 2)
    if key not in summary:
        return
    ratio, over = summary[key]
    limit = TARGET_RATIO[device.type]
    print(f"\ntarget, 2 subjects <= {limit}x plain SDXL per image: {ratio:.3f}x -> {'MET' if ratio <= limit else 'MISSED'}")
    if over is not None:
        verdict = "MET" if over <= TARGET_MEMORY_GB else "MISSED"
        print(f"target, GPU peak with 2 subjects <= plain SDXL + {TARGET_MEMORY_GB} GB: {over:+.2f} GB -> {verdict}")


def profile(pipe, plain, subjects, args, device) -> None:
    """Where the time goes: AnyStory regions (record_function labels) and the top ops."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    from anystory import attention, router

    patches = [
        (attention.ReferenceAttnProcessor, "__call__", "attn1 (self + reference)"),
        (attention.RoutedCrossAttnProcessor, "__call__", "attn2 (text + CLIP path + router)"),
        (attention.RoutedCrossAttnProcessor, "_image_attention", "attn2: CLIP path"),
        (router.SubjectRouter, "forward", "attn2: learned router"),
        (router.PromptRouting, "observe", "attn2: prompt router, text attention of the words"),
        (router.PromptRouting, "routes", "attn2: prompt router, routes"),
        (attention.InjectionContext, "publish_routes", "attn2: publish routes (votes)"),
        (attention.InjectionContext, "previous_routes", "attn1: previous routes, resized"),
        (attention.InjectionContext, "reference_tokens", "attn1: reference K/V of the block"),
    ]

    def labelled(original, label):
        # functools.wraps keeps the signature visible: diffusers passes a processor only the
        # cross_attention_kwargs its __call__ names (the injection context among them).
        @functools.wraps(original)
        def wrapper(*a, **k):
            with record_function("## " + label):
                return original(*a, **k)

        return wrapper

    saved = [(cls, attr, getattr(cls, attr)) for cls, attr, _ in patches]
    for (cls, attr, label), (_, _, original) in zip(patches, saved):
        setattr(cls, attr, labelled(original, label))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    common = dict(num_inference_steps=args.steps, height=args.size, width=args.size, output_type="latent")
    if args.mode == "public":
        default = dict(router="prompt", subject_phrases=PHRASES[:2], return_route_record=True)
        second = ("2 subjects, prompt router, route record", lambda g: pipe(PROMPT, subjects=subjects[:2], generator=g, **default, **common))
    else:
        second = ("2 subjects, learned router", lambda g: pipe(PROMPT, subjects=subjects[:2], router="learned", generator=g, **common))
    runs = (("plain", lambda g: plain(PROMPT, generator=g, **common)), second)
    try:
        for name, run in runs:
            run(torch.Generator().manual_seed(0))
            with torch_profile(activities=activities) as prof:
                run(torch.Generator().manual_seed(0))
            events = prof.key_averages()
            print(f"\n### profile: {name} ({args.size}x{args.size}, {args.steps} steps, denoising only; load {load_average()})\n")
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
    """torch.compile every ResnetBlock2D and every transformer feed-forward (the AnyStory processors
    stay eager), in place, so every pipeline sharing the UNet gets it."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.resnet import ResnetBlock2D

    count = 0
    for module in unet.modules():
        if isinstance(module, (ResnetBlock2D, FeedForward)):
            module.compile(dynamic=False)
            count += 1
    return count


def offload_rows(pipe, images, args, device) -> None:
    """Peak GPU memory under enable_model_cpu_offload(): the first call right after encoding, then
    steady state. The plain row is AnyStoryPipeline with no subjects (diffusers' own __call__)."""
    pipe.enable_model_cpu_offload()
    common = dict(num_inference_steps=args.steps, height=args.size, width=args.size)
    print("\n### enable_model_cpu_offload(): peak GPU memory, first call after encoding and steady\n")
    print("| run | router | subjects | first call GB | steady GB | s / image (steady) |")
    print("|---|---|---|---|---|---|")
    for label, router, n in (("plain SDXL path (AnyStory, 0 subjects)", "-", 0), ("AnyStory", "learned", 2)):
        fresh = [pipe.encode_subject(image) for image in images[:2]]  # encoders run under the hooks
        peaks, times = [], []
        for _ in range(3):
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            extra = dict(router=router) if n else {}
            with Timer(device) as timer:
                pipe(PROMPT, subjects=fresh[:n], generator=torch.Generator().manual_seed(0), **common, **extra)
            peaks.append(torch.cuda.max_memory_allocated() / 2**30)
            times.append(timer.seconds)
        steady = statistics.median(peaks[1:])
        print(f"| {label} | {router} | {n} | {peaks[0]:.2f} | {steady:.2f} | {statistics.median(times[1:]):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_machine_arguments(parser)
    parser.add_argument("--mode", choices=["checkpoint", "public"], default="checkpoint",
                        help="checkpoint: adapter='init', learned router; public: the app's default path and its peer")  # fmt: skip
    parser.add_argument("--size", type=int, default=None, help="default: 1024 on CUDA, 256 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 25 on CUDA, 4 on CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--routers", nargs="+", choices=["prompt", "layout"], default=["prompt", "layout"], help="--mode public")
    parser.add_argument("--output-type", default="pil")
    parser.add_argument("--quick", action="store_true", help="fewer rows (no breakdown / stock / per-call peer rows)")
    parser.add_argument("--no-stock", dest="stock", action="store_false", help="--mode public: no stock-processor row")
    parser.add_argument("--compile", action="store_true", help="CUDA: also measure with regional torch.compile")
    parser.add_argument("--offload", action="store_true", help="CUDA: also measure with enable_model_cpu_offload()")
    parser.add_argument("--profile", action="store_true", help="also: torch profiler of a plain and a 2-subject run")
    parser.add_argument("--profile-only", action="store_true", help="only the profile (no table)")
    args = parser.parse_args()
    args.profile = args.profile or args.profile_only
    args.stock = args.stock and not args.quick
    device, dtype = machine_from(args)
    cuda = device.type == "cuda"
    args.size = args.size or (1024 if cuda else 256)
    args.steps = args.steps or (25 if cuda else 4)
    started = datetime.datetime.now().isoformat(timespec="minutes")
    public = args.mode == "public"

    with model_folder(args.model_dir) as folder:
        if public:
            pipe, ip_file = load_full_public(folder, dtype, device)
        else:
            pipe = full_anystory(str(folder), dtype, device)
        plain = plain_twin(pipe)
        images = subject_pictures(2 if args.profile_only else max(args.subjects + [2]))
        subjects = [pipe.encode_subject(image) for image in images]  # once, before any timing
        pipe.background_encoding()
        extra = anystory_weight_mb(pipe, device)
        parts = ("reference_net", "image_encoder", "subject_encoder")
        where = ", ".join(f"{name} on {getattr(pipe, name).device}" for name in parts if getattr(pipe, name) is not None)
        peer = ip_adapter_peer(pipe, ip_file, images, args.size, device) if public and not args.profile_only else None

        machine = f"{platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}"
        machine += f", {torch.cuda.get_device_name()}" if cuda else f", {torch.get_num_threads()} threads"
        print(f"## bench/overhead.py --mode {args.mode}, {started}\n")
        print(f"machine: {machine}")
        print(f"full SDXL UNet + VAE, {str(dtype).split('.')[-1]}, {args.size}x{args.size}, {args.steps} steps, CFG 5.0, "
              f"Euler, output {args.output_type}; median of {args.repeats} alternating rounds after a warm-up round")  # fmt: skip
        weights = "W', the resampler" if public else "W~, W', 70 routers"
        print(f"encodings made before timing (reference 512x512): {encoding_mb(subjects[0]):.0f} MB each; AnyStory "
              f"weights inside the UNet ({weights}): {extra:.0f} MB; after encoding: {where}")  # fmt: skip
        print(f"load average before: {load_average()}")
        if args.profile_only:
            profile(pipe, plain, subjects, args, device)
            return

        rows = public_rows(pipe, plain, peer, subjects, args) if public else table_rows(pipe, plain, subjects, args, device)
        results = measure(rows, device, args.repeats)
        print(f"load average after: {load_average()}\n")
        summary = print_table(rows, results, device, extra)
        print_public_targets(summary) if public else print_targets(summary, device)

        if cuda and args.compile:
            try:
                count = regional_compile(pipe.unet)
                compiled = [row for row in rows if row[0] in ("plain SDXL (diffusers pipeline)", "AnyStory", DEFAULT_ROW)]
                results = measure(compiled, device, args.repeats)
                print(f"\n### with torch.compile (regional: {count} ResnetBlock2D / FeedForward modules)\n")
                print_table(compiled, results, device, extra)
            except Exception as err:  # report and go on: compile support varies
                print(f"\ntorch.compile failed: {type(err).__name__}: {err}")

        if args.profile:
            profile(pipe, plain, subjects, args, device)

        if cuda and args.offload and not public:
            offload_rows(pipe, images, args, device)


if __name__ == "__main__":
    main()
