"""Tiny ControlNet, LoRA and control pictures built offline, for tests, benchmarks and preview mode.

Apart from tiny.py, whose source is part of the training proof's cache key (these do not make
its base).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from PIL import Image


def tiny_controlnet(
    unet: UNet2DConditionModel, seed: int = 0, conditioning_channels: tuple[int, ...] = (8, 8, 16, 16)
):
    """A ControlNet made from `unet` (diffusers' `ControlNetModel.from_unet`) whose zero
    convolutions are drawn at random, so it changes the image (a fresh one adds exactly nothing).
    `conditioning_channels`: the control picture's encoder (4 widths: 3 halvings, 8x, as the
    latents); (16, 32, 96, 256) is SDXL ControlNets' own."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_channels)
    generator = torch.Generator().manual_seed(seed)
    zero_convs = list(controlnet.controlnet_down_blocks) + [controlnet.controlnet_mid_block]
    zero_convs.append(controlnet.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
    return controlnet


def write_tiny_controlnet(sdxl_folder: str | os.PathLike, folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write `tiny_controlnet` of the tiny SDXL at `sdxl_folder`'s UNet as a diffusers folder."""
    unet = UNet2DConditionModel.from_pretrained(Path(sdxl_folder) / "unet")
    folder = Path(folder)
    tiny_controlnet(unet, seed).save_pretrained(folder, safe_serialization=True)
    return folder


def edge_picture(size: int = 64, seed: int = 0) -> Image.Image:
    """A control picture for tests: white strokes on black (what an edge map looks like)."""
    rng = np.random.RandomState(seed)
    pixels = np.zeros((size, size, 3), np.uint8)
    for _ in range(6):
        if rng.rand() < 0.5:
            pixels[rng.randint(size), :] = 255
        else:
            pixels[:, rng.randint(size)] = 255
    return Image.fromarray(pixels, "RGB")


def write_tiny_lora(sdxl_folder: str | os.PathLike, path: str | os.PathLike, rank: int = 4, seed: int = 0) -> Path:
    """A random SDXL LoRA for the tiny SDXL at `sdxl_folder` (PEFT, every attention projection of
    the UNet, both LoRA matrices drawn at random so it acts), saved by diffusers'
    `save_lora_weights` as one .safetensors file, as LoRAs are published."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(Path(sdxl_folder) / "unet")
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                        target_modules=["to_q", "to_k", "to_v", "to_out.0"])  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config)
    state = get_peft_model_state_dict(unet)
    path = Path(path)
    StableDiffusionXLPipeline.save_lora_weights(
        path.parent, unet_lora_layers=state, weight_name=path.name, safe_serialization=True
    )
    return path
