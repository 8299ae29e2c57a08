"""Offline model skeletons: a tiny random SDXL for tests and preview, and the full SDXL UNet config.

Nothing here touches the network. `write_tiny_sdxl(folder)` writes an ordinary diffusers SDXL
folder (plus a tiny CLIP vision encoder), so tests load it through the same `from_pretrained`
path that real weights take.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

# The UNet of stabilityai/stable-diffusion-xl-base-1.0 (unet/config.json), kept here so the real
# architecture can be built on the meta device or with random weights without a download.
SDXL_UNET_CONFIG: dict = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}

# The UNet of diffusers' own SDXL pipeline tests, at a 64 px default size.
TINY_UNET_CONFIG: dict = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2],
    "attention_head_dim": [2, 4],
    "cross_attention_dim": 80,  # text_encoder (32) + text_encoder_2 (48)
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 80,  # 6 time ids * 8 + pooled 32
    "norm_num_groups": 1,
}


def _byte_symbols() -> list[str]:
    """CLIP's reversible byte -> printable character table (GPT-2 style), 256 symbols."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = [], 0
    for b in range(256):
        if b in printable:
            codes.append(b)
        else:
            codes.append(256 + extra)
            extra += 1
    order = sorted(range(256), key=lambda b: (b not in printable, b))
    table = {b: chr(c) for b, c in zip(range(256), codes)}
    return [table[b] for b in order]


def tiny_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer built in memory: any text tokenizes, no vocab file needed."""
    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("o", "n</w>")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _text_config(tokenizer: CLIPTokenizer, hidden_size: int = 32, layers: int = 5) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


TINY_VAE_CHANNELS = (8, 16, 16, 16)


def tiny_vae(block_out_channels: tuple[int, ...] = TINY_VAE_CHANNELS) -> AutoencoderKL:
    """A random VAE of SDXL's layout (4 blocks: scale factor 8; 4 latent channels), narrow."""
    if len(block_out_channels) != 4:
        raise ValueError(f"the VAE needs 4 block widths (scale factor 8), got {block_out_channels}")
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=list(block_out_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def tiny_sdxl_components(seed: int = 0) -> dict:
    """Random tiny SDXL components (plus a CLIP vision encoder), deterministic for a given seed."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = tiny_vae()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    torch.manual_seed(seed + 3)
    # Wider and deeper than text_encoder, as in real SDXL (768 vs 1280 wide, OpenCLIP block 9
    # present): diffusers' single-file loader tells the two encoders and SDXL base apart by that.
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, hidden_size=48, layers=10))
    torch.manual_seed(seed + 4)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            projection_dim=32,
            num_attention_heads=4,
            num_hidden_layers=5,
            image_size=32,
            patch_size=8,
        )
    )
    feature_extractor = CLIPImageProcessor(size=32, crop_size=32)
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tiny_tokenizer(),
        "unet": unet,
        "scheduler": scheduler,
        "image_encoder": image_encoder,
        "feature_extractor": feature_extractor,
    }


def write_tiny_sdxl(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random SDXL as a standard diffusers folder (with `image_encoder/`)."""
    folder = Path(folder)
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed), add_watermarker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def synthetic_subject(seed: int, size: tuple[int, int] = (72, 56), alpha: bool = True) -> Image.Image:
    """A random textured picture with an elliptical subject, marked by the alpha channel.

    Not a character anyone would draw: a stand-in for tests, benchmarks and the preview mode.
    """
    rng = np.random.RandomState(seed)
    width, height = size
    pixels = (rng.rand(height, width, 3) * 255).astype(np.uint8)
    if not alpha:
        return Image.fromarray(pixels, "RGB")
    yy, xx = np.mgrid[:height, :width]
    inside = ((yy - height / 2) / (height * 0.4)) ** 2 + ((xx - width / 2) / (width * 0.35)) ** 2 <= 1
    return Image.fromarray(np.dstack([pixels, inside.astype(np.uint8) * 255]), "RGBA")


def ip_adapter_plus_state(
    unet: UNet2DConditionModel, clip_dim: int, num_tokens: int = 16, heads: int = 20, depth: int = 4,
    seed: int = 0, std: float | None = 0.1, dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Random IP-Adapter Plus weights in the ORIGINAL file layout of
    `ip-adapter-plus_sdxl_vit-h.safetensors` (`image_proj.*`: a resampler of `depth` layers with
    heads of 64; `ip_adapter.{1,3,...}.to_k_ip/to_v_ip` for every attn2 of `unet`). The release
    is 16 tokens, 20 heads, 4 layers over ViT-H (1280): 191 tensors for the SDXL UNet.
    `std=None` draws each matrix with std 1/sqrt(fan_in) (sane activations at full size)."""
    text_dim, inner = unet.config.cross_attention_dim, heads * 64
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=None):
        spread = scale if scale is not None else (std if std is not None else shape[-1] ** -0.5)
        return (torch.randn(*shape, generator=generator) * spread).to(dtype)

    def ones(*shape):
        return (1 + rand(*shape)) if std is not None else torch.ones(*shape, dtype=dtype)

    state = {
        "image_proj.latents": rand(1, num_tokens, clip_dim, scale=clip_dim**-0.5),
        "image_proj.proj_in.weight": rand(clip_dim, clip_dim),
        "image_proj.proj_in.bias": rand(clip_dim),
        "image_proj.proj_out.weight": rand(text_dim, clip_dim),
        "image_proj.proj_out.bias": rand(text_dim),
        "image_proj.norm_out.weight": ones(text_dim),
        "image_proj.norm_out.bias": rand(text_dim),
    }
    for i in range(depth):
        layer = f"image_proj.layers.{i}"
        for norm in ("norm1", "norm2"):
            state[f"{layer}.0.{norm}.weight"] = ones(clip_dim)
            state[f"{layer}.0.{norm}.bias"] = rand(clip_dim)
        state[f"{layer}.0.to_q.weight"] = rand(inner, clip_dim)
        state[f"{layer}.0.to_kv.weight"] = rand(2 * inner, clip_dim)
        state[f"{layer}.0.to_out.weight"] = rand(clip_dim, inner)
        state[f"{layer}.1.0.weight"] = ones(clip_dim)
        state[f"{layer}.1.0.bias"] = rand(clip_dim)
        state[f"{layer}.1.1.weight"] = rand(4 * clip_dim, clip_dim)
        state[f"{layer}.1.3.weight"] = rand(clip_dim, 4 * clip_dim)
    key_id = 1
    for name in unet.attn_processors:  # IP-Adapter numbering: every processor, attn2 odd
        if name.endswith("attn2.processor"):
            attn = unet.get_submodule(name[: -len(".processor")])
            state[f"ip_adapter.{key_id}.to_k_ip.weight"] = rand(attn.to_k.out_features, text_dim)
            state[f"ip_adapter.{key_id}.to_v_ip.weight"] = rand(attn.to_v.out_features, text_dim)
            key_id += 2
    return state


def tiny_ip_adapter_state(folder: str | os.PathLike, num_tokens: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """`ip_adapter_plus_state` sized for the tiny SDXL folder at `folder` (one head of 64), so
    public-weights loading is tested through the real key mapping. Reads the folder's configs
    only (the UNet is built on the meta device: its shapes are all that is needed)."""
    from accelerate import init_empty_weights

    folder = Path(folder)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    clip_dim = CLIPVisionConfig.from_pretrained(folder / "image_encoder").hidden_size
    return ip_adapter_plus_state(unet, clip_dim, num_tokens=num_tokens, heads=1, seed=seed)


def write_tiny_ip_adapter(folder: str | os.PathLike, path: str | os.PathLike, seed: int = 0) -> Path:
    """Write `tiny_ip_adapter_state(folder)` as a safetensors file, like the public release."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.contiguous() for k, v in tiny_ip_adapter_state(folder, seed=seed).items()}, str(path))
    return path
