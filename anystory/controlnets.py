"""ControlNets for the routed pipeline: loading them, and the diffusers loop that runs them.

`AnyStoryPipeline` runs a generation with a ControlNet through diffusers' own SDXL ControlNet
pipeline (`StableDiffusionXLControlNetPipeline`, or the union one for `ControlNetUnionModel`),
built on the same components: the same UNet, whose AnyStory processors get the call's
`InjectionContext` exactly as in the plain loop. The ControlNet itself is diffusers' and sees no
injection (it runs with its own processors; diffusers passes it no `cross_attention_kwargs`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from diffusers import (
    ControlNetModel,
    ControlNetUnionModel,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLControlNetUnionPipeline,
)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.models.controlnets.multicontrolnet_union import MultiControlNetUnionModel

from .weights import CheckpointError, ModelLoadError, hub_call

# The call arguments that only a generation with a ControlNet takes (AnyStory's names).
CONTROL_ARGUMENTS = frozenset({"controlnet", "control_image", "controlnet_conditioning_scale", "guess_mode",
                               "control_guidance_start", "control_guidance_end", "control_mode"})  # fmt: skip
_UNION = (ControlNetUnionModel, MultiControlNetUnionModel)


def as_controlnet(value) -> torch.nn.Module | None:
    """A ControlNet model, a list of them (several: diffusers' Multi* wrapper), or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        nets = [as_controlnet(v) for v in value]
        if len(nets) == 1:
            return nets[0]
        if all(isinstance(n, ControlNetUnionModel) for n in nets):
            return MultiControlNetUnionModel(nets)
        if all(isinstance(n, ControlNetModel) for n in nets):
            return MultiControlNetModel(nets)
        raise ValueError("several ControlNets must all be ControlNetModel or all ControlNetUnionModel")
    if isinstance(value, (ControlNetModel, MultiControlNetModel, *_UNION)):
        return value
    raise TypeError(
        f"controlnet must be a diffusers SDXL ControlNetModel / ControlNetUnionModel (or a list of them), "
        f"or a hub id, folder or .safetensors file to load one; got {type(value).__name__}"
    )


def load_controlnet(source: str | Path, dtype: torch.dtype, **kwargs) -> torch.nn.Module:
    """A ControlNet from a hub id, a diffusers folder, or one .safetensors file (never a pickle).

    The class comes from the folder's config: `ControlNetUnionModel` for the union models, else
    `ControlNetModel`."""
    source = str(source)
    path = Path(source).expanduser()
    if path.is_file() or path.suffix in (".safetensors", ".ckpt", ".bin", ".pt", ".pth"):
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{source}: only .safetensors ControlNet files are loaded (pickles can run code)")
        if not path.is_file():
            raise ModelLoadError(f"{source} does not exist")
        return hub_call(ControlNetModel.from_single_file, str(path), torch_dtype=dtype, **kwargs)
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not path.exists():
        raise ModelLoadError(f"{source} does not exist: pass a ControlNet folder, a .safetensors file or a hub id")
    where = str(path) if path.exists() else source
    config = hub_call(ControlNetModel.load_config, where, **kwargs)
    cls = ControlNetUnionModel if config.get("_class_name") == "ControlNetUnionModel" else ControlNetModel
    if config.get("_class_name") not in (None, "ControlNetModel", "ControlNetUnionModel"):
        raise ModelLoadError(f"{source} holds a {config['_class_name']}, not an SDXL ControlNetModel")
    return hub_call(cls.from_pretrained, where, torch_dtype=dtype, use_safetensors=True, **kwargs)


def runner_class(controlnet: torch.nn.Module) -> type:
    """diffusers' SDXL pipeline that runs this ControlNet."""
    if isinstance(controlnet, _UNION):
        return StableDiffusionXLControlNetUnionPipeline
    return StableDiffusionXLControlNetPipeline


def control_image_argument(cls: type) -> str:
    """The name `cls.__call__` gives the control picture (`image`, or `control_image` for union)."""
    return "control_image" if "control_image" in inspect.signature(cls.__call__).parameters else "image"


def call_arguments(cls: type) -> frozenset[str]:
    """The keyword arguments a generation through `cls` takes, in AnyStory's names."""
    names = set(inspect.signature(cls.__call__).parameters) - {"self", "prompt", "kwargs", "image"}
    return frozenset(names | {"control_image", "controlnet"})


def build_runner(pipe, controlnet: torch.nn.Module):
    """diffusers' ControlNet pipeline over `pipe`'s own components (nothing is copied)."""
    cls = runner_class(controlnet)
    runner = cls(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2,
        unet=pipe.unet,
        controlnet=controlnet,
        scheduler=pipe.scheduler,
        force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
        add_watermarker=pipe.watermark is not None,
        feature_extractor=pipe.feature_extractor,
        image_encoder=pipe.image_encoder,
    )
    runner.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return runner
