"""Route step: where each subject goes in the latent (METHOD.md §2).

Every router here answers one question at each cross-attention site l: for each latent position,
which of the N+1 slots (N subjects, then the background) owns it. The answer is the site's routes
sigma(M^l) [batch, N+1, h*w]: one-hot over slots for exclusive routers (learned, layout, prompt),
all subjects everywhere for `NoRouting` (the blending baseline).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SubjectRouter(nn.Module):
    """The decoupled instance-aware router of one attn2 site.

    coarse map C = (R A_r)(Z A_z)^T / sqrt(d')  ->  masked cross-attention of the N+1 routing
    queries over the latent, each restricted to the positions its coarse map wins, + FFN  ->
    refined logits M = (R' B_r)(Z B_z)^T / sqrt(d'), shape [batch, N+1, h*w].
    """

    def __init__(self, hidden_dim: int, routing_dim: int, router_dim: int = 256, heads: int = 4):
        super().__init__()
        if router_dim % heads:
            raise ValueError(f"router_dim {router_dim} is not divisible by heads {heads}")
        self.router_dim, self.heads = router_dim, heads
        self.coarse_r = nn.Linear(routing_dim, router_dim)
        self.coarse_z = nn.Linear(hidden_dim, router_dim)
        self.refine_norm = nn.LayerNorm(router_dim)
        self.refine_q = nn.Linear(router_dim, router_dim, bias=False)
        self.refine_k = nn.Linear(router_dim, router_dim, bias=False)
        self.refine_v = nn.Linear(router_dim, router_dim, bias=False)
        self.refine_out = nn.Linear(router_dim, router_dim)
        self.ffn = nn.Sequential(
            nn.LayerNorm(router_dim),
            nn.Linear(router_dim, 4 * router_dim),
            nn.GELU(),
            nn.Linear(4 * router_dim, router_dim),
        )
        self.fine_r = nn.Linear(router_dim, router_dim)
        self.fine_z = nn.Linear(hidden_dim, router_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def prepare(self, routing_embeddings: torch.Tensor, dtype: torch.dtype) -> tuple:
        """What does not depend on the latent, made once per generation: R A_r, the refine queries,
        and the latent-side projections fused (Z A_z with Z B_z, K with V: one matmul each)."""
        queries = self.coarse_r(routing_embeddings.to(dtype))
        latent_weight = torch.cat([self.coarse_z.weight, self.fine_z.weight])
        latent_bias = torch.cat([self.coarse_z.bias, self.fine_z.bias])
        key_value_weight = torch.cat([self.refine_k.weight, self.refine_v.weight])
        return queries, self._heads(self.refine_q(self.refine_norm(queries))), latent_weight, latent_bias, key_value_weight

    def forward(self, latent: torch.Tensor, routing_embeddings: torch.Tensor, prepared: tuple | None = None) -> torch.Tensor:
        """latent [B, hw, hidden], routing_embeddings [B or 1, N+1, d_r] -> logits [B, N+1, hw].

        `prepared`: `self.prepare(routing_embeddings, latent.dtype)`, made once per generation.
        """
        batch = latent.shape[0]
        queries, refine_queries, latent_weight, latent_bias, key_value_weight = (
            prepared if prepared is not None else self.prepare(routing_embeddings, latent.dtype)
        )
        queries = queries.expand(batch, -1, -1)
        keys, fine_keys = F.linear(latent, latent_weight, latent_bias).split(self.router_dim, dim=-1)
        coarse = queries @ keys.transpose(1, 2) / math.sqrt(self.router_dim)

        # Each query sees only the positions where its coarse map wins; an empty region sees all.
        region = F.one_hot(coarse.argmax(dim=1), coarse.shape[1]).transpose(1, 2).bool()
        region = region | ~region.any(dim=2, keepdim=True)
        refine_keys, refine_values = F.linear(keys, key_value_weight).split(self.router_dim, dim=-1)
        attended = F.scaled_dot_product_attention(
            refine_queries.expand(batch, -1, -1, -1), self._heads(refine_keys), self._heads(refine_values), attn_mask=region[:, None]
        )
        refined = queries + self.refine_out(attended.transpose(1, 2).reshape(queries.shape))
        refined = refined + self.ffn(refined)

        return self.fine_r(refined) @ fine_keys.transpose(1, 2) / math.sqrt(self.router_dim)


def hard_routes(logits: torch.Tensor) -> torch.Tensor:
    """One-hot argmax over the slot axis (dim 1): each position belongs to exactly one slot."""
    return F.one_hot(logits.argmax(dim=1), logits.shape[1]).movedim(-1, 1).to(logits.dtype)


def gumbel_routes(logits: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-softmax with the straight-through estimator: hard one-hot forward, soft gradient."""
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    exponential = (-torch.log(uniform.clamp_min(1e-9))).clamp_min(1e-9)
    gumbel = -torch.log(exponential)
    soft = ((logits + gumbel) / tau).softmax(dim=1)
    hard = F.one_hot(soft.argmax(dim=1), logits.shape[1]).movedim(-1, 1).to(soft.dtype)
    return hard - soft.detach() + soft


def resize_routes(routes: torch.Tensor, src: tuple[int, int], dst: tuple[int, int], exclusive: bool) -> torch.Tensor:
    """Routes [B, S, h*w] from grid `src` to grid `dst`: area-resize, then argmax (or threshold)."""
    if src == dst:
        return routes
    b, s, _ = routes.shape
    resized = F.adaptive_avg_pool2d(routes.float().view(b, s, *src), dst).view(b, s, -1)
    if exclusive:
        return hard_routes(resized).to(routes.dtype)
    return (resized > 0.5).to(routes.dtype)


def grid_of(tokens: int, full: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of an attention layer with `tokens` positions, in a UNet whose top grid is `full`.

    Each SDXL down-sampler halves a side rounding up (stride-2 conv with padding 1).
    """
    h, w = full
    while h * w > tokens:
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != tokens:
        raise ValueError(f"{tokens} tokens do not form a grid of a {full[0]}x{full[1]} latent")
    return h, w


# -- routing strategies: one object per generation, asked at every attn2 site -------------------


class LearnedRouting:
    """The trained router: each site's SubjectRouter on the routing embeddings R_1..R_{N+1}."""

    exclusive = True

    def __init__(self, routing_embeddings: torch.Tensor, gumbel: bool = False, tau: float = 1.0):
        self.routing_embeddings = routing_embeddings[None]  # [1, N+1, d_r]
        self.gumbel, self.tau = gumbel, tau
        self.logits: list[tuple[int, torch.Tensor, tuple[int, int]]] = []  # kept for the routing loss
        # False once the loss has them: a block that gradient checkpointing re-runs in backward
        # would otherwise add its logits again and keep the re-run's graph alive to the step's end
        self.keep_logits = True
        self._prepared: dict[int, tuple] = {}  # per site, inference only

    def routes(self, site, latent: torch.Tensor, grid: tuple[int, int], ctx=None) -> torch.Tensor:
        if site.router is None:
            raise ValueError("router='learned' needs a checkpoint with trained router weights")
        if torch.is_grad_enabled():  # training: the router's weights change between calls
            logits = site.router(latent, self.routing_embeddings)
        else:
            if site.index not in self._prepared:
                self._prepared[site.index] = site.router.prepare(self.routing_embeddings, latent.dtype)
            logits = site.router(latent, self.routing_embeddings, self._prepared[site.index])
        if self.gumbel:
            if self.keep_logits:
                self.logits.append((site.index, logits, grid))
            return gumbel_routes(logits, self.tau)
        return hard_routes(logits)


class LayoutRouting:
    """Regions given by the caller: one mask per subject [N, H, W]; background where none claims."""

    exclusive = True

    def __init__(self, masks: torch.Tensor):
        masks = masks.float()
        if masks.ndim != 3:
            raise ValueError(f"layout masks must be [subjects, height, width], got {tuple(masks.shape)}")
        # Background votes where no subject region reaches half coverage.
        background = (masks.amax(dim=0, keepdim=True) < 0.5).float()
        self.slots = torch.cat([masks, background])[None]  # [1, N+1, H, W]
        self._routes: dict[tuple, torch.Tensor] = {}  # per grid, device and dtype: one copy each

    def routes(self, site, latent: torch.Tensor, grid: tuple[int, int], ctx=None) -> torch.Tensor:
        key = (grid, latent.device, latent.dtype)
        if key not in self._routes:
            area = F.adaptive_avg_pool2d(self.slots, grid).flatten(2)
            self._routes[key] = hard_routes(area).to(latent.device, latent.dtype)
        return self._routes[key].expand(latent.shape[0], -1, -1)


class PromptRouting:
    """Each subject owns the latent positions where its words in the prompt attend most.

    Every attn2 site reports the text attention of each subject's tokens (softmax over the whole
    prompt, mean over heads); the maps accumulate over layers and steps at the latent grid. From
    `start_step` on, a position goes to the subject with the highest smoothed, max-normalised map
    if that reaches `threshold`, else to the background. Before `start_step` the layout has not
    formed yet, so every position is background: subjects are not injected at all then (rather
    than everywhere, which would blend them while the composition is decided).
    """

    exclusive = True

    def __init__(self, token_indices: list[list[int]], start_step: int = 5, threshold: float = 0.3):
        if any(not indices for indices in token_indices):
            raise ValueError("every subject needs at least one prompt token for router='prompt'")
        self.token_indices = token_indices
        self.start_step, self.threshold = start_step, threshold
        self.attention: torch.Tensor | None = None  # [Bc, N, H, W] accumulated at the latent grid
        self._routes: dict[tuple[int, int], torch.Tensor] = {}
        self._token_tensors: dict = {}  # per device: the indices as tensors (a Python list index would copy each call)

    def observe(self, query, key, scale: float, grid: tuple[int, int], ctx) -> None:
        probs = (query @ key.transpose(-1, -2) * scale).softmax(dim=-1).mean(dim=1)  # [Bc, hw, T]
        if probs.device not in self._token_tensors:
            self._token_tensors[probs.device] = [torch.tensor(idx, device=probs.device) for idx in self.token_indices]
        indices = self._token_tensors[probs.device]
        per_subject = torch.stack([probs.index_select(-1, idx).sum(-1) for idx in indices], dim=1)
        b, n, _ = per_subject.shape
        at_latent = F.adaptive_avg_pool2d(per_subject.float().view(b, n, *grid), ctx.latent_hw)
        self.attention = at_latent if self.attention is None else self.attention + at_latent
        self._routes.clear()

    def routes_subjects(self, ctx) -> bool:
        """Whether any position can go to a subject at this step (known on the host)."""
        return self.attention is not None and ctx.step >= self.start_step

    def routes(self, site, latent: torch.Tensor, grid: tuple[int, int], ctx=None) -> torch.Tensor:
        batch, tokens = latent.shape[0], latent.shape[1]
        slots = len(self.token_indices) + 1
        if not self.routes_subjects(ctx):
            background = latent.new_zeros(batch, slots, tokens)
            background[:, -1] = 1
            return background
        if grid not in self._routes:
            smooth = F.avg_pool2d(self.attention, 3, stride=1, padding=1, count_include_pad=False)
            normalised = smooth / smooth.flatten(2).amax(-1)[..., None, None].clamp_min(1e-12)
            at_grid = F.adaptive_avg_pool2d(normalised, grid).flatten(2)  # [Bc, N, hw]
            best, owner = at_grid.max(dim=1)
            owner = torch.where(best >= self.threshold, owner, slots - 1)
            self._routes[grid] = F.one_hot(owner, slots).movedim(-1, 1)
        return self._routes[grid].to(latent.dtype)


def phrase_token_indices(tokenizer, prompt: str, phrases: list[str]) -> list[list[int]]:
    """Positions of each phrase's tokens in the tokenized prompt (BOS at 0), for PromptRouting."""
    prompt_ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    found = []
    for i, phrase in enumerate(phrases):
        ids = tokenizer(phrase, add_special_tokens=False).input_ids
        start = next(
            (p for p in range(1, len(prompt_ids) - len(ids) + 1) if ids and prompt_ids[p : p + len(ids)] == ids), None
        )
        if start is None:
            raise ValueError(
                f"subject {i}'s words {phrase!r} are not in the prompt (within its first "
                f"{tokenizer.model_max_length - 2} tokens): router='prompt' needs them there"
            )
        found.append(list(range(start, start + len(ids))))
    return found


class NoRouting:
    """Every subject everywhere, no background slot: multi-IP-Adapter style, identities blend."""

    exclusive = False

    def __init__(self, num_subjects: int):
        self.num_subjects = num_subjects

    def routes(self, site, latent: torch.Tensor, grid: tuple[int, int], ctx=None) -> torch.Tensor:
        routes = latent.new_ones(latent.shape[0], self.num_subjects + 1, latent.shape[1])
        routes[:, -1] = 0
        return routes


def routing_loss(
    logits: list[tuple[int, torch.Tensor, tuple[int, int]]], target_masks: torch.Tensor
) -> torch.Tensor:
    """L_route, lambda outside: for each site, (softmax(M^l) - M^gt)^2 averaged over images, slots
    AND positions, then averaged over sites. The paper's ||.||^2 sums over positions: this mean is
    it divided by the site's h*w, so lambda = 0.1 here is lambda = 0.1 / (h*w) there
    (docs/METHOD.md, "The routing loss's weight").

    `target_masks` [B, N+1, H, W]: each instance's whole mask in the target image, background last.
    """
    if not logits:
        raise ValueError("no router logits were recorded: was the routing run in training mode?")
    losses = []
    for _, site_logits, grid in logits:
        target = F.adaptive_avg_pool2d(target_masks.float(), grid).flatten(2).to(site_logits.dtype)
        losses.append((site_logits.softmax(dim=1) - target).pow(2).mean())
    return torch.stack(losses).mean()
