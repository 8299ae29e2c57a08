"""Memory per GPU of a training run at the paper's sizes, planned from the real model on the meta
device (no weights, no GPU): `python -m anystory.training.stage1 --plan --gpus 8 --zero 2`.

What is counted, per process:
- weights: every parameter of the run's models in the dtype the trainer gives it (the frozen SDXL
  UNet and text / image encoders in the mixed-precision dtype, the VAE and every AnyStory part in
  float32: `trainer.cast_frozen`); the trained set is the one the trainer's probe step finds (a
  forward and backward pass, here on the meta device).
- gradients: float32, one per trained parameter.
- optimizer: AdamW's two float32 moments (8 bytes a trained parameter), or 2 bytes with 8-bit
  Adam (bitsandbytes' block-wise quantised moments; its per-block scales are < 0.1% and left out).
- sharding: ZeRO-1 divides the optimizer states by the number of GPUs, ZeRO-2 (= FSDP
  SHARD_GRAD_OP) also the gradients, ZeRO-3 (= FSDP FULL_SHARD) also the weights of the wrapped
  module (UNet + ReferenceNet + QFormers; the text encoders, VAE and image encoder run outside it,
  whole on every GPU).
- activations: the bytes of every tensor autograd saves for the backward pass of one sample (the
  trainer runs each sample of a batch as its own forward and backward, so the batch size does not
  change this), counted with `torch.autograd.graph.saved_tensors_hooks` during the training
  module's forward at the real shapes, on the meta device, with attention counted as the fused
  kernels keep it (q, k, v, output, log-sum-exp: `_FusedAttention`). Tensors saved twice (one storage) are
  counted once; every reference token is taken as inside its mask (the largest case). With
  gradient checkpointing: the same count in a forward with checkpointing on (the re-run units,
  resnets and transformer models, keep only their inputs), plus the largest unit's activations,
  which come back while it is re-run in backward. Mixed
  precision halves the float32 count (autocast saves matmul and conv operands in 16 bits); that
  factor is an assumption, not measured (no GPU here).
- encode pass: the frozen VAE and image encoder run first without gradients; their peak is the
  largest input + output of one layer (counted with forward hooks on the meta device).
Not counted: the CUDA context and allocator slack (add ~1-2 GB), cached latents, DataLoader
workers' memory (host RAM).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

GIB = 1024**3
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SHARDING = ("none", "zero1", "zero2", "zero3")  # zero2 = FSDP SHARD_GRAD_OP, zero3 = FSDP FULL_SHARD


@dataclass
class PlanSettings:
    stage: int = 1
    gpus: int = 1
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    sharding: str = "none"
    adam_8bit: bool = False
    resolution: int = 1024
    reference_size: int = 512
    subjects: int = 2

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.gpus < 1:
            raise ValueError("gpus must be >= 1")
        if self.mixed_precision not in DTYPES:
            raise ValueError(f"mixed_precision must be one of {sorted(DTYPES)}")
        if self.sharding not in SHARDING:
            raise ValueError(f"sharding must be one of {SHARDING}")


@dataclass
class ModelCounts:
    """What the meta pass finds: parameters (count, bytes) and activation bytes, independent of
    the number of GPUs and of the optimizer."""

    params: dict[str, int]  # component -> parameters
    weight_bytes_wrapped: int  # weights inside the module DDP / FSDP wraps
    weight_bytes_outside: int  # text encoders, VAE, image encoder
    trained: int  # trained parameters
    activations: int  # bytes saved for backward, one sample, float32, no checkpointing
    activations_checkpointed: int  # the same with gradient checkpointing (see the module doc)
    encode_peak: int  # the frozen no-grad encode pass
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    settings: PlanSettings
    counts: ModelCounts
    rows: dict[str, float]  # what -> bytes per GPU

    @property
    def total(self) -> float:
        """Weights, gradients and optimizer states all the time; then either one sample's
        activations or the encode pass before it (never both at once)."""
        r = self.rows
        return (
            r["weights"]
            + r["gradients"]
            + r["optimizer states"]
            + max(r["activations (one sample)"], r["encode pass (no grad)"])
        )


def memory_rows(counts: ModelCounts, settings: PlanSettings) -> dict[str, float]:
    """Bytes per GPU, by kind (the arithmetic of the module doc)."""
    n, shard = settings.gpus, SHARDING.index(settings.sharding)
    weights = counts.weight_bytes_wrapped / (n if shard >= 3 else 1) + counts.weight_bytes_outside
    grads = counts.trained * 4 / (n if shard >= 2 else 1)
    optimizer = counts.trained * (2 if settings.adam_8bit else 8) / (n if shard >= 1 else 1)
    activations = counts.activations_checkpointed if settings.gradient_checkpointing else counts.activations
    if settings.mixed_precision != "no":
        activations /= 2
    return {"weights": weights, "gradients": grads, "optimizer states": optimizer,
            "activations (one sample)": activations, "encode pass (no grad)": counts.encode_peak}  # fmt: skip


# -- counting ------------------------------------------------------------------------------------


class SavedBytes:
    """Bytes of the tensors autograd saves while active, each storage once; per unit when asked."""

    def __init__(self):
        self.total = 0
        self.seen: set = set()
        self.bases: list[torch.Tensor] = []
        self.unit_stack: list[str] = []
        self.per_unit: dict[str, int] = {}
        self.unit_inputs: dict[str, int] = {}

    def _key(self, tensor: torch.Tensor):
        if tensor.device.type != "meta":
            return tensor.untyped_storage().data_ptr()
        # meta tensors have no data pointer: a view stands for its base tensor, kept alive (in
        # `self.bases`) so that its id is not reused while counting
        base = tensor._base if tensor._base is not None else tensor
        self.bases.append(base)
        return id(base)

    def pack(self, tensor: torch.Tensor):
        if isinstance(tensor, nn.Parameter) or (tensor.requires_grad and tensor.is_leaf):
            return tensor  # weights are counted as weights
        key = self._key(tensor)
        if key not in self.seen:
            self.seen.add(key)
            base = tensor._base if tensor._base is not None else tensor
            size = base.untyped_storage().nbytes()
            self.total += size
            for unit in self.unit_stack[:1]:  # the outermost unit owns it
                self.per_unit[unit] = self.per_unit.get(unit, 0) + size
        return tensor

    @contextmanager
    def active(self):
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield self


class _FusedAttention(torch.autograd.Function):
    """Scaled dot-product attention as the fused kernels keep it for backward (the GPU's flash /
    memory-efficient attention, and torch's CPU flash kernel): q, k, v, the output and the
    log-sum-exp per query, never the attention matrix. On the meta device torch's SDPA falls back
    to the math form, which would save the matrix; this stands in for the kernel, shapes only."""

    @staticmethod
    def forward(ctx, query, key, value, mask, scale):
        with torch.no_grad():
            out = _SDPA(query, key, value, attn_mask=mask, scale=scale)
        lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
        saved = (query, key, value, out, lse) + ((mask,) if mask is not None else ())
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value = ctx.saved_tensors[:3]
        return torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value), None, None


_SDPA = torch.nn.functional.scaled_dot_product_attention


def _fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    if dropout_p or is_causal or kwargs:
        raise NotImplementedError("the plan models attention without dropout, causal masks or GQA")
    return _FusedAttention.apply(query, key, value, attn_mask, scale)


@contextmanager
def fused_attention():
    """Within: every F.scaled_dot_product_attention is `_FusedAttention` (meta counts only)."""
    torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = _SDPA


def checkpointed_units(*models: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules diffusers re-runs under gradient checkpointing: resnets and transformer models
    of the down, mid and up blocks."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    units = []
    for i, model in enumerate(models):
        for name, module in model.named_modules():
            if isinstance(module, (ResnetBlock2D, Transformer2DModel)) and "_blocks" in name:
                units.append((f"{i}.{name}", module))
    return units


def attribute_units(counter: SavedBytes, units: list[tuple[str, nn.Module]]) -> list:
    """Forward hooks that tell `counter` which unit runs and what its input weighs."""
    handles = []
    for name, module in units:

        def enter(mod, args, kwargs, name=name):
            counter.unit_stack.append(name)
            first = args[0] if args else next(iter(kwargs.values()))
            counter.unit_inputs[name] = counter.unit_inputs.get(name, 0) + first.numel() * first.element_size()

        def leave(mod, args, kwargs, output, name=name):
            counter.unit_stack.pop()

        handles.append(module.register_forward_pre_hook(enter, with_kwargs=True))
        handles.append(module.register_forward_hook(leave, with_kwargs=True, always_call=True))  # also on a raise
    return handles


def activation_bytes(module: nn.Module, item: dict, units: list[tuple[str, nn.Module]]) -> tuple[int, int]:
    """(saved bytes, saved bytes with gradient checkpointing) of one sample's forward.

    Checkpointed: what autograd saves in a forward with checkpointing on (outside the re-run
    units; the units' inputs are among it, as the outputs of the units before), plus the largest
    unit's own saved bytes, which its re-run in backward brings back for a while."""
    counter = SavedBytes()
    handles = attribute_units(counter, units)
    try:
        with counter.active():
            module._sample_loss(item)["loss"]
    finally:
        for handle in handles:
            handle.remove()
    largest = max(counter.per_unit.values(), default=0)
    models = [m for m in (module.unet, module.reference_net) if not m.is_gradient_checkpointing]
    for model in models:
        model.enable_gradient_checkpointing()
    try:
        checkpointed = SavedBytes()
        with checkpointed.active():
            module._sample_loss(item)["loss"]
    finally:
        for model in models:
            model.disable_gradient_checkpointing()
    return counter.total, checkpointed.total + largest


def layer_peak(model: nn.Module, *args, **kwargs) -> int:
    """The largest input + output of one leaf module in a no-grad forward of `model`."""
    peak = [0]

    def size(x) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, (tuple, list)):
            return sum(size(v) for v in x)
        return 0

    def hook(mod, inputs, output):
        peak[0] = max(peak[0], size(inputs) + size(output))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return peak[0]


def training_item(pipe, settings: PlanSettings, device) -> dict:
    """One encoded sample at the settings' shapes (what `InputEncoder` gives the module)."""
    unet, n = pipe.unet, settings.subjects
    scale = pipe.vae_scale_factor
    side, ref_side = settings.resolution // scale, settings.reference_size // scale
    clip = pipe.image_encoder.config
    tokens = (clip.image_size // clip.patch_size) ** 2 + 1
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    empty = lambda *shape: torch.zeros(shape, device=device)  # noqa: E731
    full = lambda *shape: torch.ones(shape, device=device)  # noqa: E731
    # masks of ones: every reference token inside (as the meta count assumes), every subject routed
    masks = full(n, settings.resolution, settings.resolution)
    return {
        "latents": empty(1, 4, side, side), "noise": empty(1, 4, side, side),
        "timestep": torch.zeros(1, dtype=torch.long, device=device),
        "prompt_embeds": empty(1, 77, unet.config.cross_attention_dim), "pooled": empty(1, pooled),
        "time_ids": empty(1, 6), "clip_states": empty(n + 1, tokens, clip.hidden_size), "subject_key": None,
        "reference_input": empty(n, 5, ref_side, ref_side), "reference_masks": full(n, ref_side, ref_side),
        "masks": masks, "drop_clip": False,
    }  # fmt: skip


def count(pipe, settings: PlanSettings, device="meta") -> ModelCounts:
    """Parameters and activations of a stage on `pipe` (an AnyStory pipeline with its parts; for
    stage 2 with a router), at the settings' shapes, on `device` (meta: no memory, no time)."""
    from diffusers import DDPMScheduler

    from .step import TrainingModule, stage_parameters

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    module = TrainingModule(pipe, settings.stage, noise_scheduler)
    for part in pipe.components.values():
        if isinstance(part, nn.Module):
            part.requires_grad_(False)
    candidates = stage_parameters(pipe, settings.stage)
    for param in candidates.values():
        param.requires_grad_(True)
    item = training_item(pipe, settings, device)
    with fused_attention() if device == "meta" else contextlib.nullcontext():
        return _count(pipe, settings, device, module, candidates, item)


def _count(pipe, settings: PlanSettings, device, module, candidates: dict, item: dict) -> ModelCounts:
    from .trainer import cast_frozen

    if device == "meta":
        # which reference tokens lie inside a mask depends on values the meta device has not: take
        # them all (the largest case; a subject rarely fills its whole reference square)
        from torch.fx.experimental import _config as fx_config

        fx_config.meta_nonzero_assume_all_nonzero = True
    # the trainer's probe: only the parameters a backward pass reaches are trained
    module._sample_loss(item)["loss"].backward()
    trained = [p for p in candidates.values() if p.grad is not None]
    for param in candidates.values():
        param.requires_grad_(param.grad is not None)
        param.grad = None

    units = checkpointed_units(pipe.unet, pipe.reference_net)
    activations, checkpointed = activation_bytes(module, item, units)

    cast_frozen(pipe, settings.mixed_precision)
    wrapped = {"unet": pipe.unet, "reference_net": pipe.reference_net, "subject_encoder": pipe.subject_encoder,
               "anystory_attention": pipe.anystory_blocks}  # W~, W', routers: beside the UNet, not in it  # fmt: skip
    outside = {
        k: getattr(pipe, k)
        for k in ("text_encoder", "text_encoder_2", "vae", "image_encoder")
        if getattr(pipe, k, None)
    }
    nbytes = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in {**wrapped, **outside}.items()}

    vae_input = torch.zeros(1, 3, settings.resolution, settings.resolution, device=device, dtype=pipe.vae.dtype)
    encode = layer_peak(pipe.vae.encoder, vae_input)
    clip = pipe.image_encoder
    clip_input = torch.zeros(
        settings.subjects + 1, 3, clip.config.image_size, clip.config.image_size, device=device, dtype=clip.dtype
    )
    encode = max(encode, layer_peak(clip, clip_input))
    return ModelCounts(
        params=params,
        weight_bytes_wrapped=sum(nbytes(m) for m in wrapped.values()),
        weight_bytes_outside=sum(nbytes(m) for m in outside.values()),
        trained=sum(p.numel() for p in trained),
        activations=activations,
        activations_checkpointed=checkpointed,
        encode_peak=encode,
    )


# -- the paper's sizes on the meta device ---------------------------------------------------------


def full_size_pipeline(stage: int):
    """AnyStory on SDXL at the paper's sizes, every tensor on the meta device: the SDXL base UNet,
    VAE and text encoders (CLIP ViT-L, OpenCLIP ViT-bigG), the CLIP ViT-H/14 image encoder, and
    the AnyStory parts of `AnyStoryConfig()` (stage 1 without a router)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )  # fmt: skip

    from ..pipeline import AnyStoryConfig, AnyStoryPipeline
    from ..sdxl_vae import SDXL_VAE_CONFIG
    from ..tiny import SDXL_UNET_CONFIG, tiny_tokenizer

    with init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
        vae = AutoencoderKL.from_config(SDXL_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG_TEXT))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_H_VISION))
    tokenizer = tiny_tokenizer()  # tokenizers hold no weights; the plan never tokenizes
    pipe = AnyStoryPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, scheduler=EulerDiscreteScheduler(), image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(size=224, crop_size=224),
    )  # fmt: skip
    pipe._fingerprint = lambda: "meta"  # a fingerprint samples weight values: there are none
    config = AnyStoryConfig(routing_dim=0) if stage == 1 else AnyStoryConfig()
    with init_empty_weights(include_buffers=True):
        pipe.init_anystory(config)
    return pipe


# Configurations of the public models (stabilityai/stable-diffusion-xl-base-1.0
# text_encoder*/, h94/IP-Adapter models/image_encoder), written out so nothing is downloaded.
CLIP_L_TEXT = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "projection_dim": 768, "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
}  # fmt: skip
CLIP_BIGG_TEXT = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
    "projection_dim": 1280, "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "gelu",
}  # fmt: skip
CLIP_H_VISION = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
    "projection_dim": 1024, "image_size": 224, "patch_size": 14, "hidden_act": "gelu",
}  # fmt: skip


# -- the report ----------------------------------------------------------------------------------


def plan(settings: PlanSettings, counts: ModelCounts | None = None) -> Plan:
    if counts is None:
        counts = count(full_size_pipeline(settings.stage), settings)
    return Plan(settings, counts, memory_rows(counts, settings))


def table(plans: list[Plan], gpu_gib: float | None = None) -> str:
    """A Markdown table, one row per plan."""
    columns = ["stage", "GPUs", "precision", "checkpointing", "sharding", "8-bit Adam", "weights", "grads", "optimizer",
               "activations", "encode", "total GiB"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for p in plans:
        s, r = p.settings, {k: v / GIB for k, v in p.rows.items()}
        total = p.total / GIB
        fits = "" if gpu_gib is None else (" fits" if total <= gpu_gib else " **too big**")
        cells = [s.stage, s.gpus, s.mixed_precision, "on" if s.gradient_checkpointing else "off", s.sharding,
                 "yes" if s.adam_8bit else "no"]  # fmt: skip
        cells += [f"{r[k]:.1f}" for k in ("weights", "gradients", "optimizer states", "activations (one sample)",
                                          "encode pass (no grad)")]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + f" | **{total:.1f}**{fits} |")
    return "\n".join(lines)


def describe(counts: ModelCounts) -> str:
    parts = ", ".join(f"{k} {v / 1e9:.3f} B" for k, v in counts.params.items())
    return (f"parameters: {parts}; trained {counts.trained / 1e9:.3f} B\n"
            f"activations of one sample (float32): {counts.activations / GIB:.1f} GiB, "
            f"{counts.activations_checkpointed / GIB:.1f} GiB with gradient checkpointing")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--plan: memory per GPU at full size (no weights, no GPU)")
    group.add_argument("--plan", action="store_true", help="print the memory plan and exit")
    group.add_argument("--gpus", type=int, default=1)
    group.add_argument("--precision", choices=sorted(DTYPES), default="bf16")
    group.add_argument("--checkpointing", choices=["on", "off", "both"], default="both")
    group.add_argument(
        "--sharding", choices=SHARDING + ("all",), default="all", help="ZeRO stage (FSDP: zero2 / zero3)"
    )
    group.add_argument("--adam-8bit", choices=["on", "off", "both"], default="both")
    group.add_argument("--gpu-memory", type=float, help="GiB per GPU: mark what fits")
    group.add_argument("--resolution", type=int, default=1024)
    group.add_argument("--reference-size", type=int, default=512)
    group.add_argument("--subjects", type=int, default=2)


def wants_plan(argv: list[str] | None) -> bool:
    return "--plan" in (sys.argv[1:] if argv is None else argv)


def plan_command(stage: int, argv: list[str] | None = None) -> str:
    """`stageN --plan ...`: the plan's table for the command line's settings."""
    parser = argparse.ArgumentParser(prog=f"python -m anystory.training.stage{stage} --plan")
    add_arguments(parser)
    return run_plan(stage, parser.parse_args(argv))


def run_plan(stage: int, args: argparse.Namespace) -> str:
    choices = lambda value: [value == "on"] if value != "both" else [False, True]  # noqa: E731
    base = PlanSettings(stage=stage, gpus=args.gpus, mixed_precision=args.precision, resolution=args.resolution,
                        reference_size=args.reference_size, subjects=args.subjects)  # fmt: skip
    counts = count(full_size_pipeline(stage), base)
    shardings = SHARDING if args.sharding == "all" else (args.sharding,)
    if args.gpus == 1:
        shardings = ("none",)  # one GPU: nothing to shard over
    plans = []
    for checkpointing in choices(args.checkpointing):
        for adam_8bit in choices(args.adam_8bit):
            for sharding in shardings:
                settings = PlanSettings(**{**base.__dict__, "gradient_checkpointing": checkpointing,
                                           "sharding": sharding, "adam_8bit": adam_8bit})  # fmt: skip
                plans.append(plan(settings, counts))
    return (
        f"stage {stage}, {args.resolution} px targets, {args.reference_size} px references, {args.subjects} subjects\n"
        + describe(counts)
        + "\n\n"
        + table(plans, args.gpu_memory)
    )
