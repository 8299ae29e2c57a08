"""Encode step: subject image + mask -> CLIP tokens, routing embedding, reference features (METHOD.md §0-1).

- `prepare_subject`: validate and normalise the input, crop a square around the mask.
- `SubjectEncoder`: the Subject QFormer (m tokens at the text width) and the Routing QFormer
  (one query of width d_r) over the CLIP image encoder's penultimate hidden states.
- `ReferenceNet`: a copy of the UNet without cross-attention, with a 5-channel conv_in (latent +
  mask, the new channel zero-initialised), run once at t = 0.
- `reference_features` / `capture_reference_features`: the hidden state entering attn1 (after its
  norm) of every block, without / with gradients, under `reference_conditions` (t = 0, zero conditions).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image

from .attention import plain_attention, transformer_blocks
from .images import mask_values, to_rgb_and_alpha

CROP_MARGIN = 0.04  # square crop around the mask's bounding box, ~4% margin (as the official demo)


# -- input ---------------------------------------------------------------------------------------


@dataclass
class SubjectInput:
    """A subject ready for the encoders: square crops and the mask of the reference crop."""

    clip_image: Image.Image  # RGB, background white
    reference_image: Image.Image  # RGB at reference_size
    mask: torch.Tensor  # [reference_size, reference_size] float in [0, 1]


def prepare_subject(image: Image.Image, mask=None, reference_size: int = 512, crop: bool = True) -> SubjectInput:
    """Mask from the argument, else the alpha channel, else the whole image; square crop around it
    (crop=False: the whole image as it is)."""
    rgb, alpha = to_rgb_and_alpha(image)
    if mask is not None:
        values = mask_values(mask, rgb.size)
        source = "mask"
    elif alpha is not None:
        values = np.asarray(alpha, dtype=np.float32) / 255.0
        source = "alpha channel"
    else:
        values = np.ones((rgb.height, rgb.width), dtype=np.float32)
        source = "mask"
    inside = values >= 0.5
    if not inside.any():
        raise ValueError(f"the subject's {source} is empty: nothing marks the character")

    if crop:
        rows, cols = np.nonzero(inside)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        side = max(bottom - top, right - left) * (1 + 2 * CROP_MARGIN)
        cy, cx = (top + bottom) / 2, (left + right) / 2
        box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
        box = (box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1))
    else:
        box = (0, 0, rgb.width, rgb.height)

    mask_image = Image.fromarray((values * 255).round().astype(np.uint8), "L").crop(box)  # outside -> 0
    crop = rgb.crop(box)
    white = Image.new("RGB", crop.size, (255, 255, 255))
    clip_image = Image.composite(crop, white, mask_image)
    size = (reference_size, reference_size)
    reference_mask = np.asarray(mask_image.resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    return SubjectInput(
        clip_image=clip_image,
        reference_image=crop.resize(size, Image.BICUBIC),
        mask=torch.from_numpy(reference_mask),
    )


# -- CLIP branch ---------------------------------------------------------------------------------


class SubjectEncoder(ModelMixin, ConfigMixin):
    """Subject QFormer and Routing QFormer (Perceiver resamplers) over CLIP penultimate states."""

    @register_to_config
    def __init__(
        self,
        image_embed_dim: int = 1280,
        text_dim: int = 2048,
        num_tokens: int = 64,
        routing_dim: int = 1024,
        depth: int = 4,
        heads: int = 20,
        dim_head: int = 64,
        ffn_ratio: int = 4,
    ):
        super().__init__()

        def resampler(output_dims: int, queries: int) -> IPAdapterPlusImageProjection:
            return IPAdapterPlusImageProjection(
                embed_dims=image_embed_dim,
                output_dims=output_dims,
                hidden_dims=image_embed_dim,
                depth=depth,
                dim_head=dim_head,
                heads=heads,
                num_queries=queries,
                ffn_ratio=ffn_ratio,
            )

        self.subject_qformer = resampler(text_dim, num_tokens)
        # routing_dim = 0: no Routing QFormer (public weights, stage-1 checkpoints).
        self.routing_qformer = resampler(routing_dim, 1) if routing_dim else None

    def forward(self, image_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 257, clip] -> tokens [B, m, text_dim], routing [B, d_r] (empty when no router)."""
        tokens = self.subject_qformer(image_states)
        if self.routing_qformer is None:
            return tokens, image_states.new_zeros(image_states.shape[0], 0)
        return tokens, self.routing_qformer(image_states)[:, 0]


# -- reference branch ----------------------------------------------------------------------------


class ReferenceNet(UNet2DConditionModel):
    """The UNet with every attn2 removed and a 5-channel conv_in (METHOD.md §1)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for block in transformer_blocks(self):
            block.attn2, block.norm2 = None, None

    # ConfigMixin reads the constructor's signature to route config keys: show it the UNet's.
    __init__.__signature__ = inspect.signature(UNet2DConditionModel.__init__)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel) -> ReferenceNet:
        """Initialise from the UNet's weights; the mask channel of conv_in starts at zero."""
        from accelerate import init_empty_weights

        config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        config["in_channels"] = unet.config.in_channels + 1
        with init_empty_weights():
            net = cls.from_config(config)
        kept = set(net.state_dict())  # everything but the removed attn2 / norm2 of transformer blocks
        state = {k: v.clone() for k, v in unet.state_dict().items() if k in kept}
        weight = state["conv_in.weight"]
        state["conv_in.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], 1, *weight.shape[2:])], 1)
        net.load_state_dict(state, strict=True, assign=True)
        return net


class _StopAfterLastBlock(Exception):
    pass


class _CaptureAttn1:
    """Records the input of attn1 (already normed), then runs plain self-attention."""

    def __init__(self, store: list, index: int, last: bool):
        self.store, self.index, self.last = store, index, last

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        self.store[self.index] = hidden_states
        if self.last:
            raise _StopAfterLastBlock
        return plain_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def reference_conditions(unet: UNet2DConditionModel, batch: int, device, dtype) -> tuple[torch.Tensor, dict]:
    """The conditions of the reference pass (METHOD.md §1: t = 0, conditions zero): a zero text
    sequence [B, 1, D] and zero added conditions (the pooled text embedding and SDXL's six time ids)."""
    time_ids = 6  # SDXL: original size, crop top-left, target size
    pooled = unet.config.projection_class_embeddings_input_dim - time_ids * unet.config.addition_time_embed_dim
    text = torch.zeros(batch, 1, unet.config.cross_attention_dim, device=device, dtype=dtype)
    added = {
        "text_embeds": torch.zeros(batch, pooled, device=device, dtype=dtype),
        "time_ids": torch.zeros(batch, time_ids, device=device, dtype=dtype),
    }
    return text, added


def capture_reference_features(unet: UNet2DConditionModel, latents: torch.Tensor) -> list[torch.Tensor]:
    """Run `unet` once on `latents` at t = 0 under `reference_conditions` and return G^l for every
    block in execution order ([B, T_l, C_l]).

    Gradients follow the caller's grad mode (training runs it with grad; `reference_features` is
    the no-grad form). The pass stops after the last block's attn1, since nothing later is needed,
    except under gradient checkpointing with grad on: there a checkpointed block is re-run during
    backward, and a re-run that raised would break the backward pass.
    """
    blocks = transformer_blocks(unet)
    store: list = [None] * len(blocks)
    stop_early = not (torch.is_grad_enabled() and getattr(unet, "is_gradient_checkpointing", False))
    saved = dict(unet.attn_processors)
    capture = dict(saved)
    attn1_names = {id(block.attn1): index for index, block in enumerate(blocks)}
    for name, module in unet.named_modules():
        if id(module) in attn1_names:
            index = attn1_names[id(module)]
            last = stop_early and index == len(blocks) - 1
            capture[f"{name}.processor"] = _CaptureAttn1(store, index, last=last)
    text, added = reference_conditions(unet, latents.shape[0], latents.device, latents.dtype)
    unet.set_attn_processor(capture)
    try:
        timestep = torch.zeros(latents.shape[0], device=latents.device)
        unet(latents, timestep, encoder_hidden_states=text, added_cond_kwargs=added)
    except _StopAfterLastBlock:
        pass
    finally:
        unet.set_attn_processor(dict(saved))
    return store


@torch.no_grad()
def reference_features(unet: UNet2DConditionModel, latents: torch.Tensor) -> list[torch.Tensor]:
    """`capture_reference_features` without gradients (encoding for generation)."""
    return capture_reference_features(unet, latents)


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """[H, W] pixel mask -> [h, w] area-averaged at the latent grid."""
    return F.adaptive_avg_pool2d(mask[None, None].float(), latent_hw)[0, 0]
