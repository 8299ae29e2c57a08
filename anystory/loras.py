"""SDXL LoRAs (style adapters) for the routed pipeline: safe sources, and encoding without them.

LoRAs load through diffusers' own `load_lora_weights` (PEFT layers wrap the UNet's and the text
encoders' linear layers), which the AnyStory processors call as they call any layer, so a LoRA
acts in every generation, with or without subjects. Only safetensors are read: a pickled LoRA
(.bin, .pt, .ckpt) could run code when loaded, so it is refused with what to do instead.

A character's encoding does not depend on the LoRA of the moment: in public-weights mode the UNet
itself encodes references, so it does that with every LoRA layer switched off (`lora_off`).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import torch

from .weights import CheckpointError, ModelLoadError, load_state_dict_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def lora_source(source: str | Path, weight_name: str | None = None) -> tuple[object, dict]:
    """What to hand `load_lora_weights` for `source`: a state dict read from a local .safetensors
    file (a file, or a folder holding one), or a hub id with `use_safetensors=True` (diffusers then
    never falls back to a pickle)."""
    if weight_name is not None and not weight_name.endswith(".safetensors"):
        raise CheckpointError(f"{weight_name}: only .safetensors LoRA files are loaded (a pickle could run code)")
    text = str(source)
    path = Path(text).expanduser()
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{text}: only .safetensors LoRA files are loaded (a pickle could run code); "
            "convert it with a tool you trust"
        )
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{text} is not a .safetensors file")
        return load_state_dict_file(path), {}
    if path.is_dir():
        files = [path / weight_name] if weight_name else sorted(path.glob("*.safetensors"))
        files = [f for f in files if f.is_file()]
        if len(files) != 1:
            found = ", ".join(f.name for f in files) or "none"
            raise ModelLoadError(f"{path} needs exactly one .safetensors LoRA file (found: {found}); pass weight_name=")
        return load_state_dict_file(files[0]), {}
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or path.suffix == ".safetensors"
    if looks_local:
        raise ModelLoadError(f"{text} does not exist: pass a .safetensors LoRA file, a folder with one, or a hub id")
    return text, {"weight_name": weight_name, "use_safetensors": True}


def adapter_name_for(source: str | Path, taken) -> str:
    """A PEFT adapter name from the source's name (letters, digits, _), unique among `taken`."""
    stem = Path(str(source)).stem or "lora"
    base = re.sub(r"\W+", "_", stem).strip("_") or "lora"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def lora_layers(module: torch.nn.Module) -> list:
    """The PEFT LoRA layers inside `module` (none when peft is not installed or nothing is loaded)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def lora_off(module: torch.nn.Module):
    """Every LoRA layer of `module` switched off inside the block, each back as it was after."""
    layers = [(layer, layer.disable_adapters) for layer in lora_layers(module)]
    for layer, _ in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, was_disabled in layers:
            layer.enable_adapters(not was_disabled)
