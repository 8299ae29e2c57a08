"""Cost of encoding one subject, size of a stored encoding, and encoder passes in an 8-panel story.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/encode.py              # CPU: bf16
    HF_HUB_OFFLINE=1 python bench/encode.py                        # CUDA: fp16

Full-size random models (bench/full_sdxl.py): the SDXL UNet, the ReferenceNet made from it
(`adapter="init"`), the SDXL VAE, and a CLIP vision encoder of the full OpenCLIP ViT-H/14 shape
(32 layers, hidden 1280, 224 px, patch 14); reference input 512x512 (the paper's).

1. Time of each part of `encode_subject` (median of --repeats after one warm-up): CLIP branch
   (image encoder + Subject/Routing QFormers), VAE encode of the 512x512 reference, the
   ReferenceNet pass, the projection of reference K/V, and the whole call; peak memory.
2. Size of one encoding: in memory, as a .safetensors file (`SubjectEncoding.save`) and as the
   bytes the Studio stores, and the time to load it back.
3. Encoder passes while a Studio generates an 8-panel story with two characters (counted with
   forward hooks on the ReferenceNet and the CLIP image encoder): must be 2 ReferenceNet passes
   in total, none during generation; then a second Studio on the same data folder (a restart)
   regenerates the story from the stored encodings.
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
    add_machine_arguments,
    machine_from,
    Timer,
    load_average,
    full_anystory,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    subject_pictures,
)
from anystory.encoder import prepare_subject  # noqa: E402
from anystory.encoding import SubjectEncoding  # noqa: E402


def timed(fn, device, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        with Timer(device) as timer:
            fn()
        times.append(timer.seconds)
    return statistics.median(times), times


@contextlib.contextmanager
def peak_memory(device):
    """Yields a dict that gets 'peak_mb' (over the start: CUDA allocated, or CPU RSS)."""
    result = {}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_mb()
        reset_peak_rss()
    yield result
    if device.type == "cuda":
        result["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        result["peak_mb"] = peak_rss_mb() - before


class PassCounter:
    """Counts forward passes of the ReferenceNet and of the CLIP image encoder."""

    def __init__(self, pipe):
        self.counts = {"reference_net": 0, "image_encoder": 0}
        self.handles = []
        for name in self.counts:
            module = getattr(pipe, name)
            if module is not None:
                self.handles.append(module.register_forward_pre_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, args):
            self.counts[name] += 1

        return hook

    def snapshot(self) -> dict:
        return dict(self.counts)

    def close(self):
        for handle in self.handles:
            handle.remove()


def encode_parts(pipe, image, device, repeats: int) -> list[tuple[str, float, list[float]]]:
    subject = prepare_subject(image, None, pipe.anystory_config.reference_size)
    rows = []
    with pipe._encoders_ready():
        pixels = pipe._clip_pixels(subject.clip_image)
        rows.append(("CLIP branch (ViT-H/14 32 layers + Subject & Routing QFormers)",) + timed(lambda: pipe._encode_clip(pixels), device, repeats))
        rows.append(("VAE encode of the 512x512 reference",) + timed(lambda: pipe._vae_latent(subject.reference_image), device, repeats))
        latent = pipe._vae_latent(subject.reference_image)

        from anystory.encoder import latent_mask, reference_features

        net = pipe.reference_net
        mask = latent_mask(subject.mask, tuple(latent.shape[-2:])).to(latent)
        net_input = torch.cat([latent * mask, mask[None, None]], dim=1).to(net.dtype)
        def reference_pass():
            with torch.no_grad():
                return reference_features(net, net_input)

        rows.append(("ReferenceNet pass (64x64 latent, t = 0, stops after the last attn1)",) + timed(reference_pass, device, repeats))
        features = reference_pass()
    self_attn, _ = pipe.anystory_processors()

    def project():
        with torch.no_grad():
            return [proc.project_reference(f[0]) for proc, f in zip(self_attn, features) if proc.inject]

    rows.append(("reference K/V projection (69 blocks)",) + timed(project, device, repeats))
    return rows


def story_passes(pipe, images, args, device) -> list[str]:
    """Encoder passes of an 8-panel, 2-character story through the Studio (or a plain loop)."""
    lines = []
    counter = PassCounter(pipe)
    panel_size = dict(width=args.panel_size, height=args.panel_size, steps=args.panel_steps, guidance=5.0)
    try:
        from anystory.studio import Studio
    except ImportError:
        Studio = None
    with tempfile.TemporaryDirectory() as data_dir:
        if Studio is not None:
            pipe.background_encoding()  # E_{N+1}: one CLIP pass per loaded pipeline, not per character
            start = counter.snapshot()
            studio = Studio(data_dir, pipe)
            mia = studio.add_character("Mia", "a girl with a red scarf", images[0])
            rex = studio.add_character("Rex", "a brown dog", images[1])
            after_add = counter.snapshot()
            story = studio.create_story("Benchmark story")
            for i in range(8):
                studio.add_panel(story.id, f"[Mia] and [Rex] in scene {i + 1}", characters=[mia.id, rex.id], seed=i, **panel_size)
            with Timer(device) as timer:
                versions = studio.generate_story(story.id)
            after_story = counter.snapshot()
            lines.append(
                f"Studio (anystory/studio.py): add_character x2, then generate_story with {len(versions)} panels "
                f"({args.panel_size}x{args.panel_size}, {args.panel_steps} steps, {timer.seconds:.1f} s)"
            )
            lines.append("")
            lines.append("| phase | ReferenceNet passes | CLIP image-encoder passes | Studio.encode_count |")
            lines.append("|---|---|---|---|")
            lines.append(
                f"| add 2 characters | {after_add['reference_net'] - start['reference_net']} | "
                f"{after_add['image_encoder'] - start['image_encoder']} | {studio.encode_count} |"
            )
            lines.append(
                f"| generate 8 panels | {after_story['reference_net'] - after_add['reference_net']} | "
                f"{after_story['image_encoder'] - after_add['image_encoder']} | {studio.encode_count} |"
            )
            # A restart: a new Studio on the same folder reads the stored encodings.
            again = Studio(data_dir, pipe)
            before = counter.snapshot()
            again.generate_story(story.id, only_outdated=False)
            after = counter.snapshot()
            lines.append(
                f"| new Studio on the same folder (restart), 8 panels again | {after['reference_net'] - before['reference_net']} | "
                f"{after['image_encoder'] - before['image_encoder']} | {again.encode_count} |"
            )
            total = after["reference_net"] - start["reference_net"]
        else:
            calls = {"encode_subject": 0}
            original = pipe.encode_subject

            def counted(*a, **k):
                calls["encode_subject"] += 1
                return original(*a, **k)

            pipe.encode_subject = counted
            try:
                start = counter.snapshot()
                cached = [pipe.encode_subject(image) for image in images[:2]]
                for i in range(8):
                    pipe(f"a girl and a dog in scene {i + 1}", subjects=cached, num_inference_steps=args.panel_steps,
                         height=args.panel_size, width=args.panel_size, generator=torch.Generator().manual_seed(i))  # fmt: skip
                after = counter.snapshot()
            finally:
                del pipe.encode_subject
            lines.append("plain loop (no anystory/studio.py): 2 encode_subject calls, 8 generations reusing them")
            lines.append(f"encode_subject calls: {calls['encode_subject']}")
            total = after["reference_net"] - start["reference_net"]
        lines.append("")
        lines.append(f"ReferenceNet passes for the whole story: {total} (target: 2) -> {'OK' if total == 2 else 'MISSED'}")
    counter.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_machine_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-layers", type=int, default=32, help="CLIP vision encoder depth (32 = ViT-H/14)")
    parser.add_argument("--panel-size", type=int, default=None, help="story panels: default 1024 on CUDA, 256 on CPU")
    parser.add_argument("--panel-steps", type=int, default=None, help="story panels: default 25 on CUDA, 1 on CPU")
    args = parser.parse_args()
    device, dtype = machine_from(args)
    cuda = device.type == "cuda"
    args.panel_size = args.panel_size or (1024 if cuda else 256)
    args.panel_steps = args.panel_steps or (25 if cuda else 1)
    started = datetime.datetime.now().isoformat(timespec="minutes")

    pipe = full_anystory(args.model_dir, dtype, device, image_layers=args.image_layers)

    print(f"## bench/encode.py, {started}")
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}" + (f", {torch.cuda.get_device_name()}" if cuda else ""))  # fmt: skip
    print(f"{str(dtype).split('.')[-1]}; ReferenceNet {sum(p.numel() for p in pipe.reference_net.parameters()) / 1e9:.2f} B "
          f"parameters, CLIP vision encoder {sum(p.numel() for p in pipe.image_encoder.parameters()) / 1e9:.2f} B "
          f"({args.image_layers} layers); reference {pipe.anystory_config.reference_size}x{pipe.anystory_config.reference_size}")  # fmt: skip
    print(f"load average before: {load_average()}\n")

    images = subject_pictures(2)
    rows = encode_parts(pipe, images[0], device, args.repeats)
    pipe.encode_subject(images[0])  # warm-up of the whole call
    times = []
    for _ in range(args.repeats):
        with peak_memory(device) as memory, Timer(device) as timer:
            encoding = pipe.encode_subject(images[0])
        times.append(timer.seconds)
    rows.append(("encode_subject, whole call",) + (statistics.median(times), times))

    print(f"### encoding one subject (median of {args.repeats} after a warm-up)\n")
    print("| part | s (median) | min-max |")
    print("|---|---|---|")
    for label, median, all_times in rows:
        print(f"| {label} | {median:.3f} | {min(all_times):.3f}-{max(all_times):.3f} |")
    kind = "GPU allocated" if cuda else "RSS"
    print(f"\npeak {kind} during encode_subject over the start: {memory['peak_mb']:.0f} MB; "
          f"ReferenceNet after encoding on: {pipe.reference_net.device}")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        path = encoding.save(Path(tmp) / "subject.safetensors")
        file_mb = path.stat().st_size / 2**20
        with Timer(device) as load_timer:
            SubjectEncoding.load(path)
        stored = len(encoding.to_bytes()) / 2**20 if hasattr(encoding, "to_bytes") else None
    tensors = encoding.state_dict()
    mask = encoding.reference_mask
    kept, grid_tokens = encoding.reference_keys[1].shape[0], (mask.shape[0] + 1) // 2 * ((mask.shape[1] + 1) // 2)
    parts = {
        f"reference K/V (69 blocks; inside the mask only: {kept} of {grid_tokens} tokens at block 2's grid)": sum(v.numel() * v.element_size() for k, v in tensors.items() if k.startswith("reference.")),
        "CLIP tokens E_i": tensors["clip_tokens"].numel() * tensors["clip_tokens"].element_size(),
        "routing embedding + mask": sum(
            v.numel() * v.element_size() for k, v in tensors.items() if k in ("routing_embedding", "reference_mask")
        ),
    }
    print("\n### one stored encoding\n")
    print("| what | MB |")
    print("|---|---|")
    for label, size in parts.items():
        print(f"| {label} | {size / 2**20:.2f} |")
    print(f"| .safetensors file (SubjectEncoding.save) | {file_mb:.2f} |")
    if stored is not None:
        print(f"| bytes the Studio stores (SubjectEncoding.to_bytes) | {stored:.2f} |")
    print(f"\nloading it back (SubjectEncoding.load): {load_timer.seconds:.3f} s; "
          f"dtype {encoding.reference_keys[1].dtype}")  # fmt: skip

    print("\n### encoder passes for an 8-panel story with two characters\n")
    for line in story_passes(pipe, images, args, device):
        print(line)
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
