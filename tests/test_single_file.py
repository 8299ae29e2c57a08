"""Single-file SDXL checkpoints (original sgm key layout) load through diffusers' `from_single_file`.

`tests/single_file.py` writes a diffusers SDXL folder as one `.safetensors` in the original layout.
Checked here: diffusers' own conversion functions give back every tensor of the folder exactly,
diffusers detects the file as SDXL base, and `StableDiffusionXLPipeline.from_single_file` with the
folder as `config=` rebuilds the same pipeline (same weights, same images), offline.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    CHECKPOINT_KEY_NAMES,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    infer_diffusers_model_type,
)
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

from anystory.tiny import write_tiny_sdxl

from .single_file import (
    CLIP_L_PREFIX,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    XL_BASE_DETECTION_KEY,
    write_single_file_sdxl,
)

MODELS = {
    "unet": UNet2DConditionModel,
    "vae": AutoencoderKL,
    "text_encoder": CLIPTextModel,
    "text_encoder_2": CLIPTextModelWithProjection,
}
PROMPT = "a red fox reading the news in a library"


def load_single_file(path, folder) -> StableDiffusionXLPipeline:
    """The offline call. `config=` a local diffusers folder: every component config (and the
    scheduler, tokenizers, feature extractor) comes from there, nothing from the hub.
    `image_encoder` is not part of an SDXL checkpoint, and diffusers only takes a non-text
    transformers model from the config folder if its weights file has a *diffusers* name
    (`_is_model_weights_in_cached_folder`), so it is passed in."""
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(
        str(folder), subfolder="image_encoder", local_files_only=True
    )
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(path), config=str(folder), local_files_only=True, image_encoder=image_encoder
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def folder_state(folder, name) -> dict[str, torch.Tensor]:
    return MODELS[name].from_pretrained(str(folder), subfolder=name, local_files_only=True).state_dict()


def assert_same_state(expected: dict, got: dict, what: str) -> None:
    assert set(got) == set(expected), f"{what}: missing {set(expected) - set(got)}, extra {set(got) - set(expected)}"
    for key, tensor in expected.items():
        other = got[key]
        assert not other.is_meta, f"{what}.{key} was never loaded (still on the meta device)"
        assert other.shape == tensor.shape and other.dtype == tensor.dtype, f"{what}.{key}: {other.shape} {other.dtype}"
        assert torch.equal(other, tensor), f"{what}.{key} differs (max {(other - tensor).abs().max().item()})"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """write_tiny_sdxl's folder and its single file."""
    root = tmp_path_factory.mktemp("single-file")
    folder = write_tiny_sdxl(root / "tiny")
    return folder, write_single_file_sdxl(folder, root / "tiny.safetensors")


@pytest.fixture(scope="module")
def pipes(tiny):
    folder, path = tiny
    reference = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    return reference, load_single_file(path, folder)


def test_diffusers_conversion_gives_back_every_tensor(tiny):
    """The mapping, component by component, through diffusers' own ldm -> diffusers functions."""
    folder, path = tiny
    checkpoint = load_file(str(path))
    assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_L_PREFIX, OPEN_CLIP_PREFIX)) for k in checkpoint)

    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", local_files_only=True)
    assert_same_state(unet.state_dict(), convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)), "unet")
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", local_files_only=True)
    assert_same_state(vae.state_dict(), convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)), "vae")
    clip_l = convert_ldm_clip_checkpoint(checkpoint)
    clip_l = {k.removeprefix("text_model."): v for k, v in clip_l.items()}  # CLIPTextModel is flat in transformers 5
    assert_same_state(folder_state(folder, "text_encoder"), clip_l, "text_encoder")
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
        str(folder), subfolder="text_encoder_2", local_files_only=True
    )
    open_clip = convert_open_clip_checkpoint(text_encoder_2, checkpoint, prefix=OPEN_CLIP_PREFIX)
    assert_same_state(text_encoder_2.state_dict(), open_clip, "text_encoder_2")


def test_original_key_names(tiny):
    """Names diffusers would also accept elsewhere, pinned to where the original SDXL file has them."""
    checkpoint = load_file(str(tiny[1]))
    expected = {
        "model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": (32, 32, 3, 3),
        "model.diffusion_model.input_blocks.3.0.op.weight": (32, 32, 3, 3),  # downsampler
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (64, 32, 1, 1),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (64, 80),
        "model.diffusion_model.middle_block.1.transformer_blocks.1.ff.net.0.proj.weight": (512, 64),
        "model.diffusion_model.middle_block.2.emb_layers.1.weight": (64, 128),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (64, 64, 3, 3),  # upsampler after the attention
        "model.diffusion_model.label_emb.0.0.weight": (128, 80),
        "model.diffusion_model.out.2.weight": (4, 32, 3, 3),
        "first_stage_model.encoder.down.0.downsample.conv.weight": (8, 8, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (16, 16, 1, 1),  # 1x1 conv, as in the original
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (8, 16, 1, 1),  # up.0: the last, 8 wide
        "first_stage_model.decoder.up.3.upsample.conv.weight": (16, 16, 3, 3),
        "first_stage_model.decoder.norm_out.weight": (8,),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.4.self_attn.q_proj.weight": (32, 32),
        "conditioner.embedders.1.model.transformer.resblocks.9.attn.in_proj_weight": (3 * 48, 48),
        "conditioner.embedders.1.model.text_projection": (48, 32),  # [hidden, projection]
        "conditioner.embedders.1.model.positional_embedding": (77, 48),
    }
    assert {k: tuple(checkpoint[k].shape) for k in expected if k in checkpoint} == expected
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" not in checkpoint
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in checkpoint


def test_detected_as_sdxl_base(tiny):
    checkpoint = load_file(str(tiny[1]))
    assert XL_BASE_DETECTION_KEY == CHECKPOINT_KEY_NAMES["xl_base"] and XL_BASE_DETECTION_KEY in checkpoint
    for kind in ("clip_sdxl", "open_clip_sdxl", "inpainting"):  # the keys the two text encoders are told by
        assert CHECKPOINT_KEY_NAMES[kind] in checkpoint
    assert checkpoint[CHECKPOINT_KEY_NAMES["inpainting"]].shape[1] == 4  # 9 would make it "xl_inpaint"
    assert infer_diffusers_model_type(checkpoint) == "xl_base"


def test_from_single_file_loads_every_weight(pipes):
    reference, loaded = pipes
    for name in MODELS:
        assert_same_state(getattr(reference, name).state_dict(), getattr(loaded, name).state_dict(), name)
    assert dict(loaded.scheduler.config) == dict(reference.scheduler.config)
    assert loaded.tokenizer_2.get_vocab() == reference.tokenizer_2.get_vocab()


def test_from_single_file_reproduces_the_folder_pipeline(pipes):
    reference, loaded = pipes
    images = [
        pipe(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
        for pipe in (reference, loaded)
    ]
    assert images[0].shape == images[1].shape == (1, 64, 64, 3)
    assert np.abs(images[0] - images[1]).max() <= 1e-5  # 0.0 in practice: the same weights, the same modules
