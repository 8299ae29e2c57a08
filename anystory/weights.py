"""Weight files: AnyStory checkpoints, the public IP-Adapter Plus weights, safe loading, model sources.

An AnyStory checkpoint is a folder:
    config.json          format, version, base model, sizes, which parts are present
    anystory.safetensors subject_encoder.* | reference_net.* | blocks.{i}.attn1.* | blocks.{i}.attn2.*
Block indices are the UNet's transformer blocks in execution order (down, mid, up).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .files import atomic_path, write_atomic

CHECKPOINT_FORMAT = "anystory-adapter"
CHECKPOINT_VERSION = 1
WEIGHTS_NAME = "anystory.safetensors"
PUBLIC_IP_ADAPTER = ("h94/IP-Adapter", "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors")
PUBLIC_IMAGE_ENCODER = ("h94/IP-Adapter", "models/image_encoder")
PARTS = ("subject_qformer", "routing_qformer", "reference_net", "reference_kv", "clip_kv", "router")


class ModelLoadError(RuntimeError):
    """A model or weight file could not be had; the message says what to do."""


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, of another format or version, or does not fit."""


# -- reading files safely ------------------------------------------------------------------------


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file; a pickle only if it loads with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} is a pickle that does not load as plain tensors (weights_only=True); it could run "
            f"code, so it is refused. Convert it to .safetensors with a tool you trust. ({err})"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in _flatten(state).values()):
        raise CheckpointError(f"{path} does not hold a dictionary of tensors")
    return _flatten(state)


def _flatten(state: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolve_file(source: str | os.PathLike, filename: str | None = None) -> Path:
    """A local path for `source` (a file, a folder + filename, or a hub repo + filename)."""
    path = Path(source)
    if filename is None and path.is_file():
        return path
    if path.is_dir():
        if filename is None or not (path / filename).is_file():
            raise ModelLoadError(f"{path / (filename or '')} does not exist")
        return path / filename
    if filename is None:
        raise ModelLoadError(f"{source} is neither a file nor a folder")
    from huggingface_hub import hf_hub_download

    return Path(hub_call(hf_hub_download, str(source), filename=filename))


def hub_call(function, repo: str, *args, **kwargs):
    """Run a hub download/loading call, turning network and access errors into clear advice."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        return function(repo, *args, **kwargs)
    except GatedRepoError as err:
        raise ModelLoadError(
            f"{repo} is gated: accept its licence on the Hugging Face website and log in "
            f"(`hf auth login`), or pass a local path. ({err})"
        ) from err
    except HFValidationError as err:
        raise ModelLoadError(
            f"{repo} is neither an existing local folder or file nor a hub id (user/name): check the path."
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelLoadError(f"{repo} was not found on the hub: check the id, or pass a local folder or file.") from err
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError) as err:
        raise ModelLoadError(_not_downloadable(repo)) from err
    except OSError as err:
        if os.path.exists(repo):
            raise
        if "cached" in str(err) or "outgoing traffic" in str(err):  # diffusers' words for "offline, not cached"
            raise ModelLoadError(_not_downloadable(repo)) from err
        raise ModelLoadError(
            f"{repo} could not be loaded: {err}. Pass a local folder or file, or run `app.py --preview`."
        ) from err


def _not_downloadable(repo: str) -> str:
    return (
        f"{repo} is not in the local Hugging Face cache and cannot be downloaded (no network, or "
        "HF_HUB_OFFLINE is set): connect and retry, pass a local folder or .safetensors file with --model, "
        "or run `python app.py --preview`."
    )


# -- the public IP-Adapter Plus weights ----------------------------------------------------------


def split_ip_adapter(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """IP-Adapter files hold `image_proj.*` (the resampler) and `ip_adapter.{k}.to_k_ip/to_v_ip`."""
    image_proj = {k[len("image_proj.") :]: v for k, v in state.items() if k.startswith("image_proj.")}
    ip_adapter = {k[len("ip_adapter.") :]: v for k, v in state.items() if k.startswith("ip_adapter.")}
    if not image_proj or not ip_adapter:
        raise CheckpointError("not an IP-Adapter file: it needs image_proj.* and ip_adapter.* tensors")
    if "latents" not in image_proj:
        raise CheckpointError("only IP-Adapter *Plus* (a resampler with image_proj.latents) fits AnyStory's CLIP path")
    return image_proj, ip_adapter


# IP-Adapter Plus names the parts of resampler layer i positionally (layers.i.0 = attention,
# layers.i.1 = feed-forward); diffusers' IPAdapterPlusImageProjection names them.
_RESAMPLER_LAYER_KEYS = {
    "0.norm1": "ln0",
    "0.norm2": "ln1",
    "0.to_q": "attn.to_q",
    "0.to_out": "attn.to_out.0",
    "1.0": "ff.0",
    "1.1": "ff.1.net.0.proj",
    "1.3": "ff.1.net.2",
}
RESAMPLER_HEAD_DIM = 64  # IP-Adapter Plus attends in heads of 64 (ViT-H SDXL: 1280 = 20 heads)


def ip_adapter_resampler(image_proj: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """The `image_proj.*` tensors of an IP-Adapter Plus file (prefix removed) as the state dict of
    diffusers' `IPAdapterPlusImageProjection`, and its sizes (depth, heads, dim_head, queries).

    The same mapping as diffusers' own IP-Adapter loading, written against public classes only:
    `to_kv` is split into `to_k` / `to_v`, the positional layer parts get their names.
    """
    state, layers = {}, set()
    for key, value in image_proj.items():
        parts = key.split(".")
        if parts[0] != "layers":
            state[key] = value
            continue
        layer, rest = parts[1], ".".join(parts[2:])
        layers.add(int(layer))
        if rest == "0.to_kv.weight":
            to_k, to_v = value.chunk(2, dim=0)
            state[f"layers.{layer}.attn.to_k.weight"], state[f"layers.{layer}.attn.to_v.weight"] = to_k, to_v
            continue
        part, _, leaf = rest.rpartition(".")
        if part not in _RESAMPLER_LAYER_KEYS:
            raise CheckpointError(f"the IP-Adapter file has an unknown resampler tensor image_proj.{key}")
        state[f"layers.{layer}.{_RESAMPLER_LAYER_KEYS[part]}.{leaf}"] = value
    if not layers or "layers.0.0.to_q.weight" not in image_proj:
        raise CheckpointError("the IP-Adapter file's resampler has no attention layers (image_proj.layers.0.0.to_q)")
    inner = image_proj["layers.0.0.to_q.weight"].shape[0]
    sizes = {
        "depth": max(layers) + 1,
        "heads": max(inner // RESAMPLER_HEAD_DIM, 1),
        "dim_head": min(inner, RESAMPLER_HEAD_DIM),
        "num_queries": image_proj["latents"].shape[1],
    }
    return state, sizes


def ip_adapter_block_keys(unet) -> dict[int, int]:
    """Block index (execution order) -> the k of `ip_adapter.{k}.to_k_ip` for its attn2.

    IP-Adapter numbers every attention processor in `unet.attn_processors` order (down, up,
    mid), attn1 even and attn2 odd: the k-th processor is attn2 of some block.
    """
    from .attention import transformer_blocks

    module_names = {id(m): n for n, m in unet.named_modules()}
    block_of = {f"{module_names[id(b.attn2)]}.processor": i for i, b in enumerate(transformer_blocks(unet))}
    mapping, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            mapping[block_of[name]] = key_id
            key_id += 2
    return mapping


# -- AnyStory checkpoints ------------------------------------------------------------------------


def adapter_tensors(pipe) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint key, live tensor) for every trained AnyStory tensor of a pipeline."""
    encoder = pipe.subject_encoder
    for part in ("subject_qformer", "routing_qformer"):
        module = getattr(encoder, part)
        if module is not None:
            for key, value in module.state_dict(keep_vars=True).items():
                yield f"subject_encoder.{part}.{key}", value
    if pipe.reference_net is not None:
        for key, value in pipe.reference_net.state_dict(keep_vars=True).items():
            yield f"reference_net.{key}", value
    self_attn, cross_attn = pipe.anystory_processors()
    for proc in self_attn:
        if proc.owns_reference_kv:  # public mode shares attn1's own K/V: nothing to store
            yield f"blocks.{proc.index}.attn1.to_k_ref.weight", proc.to_k_ref.weight
            yield f"blocks.{proc.index}.attn1.to_v_ref.weight", proc.to_v_ref.weight
    for proc in cross_attn:
        yield f"blocks.{proc.index}.attn2.to_k_ip.weight", proc.to_k_ip.weight
        yield f"blocks.{proc.index}.attn2.to_v_ip.weight", proc.to_v_ip.weight
        if proc.router is not None:
            for key, value in proc.router.state_dict(keep_vars=True).items():
                yield f"blocks.{proc.index}.attn2.router.{key}", value


def adapter_parts(pipe) -> list[str]:
    self_attn, cross_attn = pipe.anystory_processors()
    present = {
        "subject_qformer": True,
        "routing_qformer": pipe.subject_encoder.routing_qformer is not None,
        "reference_net": pipe.reference_net is not None,
        "reference_kv": any(p.owns_reference_kv for p in self_attn),
        "clip_kv": True,
        "router": any(p.router is not None for p in cross_attn),
    }
    return [part for part in PARTS if present[part]]


def adapter_state_dict(pipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in adapter_tensors(pipe)}


def save_adapter(pipe, folder: str | os.PathLike, base_model: str = "") -> Path:
    """Write the AnyStory parts of `pipe` as a checkpoint folder (atomic per file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state, parts = adapter_state_dict(pipe), adapter_parts(pipe)
    encoder_config = {k: v for k, v in pipe.subject_encoder.config.items() if not k.startswith("_")}
    config = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "base_model": base_model or pipe.base_model,
        "image_encoder_source": list(pipe.image_encoder_source) if pipe.image_encoder_source else None,
        "parts": parts,
        "anystory": asdict(pipe.anystory_config),
        "subject_encoder": encoder_config,
        "num_blocks": len(pipe.anystory_processors()[0]),
    }
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": CHECKPOINT_FORMAT})
    write_atomic(folder / "config.json", json.dumps(config, indent=2).encode("utf-8"))
    return folder


def read_adapter_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not an AnyStory checkpoint: it has no config.json")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from err
    if config.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{config_path} is not an AnyStory checkpoint (format {config.get('format')!r})")
    if int(config.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{folder} has checkpoint format {config['format_version']}; this version reads up to {CHECKPOINT_VERSION}"
        )
    unknown = set(config.get("parts", [])) - set(PARTS)
    if unknown:
        raise CheckpointError(f"{config_path} names unknown parts: {sorted(unknown)}")
    return config


def load_adapter_weights(pipe, folder: str | os.PathLike) -> None:
    """Load a checkpoint's tensors into the (already built) AnyStory parts of `pipe`, strictly."""
    folder = Path(folder)
    candidates = [folder / WEIGHTS_NAME] + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt"))
    weights = next((p for p in candidates if p.is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}")
    state = load_state_dict_file(weights)
    targets = dict(adapter_tensors(pipe))
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit this pipeline: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, value in state.items():
        if value.shape != targets[key].shape:
            raise CheckpointError(
                f"{weights}: tensor {key} has shape {tuple(value.shape)}, this pipeline expects {tuple(targets[key].shape)}"
            )
    with torch.no_grad():
        for key, value in state.items():
            targets[key].copy_(value.to(targets[key].dtype))
