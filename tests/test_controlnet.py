"""ControlNet in the routed pipeline, on a tiny ControlNet built offline from the tiny UNet and
loaded from a folder: diffusers' own ControlNet loop runs, the AnyStory processors act in its UNet."""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

from anystory import AnyStoryPipeline
from anystory.attention import transformer_blocks
from anystory.tiny_control import edge_picture, write_tiny_controlnet
from anystory.weights import CheckpointError

from .conftest import GEN, seeded

PROMPT = "a girl raises her arm"


@pytest.fixture(scope="module")
def controlnet_folder(tiny_folder, tmp_path_factory):
    return write_tiny_controlnet(tiny_folder, tmp_path_factory.mktemp("cn") / "tiny-controlnet")


@pytest.fixture(scope="module")
def second_controlnet_folder(tiny_folder, tmp_path_factory):
    return write_tiny_controlnet(tiny_folder, tmp_path_factory.mktemp("cn2") / "tiny-controlnet-2", seed=1)


@pytest.fixture(scope="module")
def diffusers_controlnet(tiny_folder, controlnet_folder, second_controlnet_folder):
    def make(*folders):
        nets = [ControlNetModel.from_pretrained(f) for f in folders]
        pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
            str(tiny_folder), controlnet=nets if len(nets) > 1 else nets[0], local_files_only=True
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


EDGES = edge_picture(64, seed=0)


def test_no_subjects_with_controlnet_equals_diffusers_controlnet_pipeline(pipe, plain, diffusers_controlnet,
                                                                        controlnet_folder):  # fmt: skip
    ours = pipe(PROMPT, controlnet=str(controlnet_folder), control_image=EDGES, controlnet_conditioning_scale=0.8,
                generator=seeded(), **GEN).images  # fmt: skip
    theirs = diffusers_controlnet(controlnet_folder)(
        PROMPT, image=EDGES, controlnet_conditioning_scale=0.8, generator=seeded(), **GEN
    ).images
    assert np.array_equal(ours, theirs)
    # The ControlNet does act (a fresh one, with zero convolutions, would add nothing).
    assert np.abs(ours - plain(PROMPT, generator=seeded(), **GEN).images).max() > 1e-3


def test_multi_controlnet_equals_diffusers(pipe, diffusers_controlnet, controlnet_folder, second_controlnet_folder):
    folders = [controlnet_folder, second_controlnet_folder]
    images, scales = [EDGES, edge_picture(64, seed=1)], [0.7, 0.4]
    ours = pipe(PROMPT, controlnet=[str(f) for f in folders], control_image=images,
                controlnet_conditioning_scale=scales, generator=seeded(), **GEN).images  # fmt: skip
    theirs = diffusers_controlnet(*folders)(
        PROMPT, image=images, controlnet_conditioning_scale=scales, generator=seeded(), **GEN
    ).images
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("with_subjects", [False, True])
def test_conditioning_scale_zero_is_the_pipeline_without_controlnet(pipe, subjects, controlnet_folder, with_subjects):
    extra = dict(subjects=subjects[:2], router="learned", return_route_record=True) if with_subjects else {}
    without = pipe(PROMPT, generator=seeded(), **extra, **GEN)
    zero = pipe(PROMPT, controlnet=str(controlnet_folder), control_image=EDGES, controlnet_conditioning_scale=0.0,
                generator=seeded(), **extra, **GEN)  # fmt: skip
    assert np.array_equal(zero.images, without.images)
    if with_subjects:
        assert all(torch.equal(a, b) for a, b in zip(zero.route_maps, without.route_maps))


def test_subjects_are_routed_and_injected_with_a_controlnet(pipe, subjects, controlnet_folder):
    control = dict(controlnet=str(controlnet_folder), control_image=EDGES)
    alone = pipe(PROMPT, **control, generator=seeded(), **GEN).images
    out = pipe(PROMPT, subjects=subjects[:2], router="learned", return_route_record=True, **control,
               generator=seeded(), **GEN)  # fmt: skip
    no_control = pipe(PROMPT, subjects=subjects[:2], router="learned", generator=seeded(), **GEN).images
    assert len(out.route_record) == GEN["num_inference_steps"] * len(transformer_blocks(pipe.unet))
    assert out.route_maps[0].shape[0] == 3  # two subjects + background
    assert out.route_maps[0].sum(0).allclose(torch.ones(out.route_maps[0].shape[1:]))  # one-hot per position
    assert np.abs(out.images - alone).max() > 1e-3  # the subjects are injected
    assert np.abs(out.images - no_control).max() > 1e-3  # and the ControlNet still acts


def test_layout_router_takes_the_control_pictures_size(pipe, subjects, controlnet_folder):
    """Without height/width the ControlNet loop makes the control picture's size; layout boxes
    are placed at that size, as when it is given."""
    wide = edge_picture(64, seed=2).resize((128, 64))
    call = dict(subjects=subjects[:2], router="layout", layout=[(0, 0, 0.5, 1), (0.5, 0, 1, 1)],
                controlnet=str(controlnet_folder), control_image=wide)  # fmt: skip
    implied = pipe(PROMPT, generator=seeded(), **call, **GEN)
    given = pipe(PROMPT, generator=seeded(), height=64, width=128, **call, **GEN)
    assert implied.images.shape[1:3] == (64, 128)
    assert np.array_equal(implied.images, given.images)


def test_pipeline_owned_controlnet(tiny_folder, controlnet_folder, pipe, subjects):
    """from_pretrained(controlnet=folder) keeps one: calls with control_image use it, calls
    without run plain SDXL."""
    owned = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="init", controlnet=str(controlnet_folder),
                                             local_files_only=True)  # fmt: skip
    owned.set_progress_bar_config(disable=True)
    assert isinstance(owned.controlnet, ControlNetModel)
    assert list(owned.unet.state_dict()) == list(pipe.unet.state_dict())
    with_image = owned(PROMPT, control_image=EDGES, generator=seeded(), **GEN).images
    per_call = pipe(PROMPT, controlnet=str(controlnet_folder), control_image=EDGES, generator=seeded(), **GEN).images
    assert np.array_equal(with_image, per_call)
    without = owned(PROMPT, generator=seeded(), **GEN).images
    assert np.array_equal(without, pipe(PROMPT, generator=seeded(), **GEN).images)


def test_control_arguments_are_checked(pipe, controlnet_folder, tmp_path):
    with pytest.raises(ValueError, match="control_image=... needs a ControlNet"):
        pipe(PROMPT, control_image=EDGES, **GEN)
    with pytest.raises(ValueError, match="without control_image"):
        pipe(PROMPT, controlnet=str(controlnet_folder), **GEN)
    with pytest.raises(ValueError, match="controlnet_conditioning_scale only apply"):
        pipe(PROMPT, controlnet_conditioning_scale=0.5, **GEN)
    with pytest.raises(TypeError, match="'guidance_rescale'"):  # the ControlNet loop has no such argument
        pipe(PROMPT, controlnet=str(controlnet_folder), control_image=EDGES, guidance_rescale=0.5, **GEN)
    pickle = tmp_path / "controlnet.ckpt"
    pickle.write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="only .safetensors"):
        pipe(PROMPT, controlnet=str(pickle), control_image=EDGES, **GEN)
    with pytest.raises(TypeError, match="controlnet must be"):
        pipe(PROMPT, controlnet=object(), control_image=EDGES, **GEN)


@pytest.fixture(scope="module")
def union_models(tmp_path_factory):
    """A tiny SDXL whose first block is 320 wide (diffusers' union ControlNet fixes its task
    embedding at 320 channels) and a union ControlNet from its UNet, zero convolutions random."""
    from diffusers import ControlNetUnionModel, StableDiffusionXLPipeline, UNet2DConditionModel

    from anystory.tiny import TINY_UNET_CONFIG, tiny_sdxl_components

    folder = tmp_path_factory.mktemp("union")
    components = tiny_sdxl_components()
    torch.manual_seed(0)
    components["unet"] = UNet2DConditionModel(**dict(
        TINY_UNET_CONFIG, block_out_channels=[320, 640], attention_head_dim=[5, 10], norm_num_groups=32,
        transformer_layers_per_block=[1, 1], layers_per_block=1,
    ))  # fmt: skip
    StableDiffusionXLPipeline(**components, add_watermarker=False).save_pretrained(folder / "sdxl")
    union = ControlNetUnionModel.from_unet(components["unet"], conditioning_embedding_out_channels=(8, 8, 16, 16))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in list(union.controlnet_down_blocks) + [union.controlnet_mid_block]:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
    union.save_pretrained(folder / "union")
    return folder / "sdxl", folder / "union"


def test_union_controlnet_equals_diffusers_union_pipeline(union_models):
    from diffusers import ControlNetUnionModel, StableDiffusionXLControlNetUnionPipeline

    sdxl, union = union_models
    ours = AnyStoryPipeline.from_pretrained(str(sdxl), adapter="init", local_files_only=True)
    ours.set_progress_bar_config(disable=True)
    theirs = StableDiffusionXLControlNetUnionPipeline.from_pretrained(
        str(sdxl), controlnet=ControlNetUnionModel.from_pretrained(union), local_files_only=True
    )
    theirs.set_progress_bar_config(disable=True)
    call = dict(control_image=[EDGES], control_mode=[3], generator=seeded(), **GEN)
    image = ours(PROMPT, controlnet=str(union), **call).images
    assert isinstance(ours._loaded_controlnets[str(union)], ControlNetUnionModel)  # the folder's class
    assert np.array_equal(image, theirs(PROMPT, **dict(call, generator=seeded())).images)
    assert np.abs(image - ours(PROMPT, generator=seeded(), **GEN).images).max() > 1e-3


def test_model_cpu_offload_hooks_give_the_same_images(tiny_folder, controlnet_folder, pipe, subjects):
    """diffusers' model offload hooks on a pipeline with AnyStory and a ControlNet: the same images.
    Run with the CPU as the hooks' execution device (this machine has no GPU): that checks the
    hooks' plumbing (the blocks outside the UNet, the ControlNet loop's components), not memory."""
    offloaded = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="init", local_files_only=True)
    offloaded.set_progress_bar_config(disable=True)
    offloaded.enable_model_cpu_offload(device="cpu")
    assert hasattr(offloaded.unet, "_hf_hook") and not hasattr(offloaded.anystory_blocks, "_hf_hook")
    assert offloaded.encoder_id == pipe.encoder_id
    for extra in ({}, dict(controlnet=str(controlnet_folder), control_image=EDGES)):
        call = dict(subjects=subjects[:2], router="learned", **extra, **GEN)
        ours = offloaded(PROMPT, generator=seeded(), **call).images
        assert np.array_equal(ours, pipe(PROMPT, generator=seeded(), **call).images)
