"""SDXL LoRAs in the routed pipeline, on a random tiny LoRA built offline with PEFT and saved as
safetensors: loaded through diffusers' `load_lora_weights`, beside the AnyStory processors."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from anystory import AnyStoryPipeline
from anystory.attention import RoutedCrossAttnProcessor, transformer_blocks
from anystory.tiny import synthetic_subject, write_tiny_ip_adapter
from anystory.tiny_control import write_tiny_lora
from anystory.weights import CheckpointError, ModelLoadError

from .conftest import GEN, seeded

PROMPT = "a girl in a park, watercolour"


@pytest.fixture(scope="module")
def lora_file(tiny_folder, tmp_path_factory):
    return write_tiny_lora(tiny_folder, tmp_path_factory.mktemp("lora") / "tiny-style.safetensors")


def fresh(tiny_folder, **kwargs):
    """Own pipelines: a LoRA changes the one it is loaded into (the session ones stay clean)."""
    pipe = AnyStoryPipeline.from_pretrained(str(tiny_folder), local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def styled(tiny_folder, lora_file):
    pipe = fresh(tiny_folder, adapter="init")
    pipe.load_lora(lora_file, weight=0.7, adapter_name="style")
    return pipe


def test_no_subjects_with_lora_equals_diffusers_with_the_same_lora(styled, tiny_folder, lora_file, plain):
    reference = StableDiffusionXLPipeline.from_pretrained(str(tiny_folder), local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name="style")
    reference.set_adapters(["style"], adapter_weights=[0.7])
    ours = styled(PROMPT, generator=seeded(), **GEN).images
    assert np.array_equal(ours, reference(PROMPT, generator=seeded(), **GEN).images)
    assert np.abs(ours - plain(PROMPT, generator=seeded(), **GEN).images).max() > 1e-3  # the LoRA acts


def test_lora_weight_zero_is_the_pipeline_without_it(styled, pipe, subjects):
    try:
        styled.set_lora_weight("style", 0.0)
        for extra in ({}, dict(subjects=subjects[:2], router="learned")):
            ours = styled(PROMPT, generator=seeded(), **extra, **GEN).images
            assert np.array_equal(ours, pipe(PROMPT, generator=seeded(), **extra, **GEN).images)
    finally:
        styled.set_lora_weight("style", 0.7)


def test_subjects_with_a_lora_are_routed_and_injected(styled, pipe, subjects):
    """Same init weights as the session pipeline, so its encodings fit; the LoRA changes the image."""
    assert styled.encoder_id == pipe.encoder_id
    out = styled(PROMPT, subjects=subjects[:2], router="learned", return_route_record=True, generator=seeded(), **GEN)
    alone = styled(PROMPT, generator=seeded(), **GEN).images
    no_lora = pipe(PROMPT, subjects=subjects[:2], router="learned", generator=seeded(), **GEN).images
    assert len(out.route_record) == GEN["num_inference_steps"] * len(transformer_blocks(styled.unet))
    assert np.abs(out.images - alone).max() > 1e-3 and np.abs(out.images - no_lora).max() > 1e-3
    assert all(isinstance(b.attn2.processor, RoutedCrossAttnProcessor) for b in transformer_blocks(styled.unet))


def test_encodings_do_not_depend_on_the_lora(tiny_folder, lora_file, tmp_path):
    """Public-weights mode encodes with the UNet itself: with the LoRA's layers switched off, and
    the shared attn1 K/V are the base layers, so an encoding is the same before and after."""
    ip_file = write_tiny_ip_adapter(tiny_folder, tmp_path / "ip.safetensors")
    public = fresh(tiny_folder, adapter="public", ip_adapter=str(ip_file))
    picture = synthetic_subject(5, alpha=True)
    before = public.encode_subject(picture)
    public.load_lora(lora_file, weight=1.0)
    after = public.encode_subject(picture)
    keys = [(a, b) for a, b in zip(before.reference_keys, after.reference_keys) if a is not None]
    assert keys and all(torch.equal(a, b) for a, b in keys)
    assert all(torch.equal(a, b) for a, b in zip(before.reference_values, after.reference_values) if a is not None)
    with pytest.raises(ValueError, match="fuse_lora would write"):
        public.fuse_lora()
    public.unload_lora()
    assert public.lora_weights == {} and not any("lora" in k for k in public.unet.state_dict())


def test_fuse_lora_equals_diffusers_fused(tiny_folder, lora_file):
    """(Its own pipeline: unfusing gives the base weights back only up to rounding.)"""
    styled = fresh(tiny_folder, adapter="init")
    styled.load_lora(lora_file, weight=0.7, adapter_name="style")
    reference = StableDiffusionXLPipeline.from_pretrained(str(tiny_folder), local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(lora_file), adapter_name="style")
    reference.set_adapters(["style"], adapter_weights=[0.7])
    reference.fuse_lora()
    styled.fuse_lora()
    ours = styled(PROMPT, generator=seeded(), **GEN).images
    assert np.array_equal(ours, reference(PROMPT, generator=seeded(), **GEN).images)


def test_only_safetensors_loras_load(styled, tmp_path, lora_file):
    for name in ("style.bin", "style.pt", "style.ckpt"):
        pickle = tmp_path / name
        pickle.write_bytes(b"never unpickled")
        with pytest.raises(CheckpointError, match="only .safetensors"):
            styled.load_lora(pickle)
    with pytest.raises(CheckpointError, match="only .safetensors"):
        styled.load_lora("someone/some-lora", weight_name="pytorch_lora_weights.bin")
    with pytest.raises(ModelLoadError, match="does not exist"):
        styled.load_lora(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="loaded already"):
        styled.load_lora(lora_file, adapter_name="style")
    assert styled.lora_weights == {"style": 0.7}


def test_lora_and_controlnet_together_equal_diffusers(styled, tiny_folder, lora_file, tmp_path, subjects):
    """No subjects, a LoRA and a ControlNet: exactly diffusers' ControlNet pipeline with the same
    LoRA; with subjects the routes are still recorded."""
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    from anystory.tiny_control import edge_picture, write_tiny_controlnet

    controlnet = write_tiny_controlnet(tiny_folder, tmp_path / "cn")
    reference = StableDiffusionXLControlNetPipeline.from_pretrained(
        str(tiny_folder), controlnet=ControlNetModel.from_pretrained(controlnet), local_files_only=True
    )
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(lora_file), adapter_name="style")
    reference.set_adapters(["style"], adapter_weights=[0.7])
    edges = edge_picture(64)
    ours = styled(PROMPT, controlnet=str(controlnet), control_image=edges, generator=seeded(), **GEN).images
    assert np.array_equal(ours, reference(PROMPT, image=edges, generator=seeded(), **GEN).images)
    out = styled(PROMPT, subjects=subjects[:2], router="learned", controlnet=str(controlnet), control_image=edges,
                 return_route_record=True, generator=seeded(), **GEN)  # fmt: skip
    assert len(out.route_record) == GEN["num_inference_steps"] * len(transformer_blocks(styled.unet))
