"""Make the tiny random SDXL a working base model on a synthetic domain, for the proof.

AnyStory trains on top of a pretrained SDXL, frozen. The tiny SDXL of `anystory.tiny` is random:
its VAE latent is ~99% unrelated to the image (R^2 ~0.01 from local colour) and its UNet does not
denoise, so no router can find a subject in a noised latent. `fit_vae` and `fit_unet` give it the
two properties a real base has, briefly and on the training scenes only: a latent that keeps the
image (reconstruction + a small KL term, the scaling factor set to 1 / latent std as SD's was) and
a UNet that predicts the noise (the usual epsilon loss).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionXLPipeline
from PIL import Image

from ..tiny import tiny_vae


def load_images(folders: list[str | Path], limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Target images ([-1, 1], N x 3 x H x W) and captions of the manifests in `folders`."""
    pixels, captions = [], []
    for folder in folders:
        folder = Path(folder)
        for line in (folder / "manifest.jsonl").read_text().splitlines()[:limit]:
            row = json.loads(line)
            image = np.asarray(Image.open(folder / row["image"]).convert("RGB"), dtype=np.float32)
            pixels.append(torch.from_numpy(image / 127.5 - 1.0).permute(2, 0, 1))
            captions.append(row.get("caption", ""))
    return torch.stack(pixels), captions


def _crops(data: torch.Tensor, size: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.randint(0, len(data), (batch,), generator=generator)
    top, left = torch.randint(0, data.shape[-1] - size + 1, (2,), generator=generator).tolist()
    return index, data[index][..., top : top + size, left : left + size]


def replace_vae(folder: str | Path, channels: tuple[int, ...], seed: int = 0) -> None:
    """Put a fresh random VAE of SDXL's layout with `channels` per block into the diffusers folder
    `folder`, to be fitted by `fit_vae`."""
    torch.manual_seed(seed)
    tiny_vae(tuple(channels)).save_pretrained(Path(folder) / "vae")


def fit_vae(folder: str | Path, images: torch.Tensor, steps: int, batch: int = 8, crop: int = 64, lr: float = 2e-3, seed: int = 0) -> dict:
    """Train the VAE of the diffusers folder `folder` as an autoencoder; save it with the scaling
    factor that gives unit-variance latents. Returns the reconstruction loss before and after."""
    vae = StableDiffusionXLPipeline.from_pretrained(folder).vae
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr)
    losses = []
    for _ in range(steps):
        _, pixels = _crops(images, crop, batch, generator)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.mse_loss(reconstruction, pixels) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(F.mse_loss(reconstruction, pixels).item())
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 16]).latent_dist.mode() for i in range(0, min(len(images), 64), 16)])
    vae.register_to_config(scaling_factor=1.0 / latents.std().item())
    vae.save_pretrained(Path(folder) / "vae")
    tenth = max(1, steps // 10)
    return {"reconstruction_mse_start": float(np.mean(losses[:tenth])), "reconstruction_mse_end": float(np.mean(losses[-tenth:])),
            "scaling_factor": vae.config.scaling_factor}  # fmt: skip


def fit_unet(folder: str | Path, images: torch.Tensor, captions: list[str], steps: int, batch: int = 8, crop: int = 64,
             lr: float = 1e-3, seed: int = 0, max_noise_weight: float = 1.0) -> dict:  # fmt: skip
    """Train the UNet of `folder` to predict the noise on random crops of the images' latents.

    `max_noise_weight` > 1 weights each sample's epsilon loss by clamp(1 / SNR(t), 1, max_noise_weight):
    the plain epsilon loss scales an error in the image estimate by SNR(t), so at high noise a
    small UNet learns little about the image (what a router reads there); up to the cap, this is
    the image-estimate (x0) loss instead.
    """
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        vae = pipe.vae
        latents = torch.cat([vae.encode(images[i : i + 16]).latent_dist.mode() for i in range(0, len(images), 16)])
        latents = latents * vae.config.scaling_factor
        encoded = [pipe.encode_prompt(c, device="cpu", do_classifier_free_guidance=False) for c in captions]
    text = torch.cat([e[0] for e in encoded])
    pooled = torch.cat([e[2] for e in encoded])
    side = images.shape[-1]
    time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=torch.float32).expand(batch, -1)
    unet = pipe.unet
    snr = scheduler.alphas_cumprod / (1 - scheduler.alphas_cumprod)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr, weight_decay=1e-2)
    losses = []
    for _ in range(steps):
        index, clean = _crops(latents, crop // pipe.vae_scale_factor, batch, generator)
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        added = {"text_embeds": pooled[index], "time_ids": time_ids}
        prediction = unet(scheduler.add_noise(clean, noise, timesteps), timesteps, encoder_hidden_states=text[index], added_cond_kwargs=added).sample
        per_sample = (prediction - noise).pow(2).mean(dim=(1, 2, 3))
        weight = (1 / snr[timesteps]).clamp(1.0, max_noise_weight) if max_noise_weight > 1 else torch.ones_like(per_sample)
        loss = (weight * per_sample).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(per_sample.mean().item())
    unet.save_pretrained(Path(folder) / "unet")
    tenth = max(1, steps // 10)
    return {"denoising_loss_start": float(np.mean(losses[:tenth])), "denoising_loss_end": float(np.mean(losses[-tenth:]))}
