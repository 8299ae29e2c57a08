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
from anystory.tiny import synthetic_subject, write_tiny_sdxl  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        pipe = AnyStoryPipeline.from_pretrained(str(write_tiny_sdxl(Path(tmp) / "tiny")), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    subjects = [pipe.encode_subject(synthetic_subject(seed)) for seed in (1, 2)]
    runs = {0: [], 2: []}
    common = dict(num_inference_steps=args.steps, height=args.size, width=args.size, output_type="latent")
    pipe("warm-up", subjects=subjects, **common)
    pipe("warm-up", **common)
    for _ in range(args.repeats):
        for n in runs:
            start = time.perf_counter()
            pipe("a girl and her dog", subjects=subjects[:n], generator=torch.Generator().manual_seed(0), **common)
            runs[n].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(runs[0])
    print(f"tiny SDXL, {args.size}x{args.size}, {args.steps} steps, CFG on, median of {args.repeats}, torch threads {torch.get_num_threads()}")
    print("| subjects | ms / step | ratio |")
    print("|---|---|---|")
    for n, times in runs.items():
        median = statistics.median(times)
        print(f"| {n} | {median * 1000:.1f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
