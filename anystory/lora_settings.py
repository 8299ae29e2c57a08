"""A story's or a panel's `lora` setting (storage floor: imports nothing above it): which SDXL LoRA
styles the generation and at what weight. The files themselves: lora_files.py.

A source is a LoRA file the user gave, stored once by content in the data folder
(`loras/<sha256>.safetensors`), a local folder holding one .safetensors file (an absolute path),
or a hub id (`owner/name`, downloaded when first used, safetensors only).

    story: {} (no LoRA) or {"source", "weight"}
    panel: {} (the story's), {"none": True} (no LoRA, whatever the story has) or {"source", "weight"}
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath, PureWindowsPath

LORA_FOLDER = "loras"
MIN_LORA_WEIGHT, MAX_LORA_WEIGHT = -2.0, 2.0  # negative weights: "slider" LoRAs push the other way
MAX_SOURCE_CHARS = 1000
NO_LORA = "none"  # what a panel names for "no LoRA, whatever the story has"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # as loras.py refuses them
_STORED_NAME = re.compile(r"^loras/[0-9a-f]{64}\.safetensors$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_stored_lora(source: str) -> bool:
    """True for the name of a LoRA file kept in the data folder (`loras/<sha256>.safetensors`)."""
    return bool(_STORED_NAME.match(source))


def is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not source.startswith(f"{LORA_FOLDER}/")


def check_lora_source(source) -> str:
    """A LoRA source as stored: a stored file's name, an absolute folder path, or a hub id."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError("a LoRA source must be a stored file, an absolute folder path or a hub id (owner/name)")
    source = source.strip()
    if len(source) > MAX_SOURCE_CHARS or any(ord(c) < 32 for c in source):
        raise ValueError("a LoRA source is too long or holds control characters")
    if source.lower().endswith(PICKLE_SUFFIXES):
        raise ValueError(f"{source}: only .safetensors LoRAs are loaded (a pickle could run code)")
    if is_stored_lora(source) or is_hub_id(source):
        return source
    if PurePosixPath(source).is_absolute() or PureWindowsPath(source).is_absolute():
        return source
    raise ValueError(
        f"the LoRA source {source!r} is neither a stored LoRA file (loras/<sha256>.safetensors), "
        "an absolute folder path nor a hub id (owner/name)"
    )


def check_lora_weight(weight) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"a LoRA weight must be a number, got {weight!r}")
    if not MIN_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
        raise ValueError(f"a LoRA weight must be between {MIN_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}, got {weight}")
    return float(weight)


def check_lora(value, *, panel: bool = True) -> dict:
    """A story's (panel=False) or a panel's `lora` setting, validated and normalised."""
    if value in (None, {}):
        return {}
    if not isinstance(value, dict):
        raise ValueError('lora must be an object {source, weight}, {} or {"none": true}')
    if panel and value == {"none": True}:
        return {"none": True}
    unknown = set(value) - {"source", "weight"}
    if unknown:
        extra = ', or {"none": true} on a panel' if panel else ""
        raise ValueError(f"lora has unknown keys {sorted(unknown)}; it takes source and weight{extra}")
    return {"source": check_lora_source(value.get("source")), "weight": check_lora_weight(value.get("weight", 1.0))}


def stored_lora_files(values) -> list[str]:
    """The stored LoRA files (`loras/<sha256>.safetensors`) that `lora` settings name, each once."""
    names = {v.get("source") for v in values if isinstance(v, dict)}
    return sorted(n for n in names if isinstance(n, str) and is_stored_lora(n))
