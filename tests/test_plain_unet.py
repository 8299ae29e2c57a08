"""The UNet that diffusers' tools see is a plain SDXL UNet: the AnyStory weights (W~, W', routers)
live in `pipe.anystory_blocks`, outside its module tree, while its processors still use them."""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from anystory.weights import adapter_state_dict

from .conftest import GEN, seeded


@pytest.mark.parametrize("mode", ["pipe", "public_pipe"])
def test_unet_state_dict_is_plain_sdxl(request, mode):
    pipe = request.getfixturevalue(mode)
    fresh = UNet2DConditionModel.from_config(pipe.unet.config)
    assert list(pipe.unet.state_dict()) == list(fresh.state_dict())
    assert not any(isinstance(p, torch.nn.Module) for p in pipe.unet.attn_processors.values())
    # ... and the AnyStory weights are all in the pipeline's own component.
    own = {id(t) for t in pipe.anystory_blocks.state_dict(keep_vars=True).values()}
    in_blocks = [k for k in adapter_state_dict(pipe) if k.startswith("blocks.")]
    assert in_blocks and len(own) == len(in_blocks)
    assert "anystory_blocks" in pipe.components


def test_controlnet_from_unet_copies_the_plain_weights(pipe):
    controlnet = ControlNetModel.from_unet(pipe.unet)
    ours = pipe.unet.down_blocks.state_dict()
    assert all(torch.equal(value, ours[key]) for key, value in controlnet.down_blocks.state_dict().items())
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in controlnet.attn_processors.values())


def test_unet_save_pretrained_round_trips(pipe, tmp_path):
    pipe.unet.save_pretrained(tmp_path / "unet")
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")  # strict: no missing or unexpected keys
    state = pipe.unet.state_dict()
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in loaded.state_dict().items())


def test_processors_use_the_weights_held_outside(pipe, subjects):
    """Changing W'_v in `anystory_blocks` changes the image: the processors read those weights."""
    site = next(iter(pipe.anystory_blocks.attn2.values()))
    clip_only = dict(subjects=subjects[:1], router="none", reference_schedule=None)
    before = pipe("a girl", **clip_only, generator=seeded(), **GEN).images
    saved = site.to_v_ip.weight.detach().clone()
    try:
        with torch.no_grad():
            site.to_v_ip.weight.normal_(generator=torch.Generator().manual_seed(0))
        after = pipe("a girl", **clip_only, generator=seeded(), **GEN).images
    finally:
        with torch.no_grad():
            site.to_v_ip.weight.copy_(saved)
    assert np.abs(after - before).max() > 1e-4


def test_pipe_to_moves_the_blocks_with_the_unet(tiny_folder):
    """`pipe.to(...)` reaches the AnyStory weights too (a component of the pipeline, no longer
    moved by the UNet's own `.to`)."""
    from anystory import AnyStoryPipeline

    pipe = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="init", local_files_only=True)
    pipe.to(torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16
    assert {t.dtype for t in pipe.anystory_blocks.parameters()} == {torch.bfloat16}
    assert pipe.anystory_blocks.device == pipe.unet.device
