"""The preview mode's tiny model, built once and kept on disk keyed by what builds it.

    folder, ip_adapter = preview_model_files()   # built on the first call, found afterwards

Building the tiny SDXL (random weights, saved as a diffusers folder) takes seconds; a start of
`app.py --preview` only loads it. The key is a hash of `anystory/tiny.py` (every config and seed
is there) and the versions of the libraries that write the files, so a change to either builds a
new one next to the old. The cache is `$ANYSTORY_PREVIEW_CACHE`, else
`~/.cache/anystory-studio/preview-model`.

Imports nothing heavy itself: torch and diffusers load only when a model has to be built.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

CACHE_ENV = "ANYSTORY_PREVIEW_CACHE"
TINY_SOURCE = Path(__file__).resolve().parent / "tiny.py"
LIBRARIES = ("torch", "diffusers", "transformers", "safetensors")
MODEL_FOLDER = "tiny-sdxl"
IP_ADAPTER_FILE = "tiny-ip-adapter-plus.safetensors"


def preview_cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "anystory-studio" / "preview-model"


def preview_model_key() -> str:
    """16 hex digits naming the tiny model that `anystory/tiny.py` and these libraries build."""
    digest = hashlib.sha256(TINY_SOURCE.read_bytes())
    for name in LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"\n{name}=={version}".encode())
    return digest.hexdigest()[:16]


def _complete(entry: Path) -> bool:
    return (entry / MODEL_FOLDER / "model_index.json").is_file() and (entry / IP_ADAPTER_FILE).is_file()


def preview_model_files(root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(tiny SDXL folder, tiny IP-Adapter Plus file), built into the cache when missing.

    Built in a temporary folder beside the entry and renamed into place: a start that is stopped
    midway leaves no half-written model, and two starts at once keep one of the two."""
    root = Path(root) if root is not None else preview_cache_root()
    entry = root / f"tiny-sdxl-{preview_model_key()}"
    if not _complete(entry):
        from . import tiny

        root.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            folder = tiny.write_tiny_sdxl(building / MODEL_FOLDER)
            tiny.write_tiny_ip_adapter(folder, building / IP_ADAPTER_FILE)
            if entry.exists():  # an incomplete entry (a copy of the cache cut short): replaced
                shutil.rmtree(entry, ignore_errors=True)
            try:
                os.rename(building, entry)
            except OSError:
                if not _complete(entry):  # not another start's finished build
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return entry / MODEL_FOLDER, entry / IP_ADAPTER_FILE


__all__ = ["CACHE_ENV", "preview_cache_root", "preview_model_files", "preview_model_key"]
