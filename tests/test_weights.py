"""Public-weights mode, checkpoints, routers that need no training, model sources (issue: real weights)."""

import pickle

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from anystory import AnyStoryConfig, AnyStoryPipeline
from anystory.tiny import write_tiny_ip_adapter
from anystory.weights import CheckpointError, ModelLoadError, adapter_state_dict, ip_adapter_block_keys

from .conftest import GEN, make_subject_image, seeded

PROMPT = "a girl and her dog in a park"


@pytest.fixture(scope="module")
def ip_file(tiny_folder, tmp_path_factory):
    return write_tiny_ip_adapter(tiny_folder, tmp_path_factory.mktemp("ip") / "ip-adapter-plus_tiny.safetensors")


@pytest.fixture(scope="module")
def public(tiny_folder, ip_file):
    pipe = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="public", ip_adapter=str(ip_file), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- public-weights mode -------------------------------------------------------------------------


@pytest.mark.slow
def test_public_clip_path_matches_diffusers_ip_adapter(tiny_folder, ip_file, public, plain):
    image = make_subject_image(7, alpha=False)
    theirs = StableDiffusionXLPipeline.from_pretrained(str(tiny_folder), local_files_only=True)
    theirs.set_progress_bar_config(disable=True)
    theirs.load_ip_adapter(str(ip_file.parent), subfolder="", weight_name=ip_file.name)
    theirs.set_ip_adapter_scale(1.0)
    expected = theirs(PROMPT, ip_adapter_image=image, generator=seeded(), **GEN).images

    subject = public.encode_subject(image, crop=False)  # the same pixels diffusers feeds to CLIP
    ours = public(PROMPT, subjects=[subject], router="none", reference_schedule=None, generator=seeded(), **GEN).images
    without = plain(PROMPT, generator=seeded(), **GEN).images
    assert np.abs(expected - without).max() > 1e-3  # the IP-Adapter really changes the image
    assert np.abs(ours - expected).max() <= 1e-4


def test_resampler_keys_map_onto_diffusers_ip_adapter_plus_projection(ip_file):
    """The release's positional resampler keys become diffusers' `IPAdapterPlusImageProjection`
    names through public classes only (no private diffusers conversion); an unknown key is named."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection
    from safetensors.torch import load_file

    from anystory.weights import ip_adapter_resampler, split_ip_adapter

    image_proj, _ = split_ip_adapter(load_file(str(ip_file)))
    state, sizes = ip_adapter_resampler(image_proj)
    assert sizes == {"depth": 4, "heads": 1, "dim_head": 64, "num_queries": 4}
    clip_dim = image_proj["proj_in.weight"].shape[1]
    module = IPAdapterPlusImageProjection(
        embed_dims=clip_dim, output_dims=image_proj["proj_out.weight"].shape[0], hidden_dims=clip_dim,
        depth=sizes["depth"], dim_head=sizes["dim_head"], heads=sizes["heads"], num_queries=sizes["num_queries"],
    )  # fmt: skip
    assert set(state) == set(module.state_dict())
    module.load_state_dict(state, strict=True)
    to_k, to_v = image_proj["layers.2.0.to_kv.weight"].chunk(2)
    assert torch.equal(state["layers.2.attn.to_k.weight"], to_k) and torch.equal(state["layers.2.attn.to_v.weight"], to_v)
    with pytest.raises(CheckpointError, match=r"image_proj\.layers\.0\.7\.weight"):
        ip_adapter_resampler({**image_proj, "layers.0.7.weight": torch.zeros(1)})


def test_dtype_and_its_old_name_torch_dtype(tiny_folder):
    """`dtype` as in current diffusers; `torch_dtype` still works (with diffusers' deprecation
    warning); the two disagreeing is refused."""
    load = lambda **kw: AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="init", local_files_only=True, **kw)  # noqa: E731
    new = load(dtype=torch.bfloat16)
    with pytest.warns(FutureWarning, match="torch_dtype"):
        old = load(torch_dtype=torch.bfloat16)
    for pipe in (new, old):
        parts = (pipe.unet, pipe.vae, pipe.text_encoder, pipe.image_encoder, pipe.subject_encoder, pipe.reference_net)
        assert all(part.dtype == torch.bfloat16 for part in parts)
        assert all(t.dtype == torch.bfloat16 for t in pipe.anystory_blocks.parameters())  # outside the UNet
    assert load().unet.dtype == torch.float32  # the CPU default
    with pytest.raises(ValueError, match="disagree"):
        load(dtype=torch.float32, torch_dtype=torch.bfloat16)


def test_public_mode_shares_the_unet(public):
    self_attn, cross_attn = public.anystory_processors()
    assert public.reference_net is None and public.mode == "public"
    assert all(not p.owns_reference_kv for p in self_attn)
    assert all(p.router is None for p in cross_attn)
    assert public.default_router == "prompt"
    assert public.subject_encoder.routing_qformer is None
    assert public.anystory_config.num_tokens == 4
    # No UNet weight is copied or registered twice.
    unet_keys = list(public.unet.state_dict())
    assert not any("to_k_ref" in k for k in unet_keys)


def test_ip_adapter_numbering_is_attn_processors_order(public):
    mapping = ip_adapter_block_keys(public.unet)
    assert sorted(mapping.values()) == list(range(1, 2 * len(mapping), 2))
    # Execution order puts the mid block before the up blocks; attn_processors order after them.
    in_execution_order = [mapping[block] for block in sorted(mapping)]
    assert in_execution_order != sorted(in_execution_order)


def test_public_mode_prompt_router_runs_with_reference(public):
    girl, dog = (public.encode_subject(make_subject_image(s)) for s in (1, 2))
    out = public(PROMPT, subjects=[girl, dog], subject_phrases=["a girl", "her dog"], generator=seeded(), **GEN)
    (maps,) = out.route_maps
    assert maps.shape[0] == 3
    assert set(maps.unique().tolist()) <= {0.0, 1.0} and torch.equal(maps.sum(0), torch.ones(maps.shape[1:]))


def test_prompt_router_words_missing_from_the_prompt(public):
    girl = public.encode_subject(make_subject_image(1))
    with pytest.raises(ValueError, match="'a dragon' are not in the prompt"):
        public(PROMPT, subjects=[girl], subject_phrases=["a dragon"], **GEN)
    with pytest.raises(ValueError, match="needs subject_phrases"):
        public(PROMPT, subjects=[girl], **GEN)


def test_prompt_router_routes_nothing_before_its_start_step(public):
    girl = public.encode_subject(make_subject_image(1))
    out = public(PROMPT, subjects=[girl], subject_phrases=["a girl"], prompt_route_start=1.0, return_route_record=True, generator=seeded(), **GEN)
    assert all(entry["gates"][:, -1].all() for entry in out.route_record)  # background everywhere
    early = public(PROMPT, subjects=[girl], subject_phrases=["a girl"], prompt_route_start=0.0, return_route_record=True, generator=seeded(), **GEN)
    late_entries = [e for e in early.route_record if e["step"] >= 1]
    assert all(torch.equal(e["gates"].sum(1), torch.ones_like(e["gates"][:, 0], dtype=torch.long)) for e in late_entries)


def test_nothing_of_the_subjects_is_computed_before_the_prompt_router_starts(public):
    """Before its start the prompt router routes every position to the background, so the
    subjects' work is skipped (a plain self-attention, the background slot alone): the image is
    the one the full computation gives with every position routed to the background."""
    girl = public.encode_subject(make_subject_image(1))
    phrases = dict(subject_phrases=["a girl"], prompt_route_start=1.0)
    skipped = public(PROMPT, subjects=[girl], generator=seeded(), **phrases, **GEN)
    computed = public(PROMPT, subjects=[girl], router="layout", layout=[np.zeros((8, 8))], generator=seeded(), **GEN)
    assert torch.equal(skipped.route_maps[0], computed.route_maps[0])
    assert np.abs(skipped.images - computed.images).max() <= 1e-5


@pytest.mark.hostile
def test_learned_router_refused_without_router_weights(public):
    girl = public.encode_subject(make_subject_image(1))
    with pytest.raises(ValueError, match="needs trained router weights"):
        public(PROMPT, subjects=[girl], router="learned", **GEN)


# -- layout router -------------------------------------------------------------------------------


def test_layout_boxes_are_the_maps_at_every_grid(pipe, subjects):
    boxes = [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 0.5)]
    out = pipe(PROMPT, subjects=subjects[:2], router="layout", layout=boxes, return_route_record=True,
               height=128, width=128, generator=seeded(), **GEN)  # fmt: skip
    for entry in out.route_record:
        h, w = entry["grid"]
        gates = entry["gates"][0]
        assert gates[0, :, : w // 2].all() and not gates[0, :, w // 2 :].any()
        assert gates[1, : h // 2, w // 2 :].all() and gates[2, h // 2 :, w // 2 :].all()


@pytest.mark.hostile
def test_layout_empty_box_is_refused(pipe, subjects):
    with pytest.raises(ValueError, match="is empty"):
        pipe(PROMPT, subjects=subjects[:1], router="layout", layout=[(0.5, 0.5, 0.5, 0.9)], **GEN)


# -- checkpoints ---------------------------------------------------------------------------------


def _trained_looking(pipe_factory):
    pipe = pipe_factory()
    _, cross_attn = pipe.anystory_processors()
    generator = torch.Generator().manual_seed(3)
    for proc in cross_attn:  # give W'_v values so a lost tensor would show in the images
        proc.to_v_ip.weight.data = torch.randn(proc.to_v_ip.weight.shape, generator=generator) * 0.1
    pipe.encoder_id = pipe._fingerprint()
    return pipe


@pytest.mark.slow
def test_checkpoint_round_trip_is_exact(tiny_folder, tmp_path):
    source = _trained_looking(lambda: AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="init", local_files_only=True))
    source.set_progress_bar_config(disable=True)
    folder = source.save_adapter(tmp_path / "ckpt")
    assert {p.name for p in folder.iterdir()} == {"config.json", "anystory.safetensors"}

    loaded = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter=str(folder), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    a, b = adapter_state_dict(source), adapter_state_dict(loaded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.mode == "checkpoint" and loaded.encoder_id == source.encoder_id

    image = make_subject_image(1)
    run = lambda p: p(PROMPT, subjects=[p.encode_subject(image)], generator=seeded(), **GEN).images  # noqa: E731
    assert np.array_equal(run(source), run(loaded))


@pytest.mark.slow
def test_stage_one_checkpoint_uses_the_prompt_router(tiny_folder, tmp_path):
    pipe = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="init", config=AnyStoryConfig(routing_dim=0, router_dim=32, reference_size=64), local_files_only=True)
    folder = pipe.save_adapter(tmp_path / "stage1")
    loaded = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter=str(folder), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    import json

    parts = json.loads((folder / "config.json").read_text())["parts"]
    assert "router" not in parts and "routing_qformer" not in parts and "reference_net" in parts
    assert loaded.default_router == "prompt"
    girl = loaded.encode_subject(make_subject_image(1))
    out = loaded(PROMPT, subjects=[girl], subject_phrases=["a girl"], generator=seeded(), **GEN)
    assert out.route_maps[0].shape[0] == 2


@pytest.fixture(scope="module")
def checkpoint(tiny_folder, tmp_path_factory):
    pipe = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="init", local_files_only=True)
    return pipe.save_adapter(tmp_path_factory.mktemp("ckpt") / "good")


def _copy(checkpoint, tmp_path):
    import shutil

    return shutil.copytree(checkpoint, tmp_path / "copy")


@pytest.mark.hostile
def test_truncated_checkpoint_is_refused(tiny_folder, checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    weights = folder / "anystory.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter=str(folder), local_files_only=True)


@pytest.mark.hostile
def test_pickled_checkpoint_is_refused_without_running_it(tiny_folder, checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    (folder / "anystory.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "anystory.bin").write_bytes(pickle.dumps({"x": Exploit()}))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter=str(folder), local_files_only=True)
    assert not marker.exists()


@pytest.mark.hostile
def test_plain_tensor_pickle_loads(tiny_folder, checkpoint, tmp_path):
    from safetensors.torch import load_file

    folder = _copy(checkpoint, tmp_path)
    state = load_file(str(folder / "anystory.safetensors"))
    (folder / "anystory.safetensors").unlink()
    torch.save(state, folder / "anystory.bin")
    AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter=str(folder), local_files_only=True)


@pytest.mark.hostile
def test_wrong_shape_names_the_tensor(tiny_folder, checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(checkpoint, tmp_path)
    state = load_file(str(folder / "anystory.safetensors"))
    state["blocks.3.attn2.to_k_ip.weight"] = torch.zeros(3, 3)
    save_file(state, str(folder / "anystory.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks\.3\.attn2\.to_k_ip\.weight has shape \(3, 3\)"):
        AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter=str(folder), local_files_only=True)


@pytest.mark.hostile
def test_newer_format_version_is_refused(tiny_folder, checkpoint, tmp_path):
    import json

    folder = _copy(checkpoint, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format 99"):
        AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter=str(folder), local_files_only=True)


@pytest.mark.hostile
def test_ip_adapter_for_another_encoder_is_refused(tiny_folder, tmp_path, ip_file):
    from safetensors.torch import load_file, save_file

    state = load_file(str(ip_file))
    state["image_proj.proj_in.weight"] = torch.zeros(32, 48)
    save_file(state, str(tmp_path / "bigG.safetensors"))
    with pytest.raises(CheckpointError, match="ViT-H"):
        AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="public", ip_adapter=str(tmp_path / "bigG.safetensors"), local_files_only=True)


# -- model sources -------------------------------------------------------------------------------


def test_unreachable_hub_model_gives_advice():
    with pytest.raises(ModelLoadError, match="local folder"):
        AnyStoryPipeline.from_pretrained("no-such-user/no-such-model", adapter="init")


@pytest.mark.hostile
def test_missing_local_path_gives_advice():
    with pytest.raises(ModelLoadError, match="does not exist"):
        AnyStoryPipeline.from_pretrained("./no/such/folder", adapter="init")


@pytest.mark.slow
def test_single_file_base(tiny_folder, tmp_path, plain):
    from .single_file import write_single_file_sdxl

    path = write_single_file_sdxl(tiny_folder, tmp_path / "tiny-sdxl.safetensors")
    pipe = AnyStoryPipeline.from_pretrained(
        str(path), adapter="init", single_file_config=str(tiny_folder),
        image_encoder_source=(str(tiny_folder), "image_encoder"), local_files_only=True,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    assert np.abs(pipe(PROMPT, generator=seeded(), **GEN).images - plain(PROMPT, generator=seeded(), **GEN).images).max() <= 1e-5
    girl = pipe.encode_subject(make_subject_image(1))
    assert pipe(PROMPT, subjects=[girl], generator=seeded(), **GEN).route_maps[0].shape[0] == 2


@pytest.mark.hostile
def test_pickled_single_file_is_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"not really")
    with pytest.raises(CheckpointError, match="only .safetensors"):
        AnyStoryPipeline.from_pretrained(str(path))
