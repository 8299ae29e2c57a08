"""Test fixture: turn a diffusers SDXL folder into one original-layout ("ldm"/sgm) safetensors file.

Users load single-file SDXL checkpoints (RealVisXL and the like) with
`StableDiffusionXLPipeline.from_single_file`. To test that path offline, `write_single_file_sdxl`
writes the tiny SDXL of `anystory.tiny.write_tiny_sdxl` in that layout. The key mapping is the
inverse of diffusers' own conversion in `diffusers/loaders/single_file_utils.py`:

- UNet, `convert_ldm_unet_checkpoint`: `model.diffusion_model.` + `input_blocks.N.{0,1}` /
  `middle_block.{0,1,2}` / `output_blocks.N.{0,1,2}`, resnet layers renamed
  (`norm1` -> `in_layers.0`, `conv1` -> `in_layers.2`, `norm2` -> `out_layers.0`, `conv2` -> `out_layers.3`,
  `time_emb_proj` -> `emb_layers.1`, `conv_shortcut` -> `skip_connection`).
- VAE, `convert_ldm_vae_checkpoint`: `first_stage_model.` + `encoder.down.I.block.J`,
  `decoder.up.(n-1-I).block.J` (the decoder's up blocks are numbered backwards), `mid.block_{1,2}`,
  `mid.attn_1.{norm,q,k,v,proj_out}` as 1x1 convolutions, `nin_shortcut`, `norm_out`.
- CLIP-L, `convert_ldm_clip_checkpoint`: the transformers layout under
  `conditioner.embedders.0.transformer.`, always with the `text_model.` level (transformers >= 5.6
  saves `CLIPTextModel` without it; diffusers strips it again on load).
- OpenCLIP bigG, `convert_open_clip_checkpoint`: `conditioner.embedders.1.model.` + `token_embedding`,
  `positional_embedding`, `ln_final`, `text_projection` (transposed: [hidden, projection]),
  `transformer.resblocks.N.{ln_1, ln_2, attn.in_proj_{weight,bias} (q, k, v stacked),
  attn.out_proj, mlp.c_fc, mlp.c_proj}`.

Every tensor of the folder's four models is mapped (an unknown key raises), so a round trip loses nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# diffusers' `infer_diffusers_model_type` calls a checkpoint SDXL base when it holds this key
# (CHECKPOINT_KEY_NAMES["xl_base"]): the 10th OpenCLIP block, which real bigG (32 blocks) has.
XL_BASE_DETECTION_KEY = OPEN_CLIP_PREFIX + "transformer.resblocks.9.mlp.c_proj.bias"

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_FIXED = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_FIXED = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _split_param(key: str) -> tuple[str, str]:
    """'a.b.weight' -> ('a.b', 'weight')."""
    module, _, param = key.rpartition(".")
    return module, param


def _rename_unet_resnet(rest: str) -> str:
    module, param = _split_param(rest)
    return f"{_UNET_RESNET[module]}.{param}"


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> `model.diffusion_model.*` (SDXL / SD layout)."""
    per_down = config["layers_per_block"]
    if not isinstance(per_down, int):
        raise ValueError("only an int layers_per_block is laid out like the original UNet")
    step = per_down + 1  # original blocks per diffusers down block: resnets (+ attention) then a downsampler
    up_with_attention = {int(m.group(1)) for k in state if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, param = _split_param(key)
        if module in _UNET_FIXED:
            new = f"{_UNET_FIXED[module]}.{param}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + block * step + layer
            new = f"input_blocks.{index}.0.{_rename_unet_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
            new = f"input_blocks.{1 + int(m[1]) * step + per_down}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename_unet_resnet(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = block * step + layer  # diffusers up blocks hold per_down + 1 resnets
            new = f"output_blocks.{index}.0.{_rename_unet_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
            block = int(m[1])
            slot = 2 if block in up_with_attention else 1  # after the resnet (and the attention, if any)
            new = f"output_blocks.{block * step + per_down}.{slot}.conv.{m[2]}"
        else:
            raise KeyError(f"no original SDXL name for UNet key {key!r}")
        out[UNET_PREFIX + new] = tensor
    return out


def _rename_vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> `first_stage_model.*` (the original LDM autoencoder layout)."""
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, param = _split_param(key)
        if module in _VAE_FIXED:
            new = f"{_VAE_FIXED[module]}.{param}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_rename_vae_resnet(m[3])}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{_rename_vae_resnet(m[3])}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename_vae_resnet(m[3])}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                tensor = tensor.reshape(*tensor.shape, 1, 1)  # the original attention uses 1x1 convolutions
        else:
            raise KeyError(f"no original SDXL name for VAE key {key!r}")
        out[VAE_PREFIX + new] = tensor.contiguous()
    return out


def clip_l_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel keys -> `conditioner.embedders.0.transformer.text_model.*` (transformers layout)."""
    out = {}
    for key, tensor in state.items():
        if key.endswith("position_ids"):
            continue
        inner = key if key.startswith("text_model.") else "text_model." + key
        out[CLIP_L_PREFIX + inner] = tensor
    return out


def open_clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection keys -> `conditioner.embedders.1.model.*` (OpenCLIP layout)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        inner = key.removeprefix("text_model.")
        if inner.endswith("position_ids"):
            continue
        if inner == "text_projection.weight":  # nn.Linear [projection, hidden] -> OpenCLIP matrix [hidden, projection]
            out["text_projection"] = tensor.T.contiguous()
        elif inner in _OPEN_CLIP_FIXED:
            out[_OPEN_CLIP_FIXED[inner]] = tensor
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", inner):
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = tensor
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", inner):
            if m[2] not in _OPEN_CLIP_LAYER:
                raise KeyError(f"no OpenCLIP name for text encoder 2 key {key!r}")
            out[f"transformer.resblocks.{m[1]}.{_OPEN_CLIP_LAYER[m[2]]}.{m[3]}"] = tensor
        else:
            raise KeyError(f"no OpenCLIP name for text encoder 2 key {key!r}")
    for (layer, param), parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise KeyError(f"layer {layer} {param}: q, k and v projections are not all there")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = fused
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


def _read(folder: Path, name: str, weights: str) -> tuple[dict[str, torch.Tensor], dict]:
    config = json.loads((folder / name / "config.json").read_text())
    return load_file(str(folder / name / weights)), config


def write_single_file_sdxl(folder: Path, path: Path) -> Path:
    """Convert the diffusers SDXL folder at `folder` (as written by write_tiny_sdxl) into ONE
    safetensors file in the original SDXL (sgm) key layout: model.diffusion_model.* (UNet),
    first_stage_model.* (VAE), conditioner.embedders.0.transformer.* (CLIP-L text encoder, HF layout),
    conditioner.embedders.1.model.* (OpenCLIP bigG text encoder layout, fused in_proj etc.)."""
    folder, path = Path(folder), Path(path)
    unet, unet_config = _read(folder, "unet", "diffusion_pytorch_model.safetensors")
    vae, vae_config = _read(folder, "vae", "diffusion_pytorch_model.safetensors")
    text_encoder, _ = _read(folder, "text_encoder", "model.safetensors")
    text_encoder_2, _ = _read(folder, "text_encoder_2", "model.safetensors")

    checkpoint: dict[str, torch.Tensor] = {}
    for part in (unet_to_ldm(unet, unet_config), vae_to_ldm(vae, vae_config), clip_l_to_ldm(text_encoder),
                 open_clip_to_ldm(text_encoder_2)):
        overlap = checkpoint.keys() & part.keys()
        if overlap:
            raise KeyError(f"two tensors would be written as {sorted(overlap)[:3]}")
        checkpoint.update(part)

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint, str(path), metadata={"format": "pt"})
    return path
