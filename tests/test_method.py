"""The properties of METHOD.md §7, on the tiny SDXL loaded from a folder."""

import copy
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from anystory import AnyStoryConfig, ReferenceNet, SubjectEncoding
from anystory.attention import InjectionContext, RoutedCrossAttnProcessor, transformer_blocks
from anystory.encoder import prepare_subject, reference_features
from anystory.encoding import inside_tokens
from anystory.pipeline import PipelineBusyError, build_processors
from anystory.router import LayoutRouting, SubjectRouter, grid_of, gumbel_routes, routing_loss
from anystory.tiny import SDXL_UNET_CONFIG

from .conftest import GEN, make_subject_image, seeded

PROMPT = "a girl and her dog in a park"


def two_regions(size=8):
    """Subject 0 on the left, subject 1 on the right, background in the bottom quarter."""
    left, right = np.zeros((size, size), np.float32), np.zeros((size, size), np.float32)
    left[: size * 3 // 4, : size // 2] = 1
    right[: size * 3 // 4, size // 2 :] = 1
    return [left, right]


@pytest.mark.slow
def test_no_subjects_equals_plain_sdxl(pipe, plain):
    ours = pipe(PROMPT, generator=seeded(), **GEN).images
    reference = plain(PROMPT, generator=seeded(), **GEN).images
    assert np.array_equal(ours, reference)


@pytest.mark.slow
def test_zero_clip_values_change_nothing_with_reference_off(pipe, plain, subjects):
    _, cross = pipe.anystory_processors()
    assert all(p.to_v_ip.weight.abs().max() == 0 for p in cross)  # untrained: W'_v = 0
    reference = plain(PROMPT, generator=seeded(), **GEN).images
    for router in ("learned", "none"):
        out = pipe(PROMPT, subjects=subjects[:2], router=router, reference_schedule=None, generator=seeded(), **GEN)
        assert np.abs(out.images - reference).max() <= 1e-6


@pytest.mark.slow
def test_reference_path_is_on_by_default_and_changes_the_image(pipe, plain, subjects):
    reference = plain(PROMPT, generator=seeded(), **GEN).images
    out = pipe(PROMPT, subjects=subjects[:2], generator=seeded(), **GEN).images
    assert np.abs(out - reference).max() > 1e-3


@pytest.mark.slow
def test_cached_reference_kv_equals_recomputing_every_step(pipe):
    image = make_subject_image(4, alpha=True)
    cached = pipe.encode_subject(image)
    raw = pipe.encode_subject(image, cache_reference_kv=False)
    assert cached.reference_keys and not cached.reference_features
    assert raw.reference_features and not raw.reference_keys
    a = pipe(PROMPT, subjects=[cached], router="none", generator=seeded(), **GEN).images
    b = pipe(PROMPT, subjects=[raw], router="none", generator=seeded(), **GEN).images
    assert np.abs(a - b).max() <= 1e-6


@pytest.mark.slow
def test_encodings_keep_only_the_reference_tokens_inside_the_mask(pipe, tmp_path):
    """encode_subject stores the in-mask tokens only; an encoding with every token (format 1, or
    made by hand) attends to the same ones and gives the same image."""
    image = make_subject_image(1, alpha=True)
    pruned = pipe.encode_subject(image)
    features, mask = pipe._reference_features(prepare_subject(image, None, pipe.anystory_config.reference_size))
    self_attn, _ = pipe.anystory_processors()
    kv = [p.project_reference(f[0]) if p.inject else (None, None) for p, f in zip(self_attn, features)]
    full = SubjectEncoding(pruned.clip_tokens, pruned.routing_embedding, [k for k, _ in kv], [v for _, v in kv],
                           reference_mask=mask.float(), encoder_id=pruned.encoder_id)  # fmt: skip
    assert pruned.reference_inside_only and not full.reference_inside_only
    for block in range(1, len(kv)):
        grid = grid_of(kv[block][0].shape[0], tuple(mask.shape))
        assert torch.equal(pruned.reference_keys[block], kv[block][0][inside_tokens(mask, grid)])
    assert 0 < pruned.reference_keys[1].shape[0] < full.reference_keys[1].shape[0]
    loaded = SubjectEncoding.load(pruned.save(tmp_path / "pruned.safetensors"))
    assert loaded.reference_inside_only
    a = pipe(PROMPT, subjects=[loaded], router="none", generator=seeded(), **GEN).images
    b = pipe(PROMPT, subjects=[full], router="none", generator=seeded(), **GEN).images
    assert np.abs(a - b).max() <= 1e-6


def test_saved_encoding_gives_the_identical_generation(pipe, subjects, tmp_path):
    subjects[0].save(tmp_path / "girl.safetensors")
    loaded = SubjectEncoding.load(tmp_path / "girl.safetensors")
    assert loaded.encoder_id == pipe.encoder_id
    a = pipe(PROMPT, subjects=[subjects[0], subjects[1]], generator=seeded(), **GEN).images
    b = pipe(PROMPT, subjects=[loaded, subjects[1]], generator=seeded(), **GEN).images
    assert np.array_equal(a, b)


def test_no_encoder_pass_during_denoising(pipe, subjects):
    """Nothing of `encoder_modules()` runs while generating (so the pipeline may move all of it,
    the reference projections W~ included, off the GPU after encoding)."""
    pipe.background_encoding()
    encoders = pipe.encoder_modules()
    assert {pipe.reference_net, pipe.image_encoder, pipe.subject_encoder} <= set(encoders)
    assert sum(hasattr(m, "to_k_ref") for m in encoders) == len(pipe.anystory_processors()[0])
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for e in encoders for m in e.modules()]
    try:
        pipe.encode_subject(make_subject_image(5, alpha=True))
        assert calls  # the hooks see encoding (the W~ projections included)
        calls.clear()
        pipe(PROMPT, subjects=subjects[:2], generator=seeded(), **GEN)
    finally:
        for h in hooks:
            h.remove()
    assert calls == []


# -- route maps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("router", ["learned", "layout"])
def test_route_maps_are_one_hot_over_slots(pipe, subjects, router):
    out = pipe(
        PROMPT, subjects=subjects[:2], router=router, layout=two_regions(), generator=seeded(),
        height=128, width=128, return_route_record=True, **GEN,
    )  # fmt: skip
    (maps,) = out.route_maps
    assert maps.shape == (3, 16, 16)  # N+1 slots at the latent grid
    assert set(maps.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(maps.sum(0), torch.ones(16, 16))
    sites = len(transformer_blocks(pipe.unet))
    assert len(out.route_record) == GEN["num_inference_steps"] * sites
    for entry in out.route_record:
        assert torch.equal(entry["gates"].sum(1), torch.ones(1, *entry["grid"], dtype=torch.long))


def test_layout_maps_equal_the_given_regions(pipe, subjects):
    out = pipe(PROMPT, subjects=subjects[:2], router="layout", layout=two_regions(16), generator=seeded(), height=128, width=128, **GEN)
    left, right = (torch.from_numpy(m) for m in two_regions(16))
    (maps,) = out.route_maps
    assert torch.equal(maps[0], left) and torch.equal(maps[1], right)
    assert torch.equal(maps[2], 1 - left - right)


@pytest.mark.slow
@pytest.mark.parametrize("router", ["learned", "layout"])
def test_permuting_subjects_permutes_maps_and_keeps_the_image(pipe, subjects, router):
    layout = two_regions()
    a = pipe(PROMPT, subjects=[subjects[0], subjects[1]], router=router, layout=layout, generator=seeded(), **GEN)
    b = pipe(PROMPT, subjects=[subjects[1], subjects[0]], router=router, layout=layout[::-1], generator=seeded(), **GEN)
    assert torch.equal(b.route_maps[0], a.route_maps[0][[1, 0, 2]])
    assert np.abs(a.images - b.images).max() <= 1e-5


# -- locality at one attention layer ---------------------------------------------------------------


def _context(pipe, encodings, routing, latent_hw=(16, 16)):
    ctx = InjectionContext(subjects=encodings, background=pipe.background_encoding(), routing=routing)
    ctx.begin_pass(latent_hw)
    return ctx


@torch.no_grad()
def test_cross_attention_locality(pipe, subjects):
    block = transformer_blocks(pipe.unet)[3]
    attn = block.attn2
    torch.manual_seed(0)
    site = RoutedCrossAttnProcessor(3, attn.to_k.out_features, attn.to_k.in_features, router=None)
    torch.nn.init.normal_(site.to_v_ip.weight)  # a trained-looking CLIP path, so subjects matter
    hidden = torch.randn(1, 64, attn.to_q.in_features)
    text = torch.randn(1, 77, attn.to_k.in_features)
    routing = LayoutRouting(torch.from_numpy(np.stack(two_regions())))

    outputs = []
    for pair in ([subjects[0], subjects[1]], [subjects[0], subjects[2]]):
        outputs.append(site(attn, hidden, text, injection=_context(pipe, pair, routing)))
    routes = routing.routes(site, hidden, (8, 8), None)[0]  # [3, 64]
    changed = (outputs[0] - outputs[1]).abs().amax(-1)[0]
    assert changed[routes[1].bool()].min() > 1e-4  # subject 1's positions see the new subject 1
    assert changed[~routes[1].bool()].max() == 0  # subject 0's and background positions do not


@torch.no_grad()
def test_self_attention_locality_and_clean_background(pipe, subjects):
    block = transformer_blocks(pipe.unet)[3]
    attn, site = block.attn1, block.attn1.processor
    hidden = torch.randn(1, 64, attn.to_q.in_features)
    routing = LayoutRouting(torch.from_numpy(np.stack(two_regions())))
    plain = AttnProcessor2_0()(attn, hidden)

    def run(pair):
        ctx = _context(pipe, pair, routing)
        ctx.publish_routes(2, routing.routes(None, hidden, (8, 8), None), (8, 8))  # "previous layer" map
        return site(attn, hidden, injection=ctx)

    a, b = run([subjects[0], subjects[1]]), run([subjects[0], subjects[2]])
    routes = routing.routes(None, hidden, (8, 8), None)[0]
    changed = (a - b).abs().amax(-1)[0]
    assert changed[routes[1].bool()].min() > 1e-5
    assert changed[~routes[1].bool()].max() == 0
    background = routes[2].bool()
    assert (a[0, background] - plain[0, background]).abs().max() <= 1e-6
    assert (a[0, ~background] - plain[0, ~background]).abs().amax(-1).min() > 1e-5

    # No reference token inside the masks: the layer is plain self-attention everywhere.
    masked = [copy.copy(s) for s in subjects[:2]]
    for s in masked:
        s.reference_keys = [None if k is None else k[:0] for k in s.reference_keys]
        s.reference_values = [None if v is None else v[:0] for v in s.reference_values]
    assert (run(masked) - plain).abs().max() <= 1e-6


def test_first_block_takes_no_reference(pipe):
    self_attn, _ = pipe.anystory_processors()
    assert [p.inject for p in self_attn] == [False] + [True] * (len(self_attn) - 1)


# -- training-mode routing -------------------------------------------------------------------------


def test_gumbel_straight_through_reaches_router_parameters():
    torch.manual_seed(0)
    router = SubjectRouter(hidden_dim=32, routing_dim=16, router_dim=16, heads=2)
    latent = torch.randn(2, 64, 32)
    embeddings = torch.randn(1, 3, 16)
    logits = router(latent, embeddings)
    gates = gumbel_routes(logits)
    assert not gates.isnan().any()
    assert torch.allclose(gates.detach(), F.one_hot(gates.detach().argmax(1), 3).movedim(-1, 1).float())  # hard forward
    target = torch.rand(2, 3, 64)
    (gates * target).sum().backward()
    for name, param in router.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_routing_loss_has_gradients():
    router = SubjectRouter(hidden_dim=32, routing_dim=16, router_dim=16, heads=2)
    logits = router(torch.randn(1, 16, 32), torch.randn(1, 3, 16))
    masks = torch.zeros(1, 3, 8, 8)
    masks[:, 0, :, :4], masks[:, 1, :, 4:] = 1, 1
    loss = routing_loss([(0, logits, (4, 4))], masks)
    loss.backward()
    assert loss.item() > 0 and router.fine_z.weight.grad.abs().sum() > 0


# -- the full architecture, on the meta device -----------------------------------------------------


def test_full_sdxl_counts_on_meta_device():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    unet_params = sum(p.numel() for p in unet.parameters())
    assert round(unet_params / 1e9, 3) == 2.567
    reference_net = ReferenceNet.from_unet(unet)
    assert round(sum(p.numel() for p in reference_net.parameters()) / 1e9, 2) == 2.02
    assert all(b.attn2 is None for b in transformer_blocks(reference_net))
    assert reference_net.conv_in.in_channels == 5

    with torch.device("meta"):
        processors = build_processors(unet, AnyStoryConfig())
    routers = [p for p in processors.values() if isinstance(p, RoutedCrossAttnProcessor)]
    injecting = [p for p in processors.values() if getattr(p, "inject", False)]
    assert len(routers) == 70 and all(p.router is not None for p in routers)
    assert len(injecting) == 69


def test_reference_net_starts_equal_to_the_unet(pipe):
    """The zero-initialised mask channel makes the untrained ReferenceNet compute the UNet's features."""
    unet = pipe.unet
    conv = pipe.reference_net.conv_in.weight
    assert torch.equal(conv[:, :4], unet.conv_in.weight) and conv[:, 4].abs().max() == 0


# -- the order routes are read in, the ReferenceNet's start, the unconditional rows ----------------


class _OneSiteRouting:
    """Subject 0 everywhere at one site, the background everywhere else: shows which site's
    routes each attn1 reads."""

    exclusive = True

    def __init__(self, site: int):
        self.site = site

    def routes(self, site, latent, grid, ctx=None):
        routes = latent.new_zeros(latent.shape[0], 2, latent.shape[1])
        routes[:, 0 if site.index == self.site else 1] = 1
        return routes


def _unet_inputs(unet, batch=1, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    config = unet.config
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    latents = torch.randn(batch, 4, size, size, generator=generator)
    text = torch.randn(batch, 77, config.cross_attention_dim, generator=generator)
    added = {"text_embeds": torch.randn(batch, pooled, generator=generator), "time_ids": torch.zeros(batch, 6)}
    return latents, text, added


@torch.no_grad()
def test_first_up_block_reads_the_mid_block_routes(pipe, subjects, monkeypatch):
    """attn1 of the first up block reads the routes of the MID block's last attn2: execution order
    (down -> mid -> up), not `unet.attn_processors` order (down -> up -> mid), where the block
    before it would be the last down block."""
    unet = pipe.unet
    blocks = transformer_blocks(unet)
    down = [b for part in unet.down_blocks for t in getattr(part, "attentions", None) or [] for b in t.transformer_blocks]  # fmt: skip
    mid = [b for t in unet.mid_block.attentions for b in t.transformer_blocks]
    first_up = unet.up_blocks[0].attentions[0].transformer_blocks[0]
    last_mid = len(down) + len(mid) - 1
    assert blocks[last_mid] is mid[-1] and blocks[last_mid + 1] is first_up
    names = list(unet.attn_processors)
    first_up_name = next(n for n in names if n.startswith("up_blocks.0.attentions.0.transformer_blocks.0.attn1"))
    assert names[names.index(first_up_name) - 1].startswith("down_blocks.")  # what the listing order would give

    seen = {}
    original = InjectionContext.previous_routes

    def recording(self, grid, block):
        routes = original(self, grid, block)
        seen[block] = None if routes is None else routes.clone()
        return routes

    monkeypatch.setattr(InjectionContext, "previous_routes", recording)
    routing = _OneSiteRouting(last_mid)
    ctx = InjectionContext(subjects=subjects[:1], background=pipe.background_encoding(), routing=routing)
    latents, text, added = _unet_inputs(unet)
    ctx.begin_pass(tuple(latents.shape[-2:]))
    injection = {"injection": ctx}
    unet(latents, torch.tensor([500]), encoder_hidden_states=text, added_cond_kwargs=added, cross_attention_kwargs=injection)

    assert set(seen) == set(range(1, len(blocks)))  # every attn1 but block 1's asked for routes
    for block, routes in seen.items():
        owner = 0 if block == last_mid + 1 else 1  # only the first up block follows the mid block
        assert routes[:, owner].bool().all(), block


@torch.no_grad()
def test_reference_net_with_zero_mask_channel_gives_the_unets_attn1_inputs(pipe):
    """The untrained ReferenceNet computes the features the UNet's own attn1 sees, whatever the
    mask channel holds, once the UNet's cross-attention adds nothing: under the reference pass's
    zero text, attn2 adds only its output bias b_out, the one term the ReferenceNet (no attn2)
    lacks. With real biases the two differ by exactly that (why public-weights mode, which runs
    the UNet itself, and an untrained checkpoint do not encode alike)."""
    unet = copy.deepcopy(pipe.unet)
    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 4, 8, 8, generator=generator)
    masks = [(torch.rand(1, 1, 8, 8, generator=generator) > 0.5).float(), torch.zeros(1, 1, 8, 8)]

    with_bias = reference_features(unet, latent)
    for block in transformer_blocks(unet):
        block.attn2.to_out[0].bias.zero_()
    own = reference_features(unet, latent)
    net = ReferenceNet.from_unet(unet)
    features = [reference_features(net, torch.cat([latent, mask], dim=1)) for mask in masks]

    assert len(own) == len(features[0]) == len(transformer_blocks(unet))
    for block, expected in enumerate(own):
        assert torch.equal(features[0][block], features[1][block])  # the mask channel is ignored
        assert torch.allclose(features[0][block], expected, atol=1e-5, rtol=1e-5), block
    assert max((a - b).abs().max() for a, b in zip(with_bias[1:], own[1:])) > 1e-4


@torch.no_grad()
def test_unconditional_rows_get_the_background_slot_and_no_reference(pipe, subjects):
    """With CFG the unconditional half sees the background slot E_{N+1} everywhere in attn2 and no
    reference tokens in attn1, whatever the subjects and routes of the conditional half."""
    block = transformer_blocks(pipe.unet)[3]
    attn2, attn1 = block.attn2, block.attn1
    torch.manual_seed(0)
    site = RoutedCrossAttnProcessor(3, attn2.to_k.out_features, attn2.to_k.in_features, router=None)
    torch.nn.init.normal_(site.to_v_ip.weight)  # a trained-looking CLIP path, so slots matter
    hidden = torch.randn(2, 64, attn2.to_q.in_features)  # [unconditional, conditional]
    text = torch.randn(2, 77, attn2.to_k.in_features)
    routing = LayoutRouting(torch.from_numpy(np.stack(two_regions())))
    background_only = LayoutRouting(torch.zeros(2, 8, 8))

    def guided(pair):
        ctx = _context(pipe, pair, routing)
        ctx.cfg = True
        return ctx

    out = site(attn2, hidden, text, injection=guided(subjects[:2]))
    alone = site(attn2, hidden[:1], text[:1], injection=_context(pipe, subjects[:2], background_only))
    assert torch.allclose(out[:1], alone, atol=1e-6)  # = a row routed to the background everywhere
    other = site(attn2, hidden, text, injection=guided([subjects[2], subjects[0]]))
    assert torch.equal(other[:1], out[:1]) and (other[1:] - out[1:]).abs().max() > 1e-4

    ctx = guided(subjects[:2])
    ctx.publish_routes(2, routing.routes(None, hidden[1:], (8, 8)), (8, 8))  # the conditional row's routes
    out = attn1.processor(attn1, hidden, injection=ctx)
    plain = AttnProcessor2_0()(attn1, hidden)
    assert torch.allclose(out[:1], plain[:1], atol=1e-6)  # no reference tokens
    assert (out[1:] - plain[1:]).abs().max() > 1e-5  # while the conditional row has them


# -- one call at a time ------------------------------------------------------------------------------


def test_a_second_call_while_one_runs_fails_loudly(pipe, subjects):
    """A generation blocked inside its callback holds the pipeline: a call from another thread, or
    from inside that callback, raises PipelineBusyError at once; the first generation is unmixed."""
    inside, release = threading.Event(), threading.Event()
    from_callback, from_thread, result = [], [], {}

    def hold(p, step, timestep, tensors):
        if step == 0:
            try:
                p(PROMPT, **GEN)
            except PipelineBusyError as err:
                from_callback.append(err)
            inside.set()
            release.wait(120)
        return {}

    def first():
        out = pipe(PROMPT, subjects=subjects[:2], generator=seeded(), callback_on_step_end=hold, **GEN)
        result["images"] = out.images

    def second(call):
        try:
            call()
        except PipelineBusyError as err:
            from_thread.append(err)

    running = threading.Thread(target=first)
    running.start()
    try:
        assert inside.wait(120)
        calls = [
            lambda: pipe(PROMPT, subjects=subjects[:2], generator=seeded(), **GEN),
            lambda: pipe(PROMPT, **GEN),  # no subjects: still diffusers' state and the shared UNet
            lambda: pipe.encode_subject(make_subject_image(4, alpha=True)),
        ]
        for call in calls:
            other = threading.Thread(target=second, args=(call,))
            other.start()
            other.join(120)
    finally:
        release.set()
        running.join(300)
    assert len(from_callback) == 1 and len(from_thread) == len(calls)
    assert all("busy" in str(err) for err in from_callback + from_thread)
    alone = pipe(PROMPT, subjects=subjects[:2], generator=seeded(), **GEN).images
    assert np.array_equal(result["images"], alone)


# -- the documented defaults -------------------------------------------------------------------------


def _documented_schedules() -> list[tuple[list[str], str, tuple, tuple]]:
    """The "Step schedules" table of docs/METHOD.md: (routers, subjects, clip, reference) per row."""
    import ast
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "METHOD.md").read_text()
    section = text.split("### Step schedules", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].startswith("("):
            routers = [r.strip() for r in cells[0].split(",")]
            rows.append((routers, cells[1], ast.literal_eval(cells[2]), ast.literal_eval(cells[3])))
    return rows


def test_default_schedules_are_the_documented_ones(pipe, subjects):
    from anystory.pipeline import default_schedules

    rows = _documented_schedules()
    assert {r for routers, *_ in rows for r in routers} == {"learned", "prompt", "layout", "none"}
    counts = {"1": [1], "2 or more": [2, 3, 4], "any": [1, 2, 3, 4]}
    for routers, subjects_cell, clip, reference in rows:
        for router in routers:
            for n in counts[subjects_cell]:
                assert default_schedules(router, n) == (clip, reference), (router, n)

    # Step i of n is on when round(start n) <= i < round(end n), halves up: 0.09 of 25 steps starts at step 2.
    ctx = InjectionContext(subjects=subjects[:1], background=pipe.background_encoding(), routing=None,
                           reference_schedule=(0.09, 1.0), num_steps=25)  # fmt: skip
    on = [step for step in range(25) if (setattr(ctx, "step", step) or ctx.reference_active)]
    assert on == list(range(2, 25))

    # The pipeline applies them: learned router, 2 subjects, 6 steps -> the reference path is off at step 0.
    steps = dict(GEN, num_inference_steps=6)
    def run(**schedules):
        return pipe(PROMPT, subjects=subjects[:2], router="learned", generator=seeded(), **schedules, **steps).images

    default = run()
    assert np.array_equal(default, run(clip_schedule=(0.0, 1.0), reference_schedule=(0.09, 1.0)))
    assert np.abs(default - run(reference_schedule=(0.0, 1.0))).max() > 1e-4


# -- no host round trips while denoising -------------------------------------------------------------


def test_route_record_equals_copies_made_at_every_site(pipe, subjects, monkeypatch, tmp_path):
    """The record stays on the device and moves once at the end: the same entries, in the same
    order, as copying each site's routes to the host when it publishes them (as it once did)."""
    from anystory.render import load_route_maps, route_maps_bytes

    def write_route_maps(path, final, record):
        path.write_bytes(route_maps_bytes(final, record))
        return path

    copies = []
    publish = InjectionContext.publish_routes

    def copying(self, site, routes, grid):
        b, s, _ = routes.shape
        gates = routes.detach().float().view(b, s, *grid).bool().cpu()
        copies.append({"step": self.step, "site": site, "grid": grid, "gates": gates})
        return publish(self, site, routes, grid)

    monkeypatch.setattr(InjectionContext, "publish_routes", copying)
    out = pipe(PROMPT, subjects=subjects[:2], router="learned", return_route_record=True, generator=seeded(),
               height=128, width=128, **GEN)  # fmt: skip
    record = out.route_record
    assert len(record) == len(copies) == GEN["num_inference_steps"] * len(transformer_blocks(pipe.unet))
    for ours, copied in zip(record, copies):
        assert ours.keys() == copied.keys() and all(ours[k] == copied[k] for k in ("step", "site", "grid"))
        assert ours["gates"].device.type == "cpu" and torch.equal(ours["gates"], copied["gates"])
    final = out.route_maps[0].numpy()
    saved = [write_route_maps(tmp_path / f"{name}.npz", final, [{**e, "gates": e["gates"][0].numpy()} for e in entries])
             for name, entries in (("ours", record), ("copies", copies))]  # fmt: skip
    (final_a, record_a), (final_b, record_b) = (load_route_maps(path) for path in saved)
    assert np.array_equal(final_a, final_b) and len(record_a) == len(record_b)
    assert all(np.array_equal(a["gates"], b["gates"]) and a["grid"] == b["grid"] for a, b in zip(record_a, record_b))


class _HostTrips:
    """Counts `.cpu()`, `.item()`, `.tolist()`, `.numpy()` and `bool` / `int` / `float` of a tensor
    (each a device-to-host copy and a wait on a GPU) while `on`, with the file that called it; on
    CUDA it also turns on torch's own sync check, which fails the call."""

    METHODS = ("cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch):
        self.on, self.calls = False, []
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))

    def _counting(self, name, original):
        def counted(tensor, *args, **kwargs):
            if self.on:
                self.calls.append((name, sys._getframe(1).f_code.co_filename))
            return original(tensor, *args, **kwargs)

        return counted

    def callback(self, steps: int):
        """A step-end callback: on from the end of the first step to the end of the last, i.e. for
        every UNet pass but the first (which makes the per-generation constants) and the
        scheduler steps between them."""

        def at_step_end(pipe, step, timestep, tensors):
            self.on = step < steps - 1
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("error" if self.on else "default")
            return {}

        return at_step_end


@pytest.mark.parametrize("router", ["learned", "prompt", "layout"])
def test_no_host_round_trip_while_denoising(pipe, plain, subjects, monkeypatch, router):
    """Generating with two subjects and the route record on, nothing of AnyStory reads a tensor
    back to the host during the denoising loop, and nothing more happens there than in diffusers'
    own SDXL loop (whose scheduler compares its CPU sigmas)."""
    import anystory

    package = str(Path(anystory.__file__).parent)
    trips = _HostTrips(monkeypatch)
    steps = dict(GEN, num_inference_steps=4)
    extra = {"learned": {}, "prompt": dict(subject_phrases=["a girl", "her dog"], prompt_route_start=0.0),
             "layout": dict(layout=two_regions())}[router]  # fmt: skip
    out = pipe(PROMPT, subjects=subjects[:2], router=router, return_route_record=True, generator=seeded(),
               callback_on_step_end=trips.callback(4), **extra, **steps)  # fmt: skip
    ours, trips.calls = trips.calls, []
    plain(PROMPT, generator=seeded(), callback_on_step_end=trips.callback(4), **steps)
    assert [call for call in ours if call[1].startswith(package)] == []
    assert sorted(ours) == sorted(trips.calls)
    assert len(out.route_record) == 4 * len(transformer_blocks(pipe.unet))  # the record was on throughout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.set_sync_debug_mode")
def test_no_device_sync_while_denoising_on_cuda(tiny_folder):
    """On a GPU, torch's own check: any synchronising call between the first and the last step fails."""
    from anystory import AnyStoryPipeline

    pipe = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="init", device="cuda", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pair = [pipe.encode_subject(make_subject_image(seed, alpha=True)) for seed in (1, 2)]
    trips = _HostTrips(pytest.MonkeyPatch())
    try:
        out = pipe(PROMPT, subjects=pair, return_route_record=True, callback_on_step_end=trips.callback(4),
                   num_inference_steps=4, output_type="latent")  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode("default")
        pytest.MonkeyPatch().undo()
    assert len(out.route_record) == 4 * len(transformer_blocks(pipe.unet))
