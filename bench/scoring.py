"""What the consistency score adds to one panel: crops + one batched CLIP image-encoder forward
over the characters' regions (references embedded once per character and cached, as the Studio does).

    python bench/scoring.py --encoder tiny --size 128 --subjects 1 2 3     # the preview model's encoder
    python bench/scoring.py --encoder vit-h --size 1024 --subjects 1 2 3   # IP-Adapter's ViT-H/14 shape

"vit-h" builds the ViT-H/14 image encoder the public weights use (h94/IP-Adapter
models/image_encoder: 1280 wide, 32 layers, 224 px, projection 1024) with random weights, offline:
its time does not depend on the weights. Prints the median wall and model time of the scoring
(`PanelScores.seconds`, `.model_seconds`; the model time is what holds the model).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anystory.consistency import Scorer, reference_crop  # noqa: E402
from anystory.tiny import synthetic_subject  # noqa: E402

ENCODERS = {
    "tiny": dict(hidden_size=32, intermediate_size=37, projection_dim=32, num_attention_heads=4, num_hidden_layers=5,
                 image_size=32, patch_size=8),
    "vit-h": dict(hidden_size=1280, intermediate_size=5120, projection_dim=1024, num_attention_heads=16,
                  num_hidden_layers=32, image_size=224, patch_size=14),
}  # fmt: skip


def embedder(name: str, dtype: torch.dtype = torch.float32):
    config = CLIPVisionConfig(**ENCODERS[name])
    model = CLIPVisionModelWithProjection(config).to(dtype).eval()
    processor = CLIPImageProcessor(size=config.image_size, crop_size=config.image_size)

    @torch.no_grad()
    def embed(images):
        pixels = processor(images=list(images), return_tensors="pt").pixel_values
        return torch.nn.functional.normalize(model(pixels.to(dtype)).image_embeds.float(), dim=-1)

    return embed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=list(ENCODERS), default="tiny")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the app on CPU: float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scorer = Scorer(embedder(args.encoder, getattr(torch, args.dtype)))
    rng = np.random.default_rng(0)
    image = synthetic_subject(9, (args.size, args.size), alpha=False)
    grid = args.size // 8  # the latent grid the route maps come at
    side = f"{args.size}x{args.size}"
    print(f"## bench/scoring.py --encoder {args.encoder}, {side}, {args.dtype}, {args.threads} thread(s)")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| subjects | scoring, wall (median) | of which the model | first panel (references too) |")
    print("|---|---|---|---|")
    for n in args.subjects:
        owner = rng.integers(0, n + 1, (grid, grid))
        owner[0, :n] = np.arange(n)  # every subject has a region
        maps = np.stack([(owner == i) for i in range(n + 1)]).astype(np.float32)
        names = [f"s{i}" for i in range(n)]
        scorer.references.clear()
        refs = [(f"s{i}-{n}", lambda i=i: reference_crop(synthetic_subject(i + 1), None)) for i in range(n)]
        first = scorer.score(image, maps, names, refs).seconds
        runs = [scorer.score(image, maps, names, refs) for _ in range(args.repeats)]
        wall = statistics.median(r.seconds for r in runs)
        model = statistics.median(r.model_seconds for r in runs)
        print(f"| {n} | {wall * 1000:.1f} ms | {model * 1000:.1f} ms | {first * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
