"""How much of the subjects' layout a noised latent still holds: a reference point for routing IoU.

    python -m anystory.training.latent_probe --base BASE --train DATA --heldout HELDOUT [--timesteps 200 400 600]

A router sees the target only through the noised latent x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) e. This
trains, per timestep, a small CNN of its own to tell subjects from background in x_t (fresh noise
every step, the base's VAE latents of the training scenes) and reports its foreground IoU on the
held-out scenes at the router grid (latent / 2). It knows nothing of the references, so it
measures the foreground alone; a router must also tell the subjects apart. When this segmenter,
trained for nothing else, stays near a figure, the latent holds about that much: a router (which
reads the frozen UNet's features of the same x_t) is not expected to beat it by much.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .tiny_base import load_images


@dataclass
class ProbeResult:
    timestep: int
    foreground_iou: float
    steps: int


def scene_latents(vae, folder: str | Path, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE latents (scaled) of a dataset's targets and their foreground masks (union of instances)."""
    folder = Path(folder)
    pixels, _ = load_images([folder], limit)
    masks = []
    for line in (folder / "manifest.jsonl").read_text().splitlines()[:limit]:
        row = json.loads(line)
        instance = [np.asarray(Image.open(folder / i["mask"]).convert("L"), np.float32) / 255 for i in row["instances"]]
        masks.append(torch.from_numpy(np.clip(sum(instance), 0, 1)))
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i : i + 16].to(vae.dtype)).latent_dist.mode() for i in range(0, len(pixels), 16)])
    return latents.float() * vae.config.scaling_factor, torch.stack(masks)


def segmenter(width: int = 64) -> nn.Module:
    """Latent grid in, router grid (half) out: foreground logits."""
    return nn.Sequential(
        nn.Conv2d(4, width, 3, padding=1), nn.GELU(),
        nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU(),
        nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
        nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
        nn.Conv2d(width, 1, 3, padding=1),
    )  # fmt: skip


def probe(train: tuple[torch.Tensor, torch.Tensor], heldout: tuple[torch.Tensor, torch.Tensor], alphas_cumprod: torch.Tensor,
          timestep: int, steps: int = 3000, batch: int = 16, lr: float = 2e-3, seed: int = 0) -> ProbeResult:  # fmt: skip
    """Train a segmenter on x_t of the training latents, return its held-out foreground IoU."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    signal, noise_scale = alphas_cumprod[timestep].sqrt(), (1 - alphas_cumprod[timestep]).sqrt()
    latents, masks = train
    grid = ((latents.shape[-2] + 1) // 2, (latents.shape[-1] + 1) // 2)
    targets = (F.adaptive_avg_pool2d(masks[:, None], grid) >= 0.5).float()
    net = segmenter()
    optimizer = torch.optim.Adam(net.parameters(), lr)
    for _ in range(steps):
        index = torch.randint(0, len(latents), (batch,), generator=generator)
        noisy = signal * latents[index] + noise_scale * torch.randn(latents[index].shape, generator=generator)
        loss = F.binary_cross_entropy_with_logits(net(noisy), targets[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    latents, masks = heldout
    truth = F.adaptive_avg_pool2d(masks[:, None], grid) >= 0.5
    with torch.no_grad():
        predicted = net(signal * latents + noise_scale * torch.randn(latents.shape, generator=generator)) > 0
    union = (predicted | truth).flatten(1).sum(1).clamp_min(1)
    iou = ((predicted & truth).flatten(1).sum(1) / union).mean().item()
    return ProbeResult(timestep, iou, steps)


def main(argv: list[str] | None = None) -> int:
    from diffusers import AutoencoderKL, DDPMScheduler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="an SDXL diffusers folder (its vae/ and scheduler/)")
    parser.add_argument("--train", required=True, help="dataset folder the segmenter learns on")
    parser.add_argument("--heldout", required=True, help="dataset folder it is measured on")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[200, 400, 600])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    vae = AutoencoderKL.from_pretrained(args.base, subfolder="vae")
    scheduler = DDPMScheduler.from_pretrained(args.base, subfolder="scheduler")
    train, heldout = scene_latents(vae, args.train), scene_latents(vae, args.heldout)
    print("| t | foreground IoU of a CNN on x_t (held-out, router grid) |\n|---|---|")
    for t in args.timesteps:
        result = probe(train, heldout, scheduler.alphas_cumprod, t, args.steps, seed=args.seed)
        print(f"| {t} | {result.foreground_iou:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
