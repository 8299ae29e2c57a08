"""Per-step time of the tiny SDXL with 0 and 2 subjects (same process, alternating, median).

    HF_HUB_OFFLINE=1 python bench/tiny_steps.py [--size 128] [--steps 10] [--repeats 7]

Tiny random weights: this measures the overhead of routing + injection relative to a very small
UNet, so ratios here overstate the cost on the real SDXL UNet (see bench/overhead.py for that).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anystory import AnyStoryPipeline  # noqa: E402
from anystory.tiny import synthetic_subject, write_tiny_ip_adapter, write_tiny_sdxl  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_sdxl(Path(tmp) / "tiny")
        ip_adapter = write_tiny_ip_adapter(folder, Path(tmp) / "ip.safetensors")
        pipes = {
            "init (learned router)": AnyStoryPipeline.from_pretrained(str(folder), adapter="init", local_files_only=True),
            "public (prompt router)": AnyStoryPipeline.from_pretrained(str(folder), ip_adapter=str(ip_adapter), local_files_only=True),
        }
    common = dict(num_inference_steps=args.steps, height=args.size, width=args.size, output_type="latent")
    prompt = "a girl and her dog"
    print(f"tiny SDXL, {args.size}x{args.size}, {args.steps} steps, CFG on, median of {args.repeats}, torch threads {torch.get_num_threads()}")
    print("| mode | subjects | ms / step | ratio |")
    print("|---|---|---|---|")
    for mode, pipe in pipes.items():
        pipe.set_progress_bar_config(disable=True)
        subjects = [pipe.encode_subject(synthetic_subject(seed)) for seed in (1, 2)]
        extra = {"subject_phrases": ["a girl", "her dog"]} if pipe.default_router == "prompt" else {}
        runs = {0: [], 2: []}

        def run(n: int) -> None:
            arguments = {**extra, "subject_phrases": extra["subject_phrases"][:n]} if extra and n else {}
            pipe(prompt, subjects=subjects[:n], generator=torch.Generator().manual_seed(0), **arguments, **common)

        run(0), run(2)  # warm-up
        for _ in range(args.repeats):
            for n in runs:  # alternate, so load changes hit both
                start = time.perf_counter()
                run(n)
                runs[n].append((time.perf_counter() - start) / args.steps)
        base = statistics.median(runs[0])
        for n, times in runs.items():
            median = statistics.median(times)
            print(f"| {mode} | {n} | {median * 1000:.1f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
