"""The full-size SDXL pipeline for benchmarks, built offline with random weights.

Speed and memory do not depend on the weights' values, only on the shapes, so this builds:
- the FULL SDXL UNet (`anystory.tiny.SDXL_UNET_CONFIG`, 2.57 B parameters) and the SDXL VAE
  (config below, as `stabilityai/stable-diffusion-xl-base-1.0/vae/config.json`);
- small text encoders with the real output widths (768 + 1280 = 2048 tokens, pooled 1280, so
  the UNet's added conditions fit: 6 * 256 + 1280 = 2816); they run once per image;
- a CLIP vision encoder of ViT-H/14 shape (hidden 1280, 224 px, patch 14) with `image_layers`
  layers (32 = the real OpenCLIP ViT-H depth);
- for public-weights mode, an IP-Adapter Plus file in the release's exact layout
  (`ip-adapter-plus_sdxl_vit-h.safetensors`: 191 tensors, 16 tokens, 20 heads, random values).

The parameters are allocated on the meta device and filled cheaply (normal / sqrt(fan_in);
norms 1, biases 0): a default init of 2.5 B parameters takes minutes on two cores. The folder is
written with `save_pretrained` and loaded back by `AnyStoryPipeline.from_pretrained(folder,
adapter="init", ...)`, the real loading path.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from anystory.sdxl_vae import SDXL_VAE_CONFIG
from anystory.tiny import SDXL_UNET_CONFIG, ip_adapter_plus_state, tiny_tokenizer

IP_ADAPTER_NAME = "ip-adapter-plus_sdxl_vit-h.safetensors"

# stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json
SDXL_SCHEDULER_CONFIG: dict = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def _fill_(module: torch.nn.Module, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """Materialise a meta-device module on the CPU in `dtype` with cheap, well-scaled values."""
    module.to(dtype)
    module.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                param.zero_()
            elif param.ndim == 1 or "norm" in name:
                param.fill_(1.0)
            else:
                fan_in = math.prod(param.shape[1:])
                param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
        for buffer in module.buffers():
            buffer.zero_()
    return module


def full_unet(dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> UNet2DConditionModel:
    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    return _fill_(unet, dtype, seed)


def full_vae(dtype: torch.dtype = torch.bfloat16, seed: int = 1) -> AutoencoderKL:
    with init_empty_weights():
        vae = AutoencoderKL(**SDXL_VAE_CONFIG)
    return _fill_(vae, dtype, seed)


def _text_config(tokenizer, hidden: int, layers: int, projection: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=hidden // 64,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        projection_dim=projection,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def full_components(dtype: torch.dtype = torch.bfloat16, image_layers: int = 32, text_layers: int = 2) -> dict:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(_text_config(tokenizer, 768, text_layers, 768)).to(dtype)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, 1280, text_layers, 1280)).to(dtype)
    vision = CLIPVisionConfig(
        hidden_size=1280,
        intermediate_size=5120,
        projection_dim=1024,
        num_attention_heads=16,
        num_hidden_layers=image_layers,
        image_size=224,
        patch_size=14,
        hidden_act="gelu",
    )
    with init_empty_weights():
        image_encoder = CLIPVisionModelWithProjection(vision)
    image_encoder = _fill_(image_encoder, dtype, 3)
    # position_ids is a buffer: restore it after the zero fill
    embeddings = image_encoder.vision_model.embeddings
    if hasattr(embeddings, "position_ids"):
        embeddings.position_ids.copy_(torch.arange(embeddings.position_ids.shape[-1])[None])
    return {
        "vae": full_vae(dtype),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tiny_tokenizer(),
        "unet": full_unet(dtype),
        "scheduler": EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        "image_encoder": image_encoder,
        "feature_extractor": CLIPImageProcessor(size=224, crop_size=224),
    }


def write_full_sdxl(folder: str | os.PathLike, image_layers: int = 32, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the full-size random SDXL as a diffusers folder (~6.5 GB in bf16/fp16); reused when complete."""
    folder = Path(folder)
    marker = folder / f".complete-image{image_layers}-{str(dtype).split('.')[-1]}"
    if marker.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    pipe = StableDiffusionXLPipeline(**full_components(dtype, image_layers), add_watermarker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    del pipe
    gc.collect()
    marker.touch()
    return folder


def write_release_ip_adapter(folder: str | os.PathLike, dtype: torch.dtype = torch.bfloat16) -> Path:
    """`folder`/ip-adapter-plus_sdxl_vit-h.safetensors with random values in the release's layout
    for the full SDXL UNet (0.85 GB in bf16/fp16); reused when complete."""
    from safetensors.torch import save_file

    path = Path(folder) / IP_ADAPTER_NAME
    marker = path.with_name(f".complete-{IP_ADAPTER_NAME}-{str(dtype).split('.')[-1]}")
    if marker.exists():
        return path
    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)  # shapes and processor names only
    state = ip_adapter_plus_state(unet, clip_dim=1280, num_tokens=16, heads=20, std=None, dtype=dtype)
    assert len(state) == 191, len(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    marker.touch()
    return path


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def add_machine_arguments(parser) -> None:
    """--device, --dtype, --threads, --model-dir: the options every full-size benchmark takes."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp16 on CUDA, bf16 on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--model-dir", default=None, help="keep/reuse the written full-size folder here")


def machine_from(args) -> tuple[torch.device, torch.dtype]:
    """Apply --threads; the device and dtype (fp16 on CUDA, bf16 on CPU unless --dtype)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    return device, DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "bf16")]


def load_full_anystory(folder: str | os.PathLike, dtype: torch.dtype, device, reference_size: int = 512):
    """`AnyStoryPipeline.from_pretrained(folder, adapter="init")` at the paper's sizes."""
    from anystory import AnyStoryPipeline
    from anystory.pipeline import AnyStoryConfig

    config = AnyStoryConfig(reference_size=reference_size)  # the paper's SDXL sizes: m 64, d_r 1024, d' 256
    pipe = AnyStoryPipeline.from_pretrained(
        str(folder), adapter="init", config=config, dtype=dtype, device=device, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def full_anystory(model_dir: str | None, dtype: torch.dtype, device, image_layers: int = 32):
    """The full-size AnyStoryPipeline: written to `model_dir` (reused when complete) or to a
    temporary folder, removed once loaded."""
    with model_folder(model_dir) as folder:
        write_full_sdxl(folder, image_layers=image_layers, dtype=dtype)
        return load_full_anystory(folder, dtype, device)


@contextlib.contextmanager
def model_folder(model_dir: str | None):
    """Where the full-size files go: `model_dir` (kept and reused), else a temporary folder
    removed when the block ends (files stay readable while it runs: load_ip_adapter needs them)."""
    if model_dir:
        yield Path(model_dir)
        return
    with tempfile.TemporaryDirectory() as temporary:
        yield Path(temporary) / "full-sdxl"


def load_full_public(folder: str | os.PathLike, dtype: torch.dtype, device, image_layers: int = 32):
    """The full-size AnyStoryPipeline in public-weights mode (`adapter="public"`, the app's
    default) from `folder`, writing the SDXL folder and the release-layout IP-Adapter Plus file
    there first when they are not complete. Returns (pipe, the IP-Adapter file)."""
    from anystory import AnyStoryPipeline

    write_full_sdxl(folder, image_layers=image_layers, dtype=dtype)
    ip_file = write_release_ip_adapter(folder, dtype=dtype)
    pipe = AnyStoryPipeline.from_pretrained(
        str(folder), adapter="public", ip_adapter=str(ip_file), dtype=dtype, device=device, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, ip_file


def subject_pictures(count: int = 3) -> list:
    """The benchmarks' subjects: synthetic cut-outs (RGBA, 384x512), seeds 1..count."""
    from anystory.tiny import synthetic_subject

    return [synthetic_subject(seed, size=(384, 512)) for seed in range(1, count + 1)]


def plain_twin(pipe) -> StableDiffusionXLPipeline:
    """diffusers' own SDXL pipeline over the SAME component objects (no second copy of anything)."""
    plain = StableDiffusionXLPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2,
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        add_watermarker=False,
    )
    plain.set_progress_bar_config(disable=True)
    return plain


# -- measuring -----------------------------------------------------------------------------------


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    return _status_kb("VmHWM") / 1024


def _status_kb(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


class Timer:
    """Wall seconds (`seconds`) and this process's CPU seconds (`cpu_seconds`) of a block. On a
    shared CPU machine the CPU time of a run with a fixed thread count hardly depends on what
    else runs; the wall time does."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start
