"""LoRA files of a data folder: checked as safetensors by their content, stored once by content
(`loras/<sha256>.safetensors`, like control pictures), and what a setting's source loads from.

A file is refused unless its bytes are a safetensors file: an 8-byte header length, a JSON header
whose tensors fill the rest of the file exactly, and LoRA weights among them. A pickle (a torch
checkpoint, .bin / .pt / .ckpt, or one renamed .safetensors) could run code when loaded, so it is
refused by its name and by its content before anything is stored.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .files import open_atomic
from .lora_settings import LORA_FOLDER, NO_LORA, PICKLE_SUFFIXES, check_lora, is_hub_id, is_stored_lora

MiB = 1024 * 1024
MAX_LORA_BYTES = 2048 * MiB  # SDXL LoRAs are 10-900 MB; the largest published ones under 2 GB
MAX_HEADER_BYTES = 100 * MiB  # as the safetensors library's own limit
_CHUNK = 4 * MiB
_PICKLE_SIGNS = (b"\x80", b"PK\x03\x04")  # a pickle's protocol byte; torch.save's zip


class LoraFileError(ValueError):
    """A LoRA file that is not loaded (not safetensors, damaged, no LoRA weights, too large)."""


def check_safetensors(path: str | Path, what: str = "the LoRA file") -> dict:
    """The JSON header of a safetensors file, after checking the file is one (by content)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_LORA_BYTES:
        raise LoraFileError(f"{what} is {size / MiB:.0f} MB; at most {MAX_LORA_BYTES // MiB} MB are accepted")
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else 0
        if head.startswith(_PICKLE_SIGNS) or not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            kind = "a pickle (a PyTorch checkpoint)" if head.startswith(_PICKLE_SIGNS) else "not a safetensors file"
            raise LoraFileError(
                f"{what} is {kind}: only .safetensors LoRAs are loaded, since a pickle could run code "
                "(convert it to .safetensors with a tool you trust)"
            )
        text = f.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LoraFileError(f"{what} is not a safetensors file (its header is not JSON: {err})") from err
    if not isinstance(header, dict):
        raise LoraFileError(f"{what} is not a safetensors file (its header is not a JSON object)")
    end, keys = 0, []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(entry.get("dtype") if isinstance(entry, dict) else None, str)
            or not isinstance(entry.get("shape"), list)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise LoraFileError(f"{what} is not a readable safetensors file (tensor {key!r} is described wrongly)")
        end, keys = max(end, offsets[1]), [*keys, key]
    if 8 + length + end != size:
        raise LoraFileError(f"{what} is damaged or truncated: its tensors do not fill the file exactly")
    if not any("lora" in key.lower() for key in keys):
        raise LoraFileError(f"{what} holds no LoRA weights (no lora keys): is it a LoRA?")
    return header


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def store_lora_file(data_dir: str | Path, path: str | Path) -> str:
    """Keep the LoRA file at `path` (checked first); returns its name relative to the data folder.
    The same file is stored once; the copy is atomic."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES or path.suffix.lower() != ".safetensors":
        raise LoraFileError(
            f"{path.name}: only .safetensors LoRA files are accepted "
            "(a pickle such as .bin, .pt or .ckpt could run code)"
        )
    check_safetensors(path, path.name)
    name = f"{LORA_FOLDER}/{file_sha256(path)}.safetensors"
    target = Path(data_dir) / name
    if not target.exists():
        with open(path, "rb") as source, open_atomic(target) as sink:
            shutil.copyfileobj(source, sink, _CHUNK)
    return name


def lora_setting(data_dir: str | Path, source, weight: float, *, panel: bool, local_paths: bool = True) -> dict:
    """The `lora` setting for what a writer gave: None (the story's on a panel, none on a story),
    "none" (a panel without LoRA), a .safetensors file (stored by content), a local folder holding
    one, a stored file's name, or a hub id. Everything is checked before a file is stored.
    local_paths=False: no file or folder of this machine by name (what a browser or HTTP client
    types; it uploads its file instead)."""
    if source is None or (isinstance(source, str) and not source.strip()):
        return {}
    text = str(source).strip()
    if text == NO_LORA:
        if not panel:
            raise LoraFileError('a story has no LoRA to override: "none" is for a panel (clear the story\'s instead)')
        return {"none": True}
    check_lora({"source": "loras/" + "0" * 64 + ".safetensors", "weight": weight})  # the weight, first
    path = Path(text).expanduser()
    if not local_paths and not is_hub_id(text) and not is_stored_lora(text):
        raise LoraFileError(f"{text!r} is not a hub id (owner/name): upload the .safetensors file instead")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraFileError(f"{path.name}: only .safetensors LoRA files are loaded (a pickle could run code)")
    if is_stored_lora(text) and (Path(data_dir) / text).is_file():
        return check_lora({"source": text, "weight": weight}, panel=panel)
    if path.is_file():
        return {"source": store_lora_file(data_dir, path), "weight": float(weight)}
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            found = ", ".join(f.name for f in files) or "none"
            raise LoraFileError(f"{path} must hold exactly one .safetensors LoRA file (found: {found})")
        check_safetensors(files[0], f"{files[0].name} in {path}")
        return check_lora({"source": str(path.resolve()), "weight": weight}, panel=panel)
    if is_hub_id(text):
        return check_lora({"source": text, "weight": weight}, panel=panel)
    raise LoraFileError(
        f"the LoRA {text!r} does not exist: give a .safetensors file, a folder holding one, or a hub id (owner/name)"
    )


def lora_load_source(data_dir: str | Path, source: str) -> str:
    """What the pipeline's `load_lora` reads for a setting's source (a stored file: its path)."""
    if not is_stored_lora(source):
        return source
    path = Path(data_dir) / source
    if not path.is_file():
        raise LoraFileError(f"the LoRA file {source} is missing from the data folder: set the LoRA again")
    return str(path)


def lora_cache_key(source: str) -> str:
    """What a loaded LoRA is known by: its source, and for a folder also its file's size and time,
    so a LoRA changed in place is read again (a stored file's name is its content already)."""
    if is_stored_lora(source) or is_hub_id(source):
        return source
    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    if len(files) != 1:
        return source  # loading says what is wrong
    stat = files[0].stat()
    return f"{source}|{files[0].name}|{stat.st_size}|{stat.st_mtime_ns}"
