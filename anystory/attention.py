"""Inject step: attention processors that add the subjects under the routes (METHOD.md §3).

- `RoutedCrossAttnProcessor` (attn2, Eq. 5): text attention + eta * sum_i sigma(M_i) Softmax(Q K^_i) V^_i,
  one softmax per slot; it asks the router for this site's routes sigma(M^l) and publishes them.
- `ReferenceAttnProcessor` (attn1, Eq. 6-8): self-attention whose keys/values are extended by the
  subjects' reference tokens, each visible only at positions routed to that subject by the
  PREVIOUS cross-attention site (in execution order), and only inside the subject's own mask.
- `InjectionContext`: one generation's subjects, settings and routes. The processors get it with
  each call (`injection=`, which the UNet passes on from `cross_attention_kwargs`); without it
  both are exactly diffusers' `AttnProcessor2_0`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from .encoding import SubjectEncoding, inside_tokens
from .router import grid_of, resize_routes

# diffusers' own attention processor: what every AnyStory processor computes without an injection.
plain_attention = AttnProcessor2_0()


def transformer_blocks(unet: nn.Module) -> list[nn.Module]:
    """The UNet's transformer blocks in execution order: down blocks, then mid, then up.

    (`unet.attn_processors` lists down, up, mid: not the order the blocks run in.)
    """
    parts = list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks)
    blocks = []
    for part in parts:
        for transformer in getattr(part, "attentions", None) or []:
            blocks.extend(transformer.transformer_blocks)
    return blocks


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _finish(attn: Attention, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Output projection, dropout, residual and rescale, as AttnProcessor2_0 ends."""
    hidden = attn.to_out[1](attn.to_out[0](hidden))
    if attn.residual_connection:
        hidden = hidden + residual
    return hidden / attn.rescale_output_factor


def _check_supported(attn: Attention, hidden_states: torch.Tensor) -> None:
    if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
        raise NotImplementedError("AnyStory injection supports the transformer attention of SDXL only")


@dataclass
class InjectionContext:
    """One generation's injection (METHOD.md §2-3): what goes in, and the routes computed so far.

    It travels with every UNet call as `cross_attention_kwargs={"injection": ctx}` (diffusers
    hands that to each attention processor), so the processors, shared by every call of a
    pipeline, hold no per-call state. Slots are the subjects 1..N, then the background N+1.
    Batches hold the unconditional rows first when classifier-free guidance is on (as diffusers'
    SDXL pipeline concatenates them).
    """

    subjects: list[SubjectEncoding]
    background: SubjectEncoding  # E_{N+1}, R_{N+1}: the background slot, also the unconditional rows'
    routing: object  # a router.py strategy: .routes(site, latent, grid, ctx) -> sigma(M^l), .exclusive
    clip_scale: float = 1.0  # eta
    reference_bias: float = 0.0  # gamma
    subject_scales: list[float] | None = None  # per-subject strength (CLIP path scale, log-bias of K~_i)
    clip_schedule: tuple[float, float] | None = (0.0, 1.0)  # (start, end) fractions of the steps; None: off
    reference_schedule: tuple[float, float] | None = (0.0, 1.0)
    record_steps: bool = False  # keep the routes of every site at every step (`record`)
    # Where the denoising is, set by the caller before each UNet pass.
    step: int = 0
    num_steps: int = 1
    cfg: bool = False
    latent_hw: tuple[int, int] = (1, 1)
    # Filled while running, all on the device (nothing goes to the host before the call ends).
    routes: dict = field(default_factory=dict)  # site l -> (sigma(M^l) [Bc, N+1, hw], grid) of this pass
    route_sum: torch.Tensor | None = None  # sigma(M^l) summed over sites and steps at the latent grid
    route_count: int = 0
    _record: list[dict] = field(default_factory=list)
    _constants: dict = field(default_factory=dict)  # per-generation values, made once

    def __post_init__(self):
        n = len(self.subjects)
        scales = self.subject_scales if self.subject_scales is not None else [1.0] * n
        if len(scales) != n:
            raise ValueError(f"{len(scales)} subject scales for {n} subjects")
        if any(s < 0 for s in scales):
            raise ValueError("subject scales must be >= 0")
        self.subject_scales = list(scales)
        # E_1..E_{N+1}: the CLIP tokens of every slot, stacked [S, T, text].
        self.clip_tokens = torch.stack([s.clip_tokens for s in self.subjects] + [self.background.clip_tokens])

    @property
    def num_slots(self) -> int:
        return len(self.subjects) + 1

    # -- schedules ---------------------------------------------------------------------------------

    def _in_window(self, window: tuple[float, float] | None) -> bool:
        """Step i is in (start, end) when round(start * n) <= i < round(end * n), rounding halves up
        (as the official release counts its schedules)."""
        if window is None:
            return False
        first, stop = (math.floor(fraction * self.num_steps + 0.5) for fraction in window)
        return first <= self.step < stop

    @property
    def clip_active(self) -> bool:
        return self._in_window(self.clip_schedule)

    @property
    def reference_active(self) -> bool:
        return self._in_window(self.reference_schedule) and any(s.has_reference for s in self.subjects)

    @property
    def subjects_routed(self) -> bool:
        """False when the routing strategy knows, without looking at a tensor, that every position
        is background at this step (the prompt router before its start): then no subject is
        injected anywhere, and the work for the subjects' slots is skipped."""
        known = getattr(self.routing, "routes_subjects", None)
        return known(self) if known is not None else True

    # -- one UNet pass -----------------------------------------------------------------------------

    def begin_pass(self, latent_hw: tuple[int, int]) -> None:
        """Before every UNet pass: block 1 of a pass has no previous route."""
        self.latent_hw = latent_hw
        self.routes = {}

    def cond_rows(self, batch: int) -> int:
        """Index of the first conditional row."""
        return batch // 2 if self.cfg else 0

    def publish_routes(self, site: int, routes: torch.Tensor, grid: tuple[int, int]) -> None:
        """sigma(M^l) of site l [Bc, N+1, hw]: kept for the next block's attn1, added to the route
        sum (the final route maps), recorded when asked. Kept per site, not just the latest: a
        gradient-checkpointed block, recomputed during backward, reads the routes it read before."""
        routes = routes.detach()
        self.routes[site] = (routes, grid)
        b, s, _ = routes.shape
        one_hot = routes.float().view(b, s, *grid)
        at_latent = F.adaptive_avg_pool2d(one_hot, self.latent_hw)
        self.route_sum = at_latent if self.route_sum is None else self.route_sum + at_latent
        self.route_count += 1
        if self.record_steps:
            self._record.append({"step": self.step, "site": site, "grid": grid, "gates": one_hot.bool()})

    def previous_routes(self, grid: tuple[int, int], block: int) -> torch.Tensor | None:
        """The routes of the cross-attention that ran just before block `block`'s attn1 (block
        l - 1 in execution order), resized to `grid`; None when there is none."""
        if block - 1 not in self.routes:
            return None
        routes, source = self.routes[block - 1]
        return resize_routes(routes, source, grid, self.routing.exclusive)

    # -- what the call returns -----------------------------------------------------------------------

    def route_maps(self) -> torch.Tensor:
        """The final route map per image [B, N+1, h, w] at the latent grid, on the host: the
        majority over sites and steps, one-hot for exclusive routers (ties go to the most recent
        site's routes; a tie-break by slot order would depend on the order subjects are given),
        else the mean."""
        if self.route_sum is None:
            return torch.zeros(0, self.num_slots, *self.latent_hw)
        if not self.routing.exclusive:
            return (self.route_sum / max(self.route_count, 1)).cpu()
        latest, grid = next(reversed(self.routes.values()))
        b, s, _ = latest.shape
        tie_break = F.adaptive_avg_pool2d(latest.float().view(b, s, *grid), self.latent_hw)
        winner = (self.route_sum + 1e-3 * tie_break).argmax(dim=1)
        return F.one_hot(winner, s).permute(0, 3, 1, 2).float().cpu()

    @property
    def record(self) -> list[dict]:
        """Per step and site: {"step", "site", "grid", "gates": bool [Bc, N+1, h, w]} on the host,
        moved in one device-to-host copy for the whole record (each site keeps its routes on the
        device while the generation runs)."""
        if not self._record:
            return []
        flat = torch.cat([entry["gates"].flatten() for entry in self._record]).cpu()
        host, offset = [], 0
        for entry in self._record:
            size = entry["gates"].numel()
            host.append({**entry, "gates": flat[offset : offset + size].view(entry["gates"].shape)})
            offset += size
        return host

    # -- per-generation constants --------------------------------------------------------------------

    def constant(self, key, make, weights: bool = True):
        """A value that stays the same for the whole generation, made once. One that depends on
        trained weights is made at every call while gradients are on (training changes them)."""
        if weights and torch.is_grad_enabled():
            return make()
        if key not in self._constants:
            self._constants[key] = make()
        return self._constants[key]

    def slot_scales(self, device, dtype) -> torch.Tensor:
        """eta * strength_i per subject slot, eta for the background: [S]."""
        values = [self.clip_scale * s for s in self.subject_scales] + [self.clip_scale]
        make = lambda: torch.tensor(values, device=device, dtype=dtype)  # noqa: E731
        return self.constant(("slot_scales", device, dtype), make, weights=False)

    def reference_log_strength(self, device, dtype) -> torch.Tensor:
        """gamma + log(strength_i) per subject (log 0 = -inf: that subject's reference is off),
        computed in float32, given in `dtype`."""

        def make():
            strength = torch.tensor(self.subject_scales, device=device, dtype=torch.float32)
            return (self.reference_bias + torch.log(strength)).to(dtype)

        return self.constant(("reference_log_strength", device, dtype), make, weights=False)

    def clip_kv(self, site: RoutedCrossAttnProcessor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K^_s = E_s W'_k, V^_s = E_s W'_v of every slot, split into heads [S, heads, T, d]."""

        def make():
            tokens = self.clip_tokens.to(site.to_k_ip.weight.device, site.to_k_ip.weight.dtype)  # [S, T, text]
            keys, values = site.to_k_ip(tokens), site.to_v_ip(tokens)
            return _split_heads(keys, heads).contiguous(), _split_heads(values, heads).contiguous()

        return self.constant(("clip_kv", site.index), make)

    def reference_tokens(self, block: int, site: ReferenceAttnProcessor):
        """One block's reference tokens that lie inside their subject's mask, all subjects stacked:
        K~, V~ [T', d] and the subject of each token [T'] (long); None when a subject has no
        reference or no token lies inside a mask. A token outside its subject's mask is never
        attended to (its bias would be -inf everywhere), so it is left out rather than masked."""
        return self.constant(("reference_tokens", block), lambda: self._gather_reference(block, site))

    def _gather_reference(self, block: int, site: ReferenceAttnProcessor):
        keys, values, owners = [], [], []
        for slot, subject in enumerate(self.subjects):
            if not subject.has_reference:
                return None
            kv = subject.reference_kv(block)
            if kv is None:
                kv = site.project_reference(subject.reference_features[block])
            if not subject.reference_inside_only:
                inside = self.constant(
                    ("inside_tokens", slot, kv[0].shape[0]),
                    lambda: self._inside_tokens(subject, kv[0].shape[0], kv[0].device),
                    weights=False,
                )
                kv = kv[0].index_select(0, inside), kv[1].index_select(0, inside)
            keys.append(kv[0])
            values.append(kv[1])
            owners.append(torch.full((kv[0].shape[0],), slot, dtype=torch.long, device=kv[0].device))
        owner = torch.cat(owners)
        if not owner.numel():
            return None
        return torch.cat(keys), torch.cat(values), owner

    @staticmethod
    def _inside_tokens(subject: SubjectEncoding, tokens: int, device) -> torch.Tensor:
        """Indices of the reference tokens (of a block with `tokens` tokens) inside the subject's mask."""
        grid = grid_of(tokens, tuple(subject.reference_mask.shape))
        return inside_tokens(subject.reference_mask, grid).to(device)


class ClipPath(nn.Module):
    """The weights of one attn2 site: W'_k, W'_v of the CLIP path and the site's router (or None)."""

    def __init__(self, hidden_dim: int, text_dim: int, router: nn.Module | None):
        super().__init__()
        self.to_k_ip = nn.Linear(text_dim, hidden_dim, bias=False)
        self.to_v_ip = nn.Linear(text_dim, hidden_dim, bias=False)
        nn.init.zeros_(self.to_v_ip.weight)  # an untrained CLIP path adds exactly nothing
        self.router = router


class ReferenceProjection(nn.Module):
    """The weights of one attn1 site: W~_k, W~_v, the reference tokens' key and value projections."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.to_k_ref = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.to_v_ref = nn.Linear(hidden_dim, hidden_dim, bias=False)


class AnyStoryBlocks(nn.Module):
    """Every AnyStory weight that acts inside the UNet's attention, held OUTSIDE the UNet.

    The processors installed on the UNet are plain objects (not modules) that point here, so the
    UNet's module tree, `state_dict()`, `save_pretrained`, `ControlNetModel.from_unet`, LoRA loading
    and offload hooks all see a plain SDXL UNet. The pipeline owns this module as a component.
    Keys: `attn1.{block}.to_k_ref` (blocks that own W~), `attn2.{block}.to_k_ip` / `.router.*`.
    """

    def __init__(self, processors):
        super().__init__()
        self.attn1 = nn.ModuleDict()
        self.attn2 = nn.ModuleDict()
        for proc in processors:
            if isinstance(proc, ReferenceAttnProcessor) and proc.owns_reference_kv:
                self.attn1[str(proc.index)] = proc.weights
            elif isinstance(proc, RoutedCrossAttnProcessor):
                self.attn2[str(proc.index)] = proc.weights

    # What diffusers' pipelines ask of every component (`pipe.device`, `pipe.dtype`), as ModelMixin has them.
    @property
    def device(self) -> torch.device:
        return next(self.parameters(), torch.empty(0)).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters(), torch.empty(0)).dtype


class RoutedCrossAttnProcessor:
    """attn2 of one transformer block: the router of this site + the CLIP path W'_k, W'_v.

    A plain object, not an `nn.Module`: its weights are `self.weights` (a `ClipPath`), which the
    pipeline's `AnyStoryBlocks` holds, so that nothing of AnyStory enters the UNet's module tree.
    """

    def __init__(self, index: int, hidden_dim: int, text_dim: int, router: nn.Module | None):
        self.index = index
        self.weights = ClipPath(hidden_dim, text_dim, router)

    @property
    def to_k_ip(self) -> nn.Linear:
        return self.weights.to_k_ip

    @property
    def to_v_ip(self) -> nn.Linear:
        return self.weights.to_v_ip

    @property
    def router(self) -> nn.Module | None:
        return self.weights.router

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
        injection: InjectionContext | None = None, **kwargs,
    ):  # fmt: skip
        ctx = injection
        if ctx is None:
            return plain_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        _check_supported(attn, hidden_states)
        batch, tokens, _ = hidden_states.shape
        first_cond = ctx.cond_rows(batch)
        grid = grid_of(tokens, ctx.latent_hw)

        # Text attention, step by step as AttnProcessor2_0 computes it (bit-identical).
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        text = encoder_hidden_states
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        query = _split_heads(attn.to_q(hidden_states), attn.heads)
        key = _split_heads(attn.to_k(text), attn.heads)
        value = _split_heads(attn.to_v(text), attn.heads)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        out = _merge_heads(out).to(query.dtype)

        # Route: the prompt router watches the text attention; every router answers sigma(M^l).
        if hasattr(ctx.routing, "observe"):
            ctx.routing.observe(query[first_cond:], key[first_cond:], attn.scale, grid, ctx)
        routes = ctx.routing.routes(self, hidden_states[first_cond:], grid, ctx)  # [Bc, N+1, hw]
        ctx.publish_routes(self.index, routes, grid)

        if ctx.clip_active:
            out = out + self._image_attention(query, routes, first_cond, ctx, attn.heads)
        return _finish(attn, out, hidden_states)

    def _image_attention(self, query, routes, first_cond, ctx, heads) -> torch.Tensor:
        """sum over slots of eta_s * sigma(M_s) * Softmax(Q K^_s) V^_s, one softmax per slot (Eq. 5).

        The unconditional rows see the background slot everywhere. The conditional rows attend to
        every slot in one call (the slots as a batch); the routed sum then goes slot by slot.
        """
        batch, _, tokens, dim = query.shape
        slots = ctx.num_slots
        slot_keys, slot_values = ctx.clip_kv(self, heads)  # [S, heads, T, d]
        scales = ctx.slot_scales(query.device, query.dtype)
        if not ctx.subjects_routed:  # the background slot everywhere, in every row
            k, v = slot_keys[-1:].expand(batch, -1, -1, -1), slot_values[-1:].expand(batch, -1, -1, -1)
            return _merge_heads(F.scaled_dot_product_attention(query, k, v).to(query.dtype) * scales[-1])
        cond = batch - first_cond
        q = query[first_cond:].unsqueeze(1).expand(-1, slots, -1, -1, -1).reshape(cond * slots, heads, tokens, dim)
        k = slot_keys.unsqueeze(0).expand(cond, -1, -1, -1, -1).reshape(cond * slots, *slot_keys.shape[1:])
        v = slot_values.unsqueeze(0).expand(cond, -1, -1, -1, -1).reshape(cond * slots, *slot_values.shape[1:])
        image = F.scaled_dot_product_attention(q, k, v).to(query.dtype).view(cond, slots, heads, tokens, dim)
        weights = (routes.to(query.dtype) * scales[None, :, None])[:, :, None, :, None]  # [Bc, S, 1, hw, 1]
        total = image[:, 0] * weights[:, 0]
        for slot in range(1, slots):
            total = total.addcmul_(image[:, slot], weights[:, slot])
        if first_cond:
            k = slot_keys[-1:].expand(first_cond, -1, -1, -1)
            v = slot_values[-1:].expand(first_cond, -1, -1, -1)
            background = F.scaled_dot_product_attention(query[:first_cond], k, v).to(query.dtype) * scales[-1]
            total = torch.cat([background, total])
        return _merge_heads(total)


class ReferenceAttnProcessor:
    """attn1 of one transformer block: self-attention extended by routed reference tokens.

    W~_k, W~_v are its own matrices (`self.weights`, a `ReferenceProjection` held by the pipeline's
    `AnyStoryBlocks`), or (public-weights mode) attn1's own to_k / to_v as they were when the
    processor was built, shared, so the UNet's weights are neither copied nor listed twice. (A LoRA
    loaded later wraps attn1's layers; the shared ones stay the base layers, so encodings do not
    depend on the LoRA of the moment.) A plain object, not an `nn.Module`.
    """

    def __init__(self, index: int, hidden_dim: int, inject: bool, shared_kv: tuple[nn.Linear, nn.Linear] | None = None):
        self.index = index
        self.inject = inject  # block 1 has no previous map, so never injects
        self.weights = ReferenceProjection(hidden_dim) if shared_kv is None else None
        self._shared_kv = shared_kv

    @property
    def owns_reference_kv(self) -> bool:
        return self._shared_kv is None

    @property
    def to_k_ref(self) -> nn.Linear:
        if self.weights is None:
            raise AttributeError("this processor shares attn1's own K/V (public-weights mode): it has no to_k_ref")
        return self.weights.to_k_ref

    @property
    def to_v_ref(self) -> nn.Linear:
        if self.weights is None:
            raise AttributeError("this processor shares attn1's own K/V (public-weights mode): it has no to_v_ref")
        return self.weights.to_v_ref

    def project_reference(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K~ = G W~_k, V~ = G W~_v, on the features' device."""
        to_k, to_v = self._shared_kv or (self.to_k_ref, self.to_v_ref)
        if to_k.weight.device != features.device:
            # Model CPU offload: the UNet (and W~ with it) waits on the CPU while the ReferenceNet
            # runs on the GPU. Project there, with the weights copied over.
            return tuple(
                F.linear(features.to(layer.weight.dtype), layer.weight.to(features.device),
                         None if layer.bias is None else layer.bias.to(features.device))
                for layer in (to_k, to_v)
            )  # fmt: skip
        return to_k(features.to(to_k.weight.dtype)), to_v(features.to(to_v.weight.dtype))

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
        injection: InjectionContext | None = None, **kwargs,
    ):  # fmt: skip
        ctx = injection
        if ctx is None or not self.inject or not ctx.reference_active or encoder_hidden_states is not None:
            return plain_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if not ctx.subjects_routed:  # every position is background: no reference token is visible
            return plain_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        _check_supported(attn, hidden_states)
        batch, tokens, _ = hidden_states.shape
        grid = grid_of(tokens, ctx.latent_hw)
        routes = ctx.previous_routes(grid, self.index)
        reference = ctx.reference_tokens(self.index, self)
        if routes is None or reference is None or attention_mask is not None:
            return plain_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        ref_keys, ref_values, owner = reference  # [T', d], [T', d], [T'] (the subject of each token)
        first_cond = ctx.cond_rows(batch)

        query = _split_heads(attn.to_q(hidden_states), attn.heads)
        key = _split_heads(attn.to_k(hidden_states), attn.heads)
        value = _split_heads(attn.to_v(hidden_states), attn.heads)

        # Unconditional rows: plain self-attention, no reference tokens.
        parts = []
        if first_cond:
            parts.append(F.scaled_dot_product_attention(query[:first_cond], key[:first_cond], value[:first_cond]))

        # Conditional rows: keys [K, K~_1..K~_N] (tokens inside each subject's mask) with bias
        # gamma + log(strength_i) where the previous map routes the position to subject i, else -inf.
        # Built in the query's dtype: the same values as casting at the end, half the memory.
        cond = batch - first_cond
        ref_k = _split_heads(ref_keys.to(key.dtype)[None].expand(cond, -1, -1), attn.heads)
        ref_v = _split_heads(ref_values.to(value.dtype)[None].expand(cond, -1, -1), attn.heads)
        visible = routes[:, :-1].bool().index_select(1, owner).transpose(1, 2)  # [Bc, hw, T']
        bias_per_token = ctx.reference_log_strength(query.device, query.dtype)[owner]  # log(0) = -inf: off
        bias = F.pad(torch.where(visible, bias_per_token, -math.inf), (tokens, 0))  # 0 on the latent's own keys
        parts.append(
            F.scaled_dot_product_attention(
                query[first_cond:],
                torch.cat([key[first_cond:], ref_k], dim=2),
                torch.cat([value[first_cond:], ref_v], dim=2),
                attn_mask=bias[:, None],
            )
        )
        out = _merge_heads(torch.cat(parts)).to(query.dtype)
        return _finish(attn, out, hidden_states)
