"""`AnyStoryPipeline`: diffusers' SDXL pipeline with encode-once subjects, routed and injected.

    pipe = AnyStoryPipeline.from_pretrained("path/or/hub-id")
    girl = pipe.encode_subject(Image.open("girl.png"))          # once; girl.save("girl.safetensors")
    out = pipe("a girl and a dog in a park", subjects=[girl, dog], generator=torch.Generator().manual_seed(0))
    out.images[0], out.route_maps[0]                             # image, [N+1, h, w] slot map

The denoising loop is diffusers' own (`StableDiffusionXLPipeline.__call__`); AnyStory acts through
the attention processors installed on the UNet, which get the call's `InjectionContext` through
`cross_attention_kwargs`. One pipeline runs one call at a time: a second call while one runs (from
another thread, or from inside a callback) raises `PipelineBusyError`.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from .attention import (
    AnyStoryBlocks,
    InjectionContext,
    ReferenceAttnProcessor,
    RoutedCrossAttnProcessor,
    transformer_blocks,
)
from .controlnets import (
    CONTROL_ARGUMENTS,
    as_controlnet,
    build_runner,
    call_arguments,
    control_image_argument,
    load_controlnet,
    runner_class,
)
from .encoder import ReferenceNet, SubjectEncoder, latent_mask, prepare_subject, reference_features
from .encoding import SubjectEncoding, inside_tokens
from .loras import adapter_name_for, lora_off, lora_source
from .router import (
    LayoutRouting,
    LearnedRouting,
    NoRouting,
    PromptRouting,
    SubjectRouter,
    grid_of,
    phrase_token_indices,
)
from .weights import (
    PUBLIC_IMAGE_ENCODER,
    PUBLIC_IP_ADAPTER,
    CheckpointError,
    ModelLoadError,
    hub_call,
    ip_adapter_block_keys,
    ip_adapter_resampler,
    load_adapter_weights,
    load_state_dict_file,
    read_adapter_config,
    resolve_file,
    save_adapter,
    split_ip_adapter,
)

DEFAULT_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
ROUTERS = ("learned", "prompt", "layout", "none")
DEFAULT_SCHEDULE = "default"  # the schedule arguments' default: `default_schedules` decides
# What `__call__` passes on to diffusers' SDXL loop: its named parameters. Anything else is refused
# (diffusers' own `**kwargs` would swallow a misspelt or unsupported argument without a word).
SDXL_CALL_ARGUMENTS = frozenset(inspect.signature(StableDiffusionXLPipeline.__call__).parameters) - {
    "self", "prompt", "kwargs",
}  # fmt: skip


class PipelineBusyError(RuntimeError):
    """A call reached a pipeline that is already running one (the message says what to do)."""


def check_call_arguments(given, known) -> None:
    """Refuse keyword arguments the pipeline would not use, naming each (and a close known name)."""
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(
        f"AnyStoryPipeline got keyword argument{'s' if len(unknown) > 1 else ''} it does not use: {', '.join(hints)}. "
        "Every argument must be one of AnyStory's or a parameter of diffusers' StableDiffusionXLPipeline.__call__; "
        "nothing is ignored silently."
    )


def default_schedules(router: str, num_subjects: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(clip_schedule, reference_schedule) when the caller gives none (docs/METHOD.md, "Step
    schedules"): the learned router with two or more subjects starts the reference path at 0.09
    of the steps, as the official release does; everything else runs both paths at every step."""
    reference = (0.09, 1.0) if router == "learned" and num_subjects >= 2 else (0.0, 1.0)
    return (0.0, 1.0), reference


@dataclass
class AnyStoryConfig:
    """Sizes of the new parts. Defaults are the paper's SDXL choices, scaled down for tiny UNets."""

    num_tokens: int = 64  # m, Subject QFormer queries
    routing_dim: int = 1024  # d_r [ours]
    router_dim: int = 256  # d', width of the router's maps [ours]
    router_heads: int = 4
    qformer_depth: int = 4
    qformer_dim_head: int = 64
    max_subjects: int = 4
    reference_size: int = 512  # ReferenceNet input side in pixels

    @classmethod
    def for_models(cls, unet, vae_scale_factor: int) -> AnyStoryConfig:
        text_dim = unet.config.cross_attention_dim
        return cls(
            routing_dim=min(1024, text_dim),
            router_dim=min(256, max(text_dim // 2, 8)),
            reference_size=min(512, unet.config.sample_size * vae_scale_factor),
        )


@dataclass
class AnyStoryPipelineOutput(BaseOutput):
    """images; route_maps: per image a [N+1, h, w] tensor at the latent grid (subjects, then
    background), one-hot for exclusive routers; route_record: per step and site, when asked."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    route_maps: list[torch.Tensor] | None = None
    route_record: list[dict] | None = None


def build_processors(unet, config: AnyStoryConfig, share_reference_kv: bool = False) -> dict:
    """New attn1/attn2 processors for every transformer block, keyed as `unet.attn_processors`.
    Their weights are not registered in the UNet: collect them with `AnyStoryBlocks(processors.values())`.

    W~_k, W~_v start as copies of attn1's K/V (or ARE attn1's, shared, in public-weights mode);
    W'_k starts as a copy of attn2's K and W'_v at zero; routers only when routing_dim > 0.
    """
    names = {id(module): name for name, module in unet.named_modules()}
    processors = dict(unet.attn_processors)
    for index, block in enumerate(transformer_blocks(unet)):
        attn1, attn2 = block.attn1, block.attn2
        shared = (attn1.to_k, attn1.to_v) if share_reference_kv else None
        self_attn = ReferenceAttnProcessor(index, attn1.to_k.out_features, inject=index > 0, shared_kv=shared)
        if not share_reference_kv:
            self_attn.to_k_ref.weight.data.copy_(attn1.to_k.weight.data)
            self_attn.to_v_ref.weight.data.copy_(attn1.to_v.weight.data)
        router = None
        if config.routing_dim:
            router = SubjectRouter(attn2.to_q.in_features, config.routing_dim, config.router_dim, config.router_heads)
        cross_attn = RoutedCrossAttnProcessor(index, attn2.to_k.out_features, attn2.to_k.in_features, router)
        cross_attn.to_k_ip.weight.data.copy_(attn2.to_k.weight.data)
        processors[f"{names[id(attn1)]}.processor"] = self_attn
        processors[f"{names[id(attn2)]}.processor"] = cross_attn
    return processors


def layout_mask(region, size: tuple[int, int]) -> torch.Tensor:
    """A layout entry as a mask: a box (x0, y0, x1, y1) in fractions of the image, or a 2-D mask."""
    values = np.asarray(region, dtype=np.float32)
    if values.shape == (4,):
        height, width = size
        x0, y0, x1, y1 = values.clip(0, 1)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"layout box {tuple(values)} is empty: it needs x0 < x1 and y0 < y1 (fractions)")
        mask = torch.zeros(height, width)
        mask[round(y0 * height) : max(round(y1 * height), round(y0 * height) + 1),
             round(x0 * width) : max(round(x1 * width), round(x0 * width) + 1)] = 1  # fmt: skip
        return mask
    if values.ndim != 2:
        raise ValueError(f"a layout entry must be a box (x0, y0, x1, y1) or a 2-D mask, got shape {values.shape}")
    if values.max(initial=0) > 1:
        values = values / 255.0
    return torch.from_numpy(values)


def default_device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """CUDA with fp16 where present, else CPU with float32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


class AnyStoryPipeline(StableDiffusionXLPipeline):
    _optional_components = StableDiffusionXLPipeline._optional_components + [
        "subject_encoder", "reference_net", "anystory_blocks", "controlnet",
    ]  # fmt: skip
    # The processors' weights run inside the UNet's forward but sit outside its module tree, so no
    # offload hook would bring them: they stay on the execution device (W~ leaves it after encoding).
    _exclude_from_cpu_offload = ["anystory_blocks"]

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        scheduler,
        image_encoder=None,
        feature_extractor=None,
        subject_encoder: SubjectEncoder | None = None,
        reference_net: ReferenceNet | None = None,
        anystory_blocks: AnyStoryBlocks | None = None,
        controlnet=None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
    ):
        super().__init__(
            vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
            image_encoder, feature_extractor, force_zeros_for_empty_prompt, add_watermarker,
        )  # fmt: skip
        self.register_modules(
            subject_encoder=subject_encoder, reference_net=reference_net, anystory_blocks=anystory_blocks
        )
        self.lora_weights: dict[str, float] = {}  # active LoRA adapters (load_lora) and their weights
        self._loaded_controlnets: dict[str, torch.nn.Module] = {}  # by source, for controlnet="id" in calls
        self.register_modules(controlnet=self._controlnet_of(controlnet))
        self.anystory_config: AnyStoryConfig | None = None
        self.mode = ""  # "init" | "checkpoint" | "public"
        self.base_model = ""
        self.encoder_id = ""
        self.image_encoder_source: tuple[str, str | None] | None = None  # None: the base's own
        self.release_encoders_after_use = True  # on CUDA: encoders back to CPU after encoding
        self._background: SubjectEncoding | None = None
        self._busy = threading.Lock()  # held for the whole of one generation or encoding

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        base: str = DEFAULT_BASE,
        adapter: str | None = None,
        *,
        config: AnyStoryConfig | None = None,
        ip_adapter: str | tuple[str, str] = PUBLIC_IP_ADAPTER,
        image_encoder_source: tuple[str, str] = PUBLIC_IMAGE_ENCODER,
        single_file_config: str | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs,
    ) -> AnyStoryPipeline:
        """Load SDXL and add the AnyStory parts.

        base: a hub id, a local diffusers folder, or a single-file SDXL checkpoint (.safetensors;
        `single_file_config` names a diffusers folder or hub id for its component configs).
        adapter:
          None / "public": public-weights mode (METHOD.md §6): IP-Adapter Plus SDXL ViT-H as the
            CLIP path, the base UNet as a weight-sharing ReferenceNet, the prompt router.
          a folder: an AnyStory checkpoint written by `save_adapter` (or by our training).
          "init": freshly initialised AnyStory parts (deterministic): the ReferenceNet copies the
            UNet, W~ copy attn1's K/V, W'_k copies attn2's K, W'_v is zero, QFormers and routers
            are random. The starting point of training; the tests' model.
        Device and dtype: CUDA + fp16 where present (pass dtype=torch.bfloat16 for bf16), else CPU +
        float32. `torch_dtype` is the older name of `dtype` (deprecated, as in diffusers).
        """
        controlnet = kwargs.pop("controlnet", None)
        if torch_dtype is not None:
            if dtype is not None and dtype != torch_dtype:
                raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree: pass dtype only")
            warnings.warn("torch_dtype is deprecated (as in diffusers): pass dtype", FutureWarning, stacklevel=2)
            dtype = torch_dtype
        auto_device, auto_dtype = default_device_and_dtype()
        device = torch.device(device) if device is not None else auto_device
        dtype = dtype or (auto_dtype if device.type == "cuda" else torch.float32)
        base = str(base)
        looks_local = base.startswith((".", "/", "~")) or base.count("/") > 1 or "\\" in base
        if looks_local and not Path(base).expanduser().exists():
            raise ModelLoadError(f"{base} does not exist: pass an SDXL folder, a .safetensors file or a hub id (user/name)")
        base = str(Path(base).expanduser()) if looks_local else base
        if Path(base).is_file():
            pipe = cls._from_single_file(base, single_file_config, dtype, **kwargs)
        elif dtype == torch.float16 and not Path(base).is_dir() and "variant" not in kwargs:
            try:  # half the download where the repo has fp16 files (SDXL base does)
                pipe = hub_call(super().from_pretrained, base, dtype=dtype, variant="fp16", **kwargs)
            except (ValueError, OSError, ModelLoadError):
                pipe = hub_call(super().from_pretrained, base, dtype=dtype, **kwargs)
        else:
            pipe = hub_call(super().from_pretrained, base, dtype=dtype, **kwargs)
        pipe.base_model = base
        pipe.to(device)

        local_only = kwargs.get("local_files_only", False)
        if adapter in (None, "public"):
            pipe._ensure_image_encoder(image_encoder_source, dtype, local_only)
            source = (ip_adapter,) if isinstance(ip_adapter, str) else ip_adapter
            pipe.init_public(load_state_dict_file(resolve_file(*source)), config)
        elif adapter == "init":
            pipe._ensure_image_encoder(image_encoder_source, dtype, local_only)
            pipe.init_anystory(config)
        else:
            adapter_config = read_adapter_config(adapter)
            source = tuple(adapter_config.get("image_encoder_source") or image_encoder_source)
            pipe._ensure_image_encoder(source, dtype, local_only)
            pipe.init_anystory(AnyStoryConfig(**adapter_config["anystory"]), parts=adapter_config["parts"])
            load_adapter_weights(pipe, adapter)
            pipe.mode = "checkpoint"
            pipe.encoder_id = pipe._fingerprint()
        if controlnet is not None:
            pipe.set_controlnet(controlnet, local_files_only=local_only)
        return pipe

    # -- LoRA ------------------------------------------------------------------------------------

    def load_lora(
        self, source: str | Path, weight: float = 1.0, *, adapter_name: str | None = None,
        weight_name: str | None = None, **kwargs,
    ) -> str:  # fmt: skip
        """Load an SDXL LoRA (a .safetensors file, a folder with one, or a hub id; never a pickle)
        with diffusers' `load_lora_weights`, and make it active at `weight` beside the LoRAs loaded
        before. Returns its adapter name (for `set_lora_weight`). Encodings are unaffected."""
        name = adapter_name or adapter_name_for(source, self.lora_weights)
        if name in self.lora_weights:
            raise ValueError(f"a LoRA named {name!r} is loaded already: pass another adapter_name or unload_lora()")
        state, extra = lora_source(source, weight_name)
        self.load_lora_weights(state, adapter_name=name, **{k: v for k, v in extra.items() if v is not None}, **kwargs)
        self.lora_weights[name] = float(weight)
        self.set_adapters(list(self.lora_weights), adapter_weights=list(self.lora_weights.values()))
        return name

    def set_lora_weight(self, adapter_name: str, weight: float) -> None:
        """Change the weight of a loaded LoRA (0 switches it off)."""
        if adapter_name not in self.lora_weights:
            loaded = sorted(self.lora_weights) or "none"
            raise ValueError(f"no LoRA named {adapter_name!r} is loaded (loaded: {loaded})")
        self.lora_weights[adapter_name] = float(weight)
        self.set_adapters(list(self.lora_weights), adapter_weights=list(self.lora_weights.values()))

    def unload_lora(self) -> None:
        """Remove every LoRA: the UNet and text encoders are as loaded again."""
        self.unload_lora_weights()
        self.lora_weights = {}

    def fuse_lora(self, *args, **kwargs):
        """diffusers' `fuse_lora`, refused in public-weights mode: there the UNet's own attn1 K/V
        also encode characters, and fusing would change them under every stored encoding."""
        if self.mode == "public":
            raise ValueError(
                "fuse_lora would write the LoRA into the UNet's own weights, which public-weights mode also uses "
                "to encode characters (their stored encodings would no longer match): use the LoRA unfused (load_lora)"
            )
        return super().fuse_lora(*args, **kwargs)

    # -- ControlNet ------------------------------------------------------------------------------

    def set_controlnet(self, controlnet, **load_kwargs) -> None:
        """The pipeline's own ControlNet (None: none): a diffusers SDXL `ControlNetModel` or
        `ControlNetUnionModel`, a list of them (diffusers' Multi* wrapper), or a hub id, folder or
        .safetensors file of one. It acts on calls that give `control_image`; others run without it."""
        self.register_modules(controlnet=self._controlnet_of(controlnet, **load_kwargs))

    def _controlnet_of(self, value, **load_kwargs) -> torch.nn.Module | None:
        """A ControlNet model for `value`, sources loaded once (in the UNet's dtype, on its device)."""
        if isinstance(value, (list, tuple)):
            return as_controlnet([self._controlnet_of(v, **load_kwargs) for v in value])
        if isinstance(value, (str, Path)):
            key = str(value)
            if key not in self._loaded_controlnets:
                unet = getattr(self, "unet", None)
                dtype = unet.dtype if unet is not None else torch.float32
                net = load_controlnet(key, dtype, **load_kwargs)
                self._loaded_controlnets[key] = net.to(unet.device) if unet is not None else net
            return self._loaded_controlnets[key]
        return as_controlnet(value)

    def _control_plan(self, kwargs: dict) -> torch.nn.Module | None:
        """The ControlNet this call runs (None: the plain SDXL loop), after checking every keyword
        argument against the loop that will take it. Renames `control_image` to that loop's name."""
        given = kwargs.pop("controlnet", None)
        net = self._controlnet_of(given) if given is not None else self.controlnet
        if kwargs.get("control_image") is None:
            kwargs.pop("control_image", None)
            if given is not None:
                raise ValueError("controlnet=... was given without control_image=...: pass the control picture too")
            stray = sorted(CONTROL_ARGUMENTS & set(kwargs))
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} only apply to a generation with a ControlNet and control_image=..."
                )
            check_call_arguments(kwargs, SDXL_CALL_ARGUMENTS)
            return None
        if net is None:
            raise ValueError(
                "control_image=... needs a ControlNet: load the pipeline with controlnet=... "
                "(a ControlNetModel, hub id, folder or .safetensors file), or pass controlnet=... to the call"
            )
        cls = runner_class(net)
        check_call_arguments(kwargs, call_arguments(cls))
        kwargs[control_image_argument(cls)] = kwargs.pop("control_image")
        return net

    @classmethod
    def _from_single_file(cls, path: str, config: str | None, dtype: torch.dtype, **kwargs) -> AnyStoryPipeline:
        if Path(path).suffix != ".safetensors":
            raise CheckpointError(
                f"{path}: only .safetensors single-file checkpoints are loaded (pickled .ckpt files can run code)"
            )
        load = StableDiffusionXLPipeline.from_single_file
        extra = {"config": config} if config else {}
        # A single file never holds the CLIP image encoder: it comes from image_encoder_source.
        kwargs.setdefault("image_encoder", None)
        kwargs.setdefault("feature_extractor", None)
        plain = hub_call(load, path, dtype=dtype, **extra, **kwargs)
        return cls(**plain.components)

    def _ensure_image_encoder(self, source: tuple[str, str | None], dtype, local_files_only: bool) -> None:
        """The CLIP image encoder: the base's own if it has one, else `source` (repo, subfolder)."""
        if self.image_encoder is None:
            repo, subfolder = source
            extra = {"subfolder": subfolder} if subfolder else {}
            encoder = hub_call(
                CLIPVisionModelWithProjection.from_pretrained, repo, dtype=dtype, local_files_only=local_files_only, **extra
            )
            self.register_modules(image_encoder=encoder.to(self.unet.device))
            self.image_encoder_source = source
        if self.feature_extractor is None:  # CLIP's resize/crop at the encoder's input size, CLIP mean/std
            size = self.image_encoder.config.image_size
            self.register_modules(feature_extractor=CLIPImageProcessor(size=size, crop_size=size))

    def init_anystory(self, config: AnyStoryConfig | None = None, seed: int = 0, parts: list[str] | None = None) -> None:
        """Build fresh AnyStory parts from the UNet and image encoder, and install the processors."""
        if self.image_encoder is None or self.feature_extractor is None:
            raise ValueError(
                "AnyStory needs a CLIP image encoder: the base folder has no image_encoder/ and "
                "feature_extractor/ (pass image_encoder=... and feature_extractor=... to from_pretrained)"
            )
        config = config or AnyStoryConfig.for_models(self.unet, self.vae_scale_factor)
        if parts is not None and "router" not in parts:  # a stage-1 checkpoint: no router yet
            config = replace(config, routing_dim=0)
        self.anystory_config = config
        device, dtype = self.unet.device, self.unet.dtype
        clip_dim = self.image_encoder.config.hidden_size
        dim_head = min(config.qformer_dim_head, clip_dim // 4)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            subject_encoder = SubjectEncoder(
                image_embed_dim=clip_dim,
                text_dim=self.unet.config.cross_attention_dim,
                num_tokens=config.num_tokens,
                routing_dim=config.routing_dim,
                depth=config.qformer_depth,
                heads=clip_dim // dim_head,
                dim_head=dim_head,
            )
            processors = build_processors(self.unet, config)
        self.register_modules(
            subject_encoder=subject_encoder.to(device, dtype),
            reference_net=ReferenceNet.from_unet(self.unet).to(device, dtype),
            anystory_blocks=AnyStoryBlocks(processors.values()).to(device, dtype),
        )
        self.unet.set_attn_processor(processors)
        self.mode = "init"
        self._background = None
        self.encoder_id = self._fingerprint()

    def init_public(self, ip_adapter_state: dict[str, torch.Tensor], config: AnyStoryConfig | None = None) -> None:
        """Public-weights mode from an IP-Adapter Plus state dict (original key layout).

        image_proj.* -> the Subject QFormer (diffusers' `IPAdapterPlusImageProjection`, the keys
        renamed by `weights.ip_adapter_resampler`);
        ip_adapter.{k}.to_k_ip / to_v_ip -> W'_k / W'_v of the attn2 that k numbers (odd k, in
        `unet.attn_processors` order). No Routing QFormer, no router weights, no separate
        ReferenceNet: the UNet itself encodes references and attn1's own K/V project them.
        """
        image_proj, ip_weights = split_ip_adapter(ip_adapter_state)
        clip_dim = self.image_encoder.config.hidden_size
        if image_proj["proj_in.weight"].shape[1] != clip_dim:
            raise CheckpointError(
                f"the IP-Adapter resampler takes image features of width {image_proj['proj_in.weight'].shape[1]} "
                f"but the image encoder gives {clip_dim}: IP-Adapter Plus SDXL vit-h needs the ViT-H encoder "
                f"(h94/IP-Adapter models/image_encoder), not sdxl_models/image_encoder (ViT-bigG)"
            )
        resampler_state, sizes = ip_adapter_resampler(image_proj)
        base_config = config or AnyStoryConfig.for_models(self.unet, self.vae_scale_factor)
        self.anystory_config = replace(
            base_config, num_tokens=sizes["num_queries"], routing_dim=0, qformer_depth=sizes["depth"]
        )
        subject_encoder = SubjectEncoder(
            image_embed_dim=clip_dim,
            text_dim=image_proj["proj_out.weight"].shape[0],
            num_tokens=sizes["num_queries"],
            routing_dim=0,
            depth=sizes["depth"],
            heads=sizes["heads"],
            dim_head=sizes["dim_head"],
        )
        try:
            subject_encoder.subject_qformer.load_state_dict(resampler_state)
        except RuntimeError as err:
            raise CheckpointError(f"the IP-Adapter file's resampler does not fit IP-Adapter Plus: {err}") from err

        processors = build_processors(self.unet, self.anystory_config, share_reference_kv=True)
        by_block = {p.index: p for p in processors.values() if isinstance(p, RoutedCrossAttnProcessor)}
        for block, key_id in ip_adapter_block_keys(self.unet).items():
            for name in ("to_k_ip", "to_v_ip"):
                key = f"{key_id}.{name}.weight"
                if key not in ip_weights:
                    raise CheckpointError(f"the IP-Adapter file lacks ip_adapter.{key}")
                target = getattr(by_block[block], name).weight
                if ip_weights[key].shape != target.shape:
                    raise CheckpointError(
                        f"ip_adapter.{key} has shape {tuple(ip_weights[key].shape)}, this UNet needs {tuple(target.shape)}"
                    )
                target.data.copy_(ip_weights[key])
        device, dtype = self.unet.device, self.unet.dtype
        self.register_modules(
            subject_encoder=subject_encoder.to(device, dtype),
            reference_net=None,
            anystory_blocks=AnyStoryBlocks(processors.values()).to(device, dtype),
        )
        self.unet.set_attn_processor(processors)
        self.mode = "public"
        self._background = None
        self.encoder_id = self._fingerprint()

    def anystory_processors(self) -> tuple[list[ReferenceAttnProcessor], list[RoutedCrossAttnProcessor]]:
        """The installed (attn1, attn2) processors, each list in block execution order."""
        blocks = transformer_blocks(self.unet)
        return [b.attn1.processor for b in blocks], [b.attn2.processor for b in blocks]

    def _fingerprint(self) -> str:
        """Identity of the weights that make encodings: a strided sample of every encoder tensor."""
        digest = hashlib.sha256()
        self_attn, _ = self.anystory_processors()
        modules = [("image_encoder", self.image_encoder), ("subject_encoder", self.subject_encoder)]
        modules += [("reference_net", self.reference_net or self.unet)]
        modules += [(f"ref{p.index}", p.weights) for p in self_attn if p.owns_reference_kv]
        for prefix, module in modules:
            for name, tensor in module.state_dict().items():
                flat = tensor.detach().flatten()
                sample = flat[:: max(1, flat.numel() // 64)].float().cpu().numpy()
                digest.update(f"{prefix}.{name}{tuple(tensor.shape)}".encode())
                digest.update(sample.tobytes())
        return digest.hexdigest()[:16]

    # -- encode ----------------------------------------------------------------------------------

    def save_adapter(self, folder: str | Path) -> Path:
        """Write the AnyStory parts as a checkpoint folder (config.json + anystory.safetensors)."""
        return save_adapter(self, folder)

    def encoder_modules(self) -> list[torch.nn.Module]:
        """What only encoding uses: the CLIP image encoder, the QFormers, the ReferenceNet and the
        reference projections W~ of every block (generation reads the K/V they made, stored in
        each SubjectEncoding; an encoding made with `cache_reference_kv=False` projects at every
        step and then needs W~ too, on whatever device it is)."""
        modules = [m for m in (self.image_encoder, self.subject_encoder, self.reference_net) if m is not None]
        self_attn, _ = self.anystory_processors()
        return modules + [p.weights for p in self_attn if isinstance(p, ReferenceAttnProcessor) and p.owns_reference_kv]

    @contextmanager
    def _encoders_ready(self):
        """Encoders on the execution device while encoding; on CUDA, back to CPU afterwards
        (generation never needs them). Under model CPU offload the hooks bring them to the GPU;
        they go back at once too (the ReferenceNet and the QFormers are in no offload chain, so
        they would otherwise stay on the GPU through the next generation)."""
        from accelerate.hooks import CpuOffload

        device = self._execution_device
        modules = self.encoder_modules()
        movable = [m for m in modules if getattr(m, "_hf_hook", None) is None]
        offloaded = [m for m in modules if isinstance(getattr(m, "_hf_hook", None), CpuOffload)]
        for module in movable:
            module.to(device)
        try:
            yield
        finally:
            if device.type == "cuda" and self.release_encoders_after_use:
                for module in movable + offloaded:
                    module.to("cpu")
                torch.cuda.empty_cache()

    @torch.no_grad()
    def _encode_clip(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.image_encoder(pixel_values, output_hidden_states=True).hidden_states[-2]
        tokens, routing = self.subject_encoder(states.to(self.subject_encoder.dtype))
        return tokens[0], routing[0]

    def _clip_pixels(self, image: PIL.Image.Image) -> torch.Tensor:
        pixels = self.feature_extractor(images=image, return_tensors="pt").pixel_values
        return pixels.to(self._execution_device, self.image_encoder.dtype)

    @torch.no_grad()
    def _vae_latent(self, image: PIL.Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        vae = self.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(torch.float32)
        try:
            latent = vae.encode(pixels.to(self._execution_device, vae.dtype)).latent_dist.mode()
        finally:
            if upcast:
                vae.to(torch.float16)
        return latent * vae.config.scaling_factor

    @contextmanager
    def _exclusive(self):
        """Hold the pipeline for one call. diffusers' pipelines keep per-call state (the
        scheduler's steps, the guidance settings), and AnyStory swaps attention processors while
        encoding: two calls at once would mix them, so the second one fails at once instead."""
        if not self._busy.acquire(blocking=False):
            raise PipelineBusyError(
                "this AnyStoryPipeline is busy: another call (a generation or an encoding) is running on it, "
                "from another thread or from inside its own callback. One pipeline runs one call at a time: "
                "wait for it to finish, or give each thread its own pipeline."
            )
        try:
            yield
        finally:
            self._busy.release()

    def encode_subject(
        self, image: PIL.Image.Image, mask=None, *, crop: bool = True, cache_reference_kv: bool = True
    ) -> SubjectEncoding:
        """Encode one subject once: CLIP tokens, routing embedding, reference K/V of every block.

        The mask is `mask`, else the image's alpha channel, else the whole image. `crop=False`
        skips the square crop around the mask (the image is used as it is).
        `cache_reference_kv=False` keeps the raw ReferenceNet states and projects them at every
        step instead (same result; for checking and for training).
        """
        with self._exclusive():
            return self._encode_subject(image, mask, crop=crop, cache_reference_kv=cache_reference_kv)

    @torch.no_grad()
    def _encode_subject(self, image, mask, *, crop: bool, cache_reference_kv: bool) -> SubjectEncoding:
        if self.subject_encoder is None:
            raise ValueError("this pipeline has no subject encoder: load it with an adapter")
        subject = prepare_subject(image, mask, self.anystory_config.reference_size, crop=crop)
        with self._encoders_ready():
            tokens, routing = self._encode_clip(self._clip_pixels(subject.clip_image))
            features, mask_latent = self._reference_features(subject)

        self_attn, _ = self.anystory_processors()
        keys, values, raw = [], [], []
        for proc, feature in zip(self_attn, features):
            feature = feature[0] if proc.inject else None
            if feature is not None:  # only the tokens inside the mask are ever attended to
                grid = grid_of(feature.shape[0], tuple(mask_latent.shape))
                feature = feature.index_select(0, inside_tokens(mask_latent, grid).to(feature.device))
            if feature is not None and cache_reference_kv:
                k, v = proc.project_reference(feature)
                keys.append(k), values.append(v), raw.append(None)
            else:
                keys.append(None), values.append(None), raw.append(feature)
        return SubjectEncoding(
            clip_tokens=tokens,
            routing_embedding=routing,
            reference_keys=keys if cache_reference_kv else [],
            reference_values=values if cache_reference_kv else [],
            reference_features=[] if cache_reference_kv else raw,
            reference_mask=mask_latent.float().cpu(),
            reference_inside_only=True,
            encoder_id=self.encoder_id,
            info={"reference_size": self.anystory_config.reference_size, "mode": self.mode},
        )

    def _reference_features(self, subject) -> tuple[list[torch.Tensor], torch.Tensor]:
        """G^l of every block: the ReferenceNet (latent + mask channel) or, in public-weights
        mode, the UNet itself (latent only) seeing the masked reference at t = 0."""
        net = self.reference_net if self.reference_net is not None else self.unet
        latent = self._vae_latent(subject.reference_image)
        mask_latent = latent_mask(subject.mask, tuple(latent.shape[-2:])).to(latent)
        net_input = latent * mask_latent  # background -> zero latent
        if net.config.in_channels == latent.shape[1] + 1:
            net_input = torch.cat([net_input, mask_latent[None, None]], dim=1)
        with lora_off(net):  # a character's encoding does not depend on the style LoRA of the moment
            return reference_features(net, net_input.to(net.dtype)), mask_latent

    def image_embeddings(self, images: list[PIL.Image.Image]) -> torch.Tensor:
        """Unit-length CLIP image embeddings [B, D] (float32, CPU) of `images`, from the image
        encoder this pipeline already holds (no second copy): what consistency scores compare.
        One batched forward under the pipeline's lock; only the image encoder is moved."""
        if not images:
            return torch.zeros(0, 0)
        with self._exclusive():
            return self._image_embeddings(images)

    @torch.no_grad()
    def _image_embeddings(self, images: list[PIL.Image.Image]) -> torch.Tensor:
        encoder = self.image_encoder
        device = self._execution_device
        movable = getattr(encoder, "_hf_hook", None) is None
        before = encoder.device
        if movable and before != device:
            encoder.to(device)
        try:
            pixels = self.feature_extractor(images=list(images), return_tensors="pt").pixel_values
            embeds = encoder(pixels.to(device, encoder.dtype)).image_embeds.float()
        finally:
            if movable and before != device:
                encoder.to(before)
        return torch.nn.functional.normalize(embeds, dim=-1).cpu()

    def background_encoding(self) -> SubjectEncoding:
        """E_{N+1}, R_{N+1}: the encoding of an all-zero image; also the CFG unconditional."""
        with self._exclusive():
            return self._background_encoding()

    def _background_encoding(self) -> SubjectEncoding:
        if self._background is None:
            with self._encoders_ready():
                pixels = torch.zeros_like(self._clip_pixels(PIL.Image.new("RGB", (8, 8))))
                tokens, routing = self._encode_clip(pixels)
            self._background = SubjectEncoding(tokens, routing, encoder_id=self.encoder_id)
        return self._background

    # -- generate --------------------------------------------------------------------------------

    @property
    def default_router(self) -> str:
        """"learned" when router weights are loaded, else "prompt"."""
        _, cross_attn = self.anystory_processors()
        return "learned" if cross_attn and cross_attn[0].router is not None else "prompt"

    def _routing(
        self, router, subjects, background, layout, prompt, subject_phrases, subject_tokens, prompt_route_start, size
    ):
        if router == "learned":
            if self.default_router != "learned":
                raise ValueError("router='learned' needs trained router weights; use 'prompt', 'layout' or 'none'")
            return LearnedRouting(torch.stack([s.routing_embedding for s in subjects] + [background.routing_embedding]))
        if router == "prompt":
            if subject_tokens is None:
                if subject_phrases is None or len(subject_phrases) != len(subjects):
                    raise ValueError(
                        f"router='prompt' needs subject_phrases: one phrase of the prompt per subject ({len(subjects)})"
                    )
                if not isinstance(prompt, str):
                    raise ValueError("router='prompt' with subject_phrases needs one prompt string")
                subject_tokens = phrase_token_indices(self.tokenizer, prompt, list(subject_phrases))
            return PromptRouting([list(t) for t in subject_tokens], start_step=prompt_route_start)
        if router == "layout":
            if layout is None or len(layout) != len(subjects):
                got = 0 if layout is None else len(layout)
                raise ValueError(f"router='layout' needs one box or mask per subject ({len(subjects)}), got {got}")
            return LayoutRouting(torch.stack([layout_mask(region, size) for region in layout]))
        if router == "none":
            return NoRouting(len(subjects))
        raise ValueError(f"unknown router {router!r}; choose one of {', '.join(ROUTERS)}")

    def _callback_for(self, callback):
        """A step-end callback as the caller wrote it: a plain function gets this pipeline (so a
        call from inside it meets `PipelineBusyError`); diffusers' `PipelineCallback`s get the loop
        that runs (they change its guidance state)."""
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            return callback
        return lambda pipe, step, timestep, tensors: callback(self, step, timestep, tensors)

    def _output_size(self, kwargs: dict, controlnet) -> tuple[int, int]:
        """(height, width) the loop will make: as given, else (with a ControlNet) the control
        picture's, rounded as diffusers rounds it, else the UNet's default."""
        height, width = kwargs.get("height"), kwargs.get("width")
        if controlnet is not None and (height is None or width is None):
            image = kwargs[control_image_argument(runner_class(controlnet))]
            first = image[0] if isinstance(image, (list, tuple)) else image
            default_h, default_w = self.image_processor.get_default_height_width(first)
            height, width = height or default_h, width or default_w
        default = self.default_sample_size * self.vae_scale_factor
        return height or default, width or default

    def _check_subjects(self, subjects, device, dtype) -> list[SubjectEncoding]:
        subjects = [
            s if isinstance(s, SubjectEncoding) else self._encode_subject(s, None, crop=True, cache_reference_kv=True)
            for s in subjects
        ]
        limit = self.anystory_config.max_subjects if self.anystory_config else 0
        if len(subjects) > limit:
            raise ValueError(f"{len(subjects)} subjects given; this pipeline takes at most {limit}")
        for i, subject in enumerate(subjects):
            if subject.encoder_id != self.encoder_id:
                raise ValueError(
                    f"subject {i} was encoded by other weights ({subject.encoder_id or 'unknown'}, "
                    f"this pipeline is {self.encoder_id}): encode it again"
                )
        return [s.to(device, dtype) for s in subjects]

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        subjects=(),
        *,
        router: str | None = None,
        layout=None,
        subject_phrases: list[str] | None = None,
        subject_tokens: list[list[int]] | None = None,
        prompt_route_start: float = 0.2,
        subject_scales: list[float] | None = None,
        clip_scale: float = 1.0,
        reference_bias: float = 0.0,
        clip_schedule: tuple[float, float] | None | str = DEFAULT_SCHEDULE,
        reference_schedule: tuple[float, float] | None | str = DEFAULT_SCHEDULE,
        return_route_record: bool = False,
        **kwargs,
    ) -> AnyStoryPipelineOutput:
        """Generate with the subjects routed and injected. Every SDXL argument passes through;
        any other keyword argument is a TypeError that names it (never silently ignored).

        router: "learned" (trained router weights) | "prompt" (each subject's words in the prompt:
          `subject_phrases`, or token positions `subject_tokens`; routes from step
          `prompt_route_start` x steps on) | "layout" (`layout`: per subject a box
          (x0, y0, x1, y1) in fractions of the image, or a mask [H, W]) | "none" (every subject
          everywhere). Default: "learned" if the weights have a router, else "prompt".
        subject_scales: per subject strength (CLIP path scale; log-bias of its reference tokens).
        clip_scale: eta. reference_bias: gamma. *_schedule: (start, end) fractions of the steps
        in which each path is on (step i is on when round(start * n) <= i < round(end * n));
        None switches a path off; by default `default_schedules(router, len(subjects))`.
        """
        kwargs = dict(kwargs)
        controlnet = self._control_plan(kwargs)
        with self._exclusive():
            return self._generate(
                prompt, list(subjects), router, layout, subject_phrases, subject_tokens, prompt_route_start,
                subject_scales, clip_scale, reference_bias, clip_schedule, reference_schedule, return_route_record,
                kwargs, controlnet,
            )  # fmt: skip

    def _generate(
        self, prompt, subjects, router, layout, subject_phrases, subject_tokens, prompt_route_start,
        subject_scales, clip_scale, reference_bias, clip_schedule, reference_schedule, return_route_record, kwargs,
        controlnet=None,
    ) -> AnyStoryPipelineOutput:  # fmt: skip
        kwargs["return_dict"] = True
        device, dtype = self._execution_device, self.unet.dtype  # each walks every module: once per call
        subjects = self._check_subjects(subjects, device, dtype)
        # The loop that runs: diffusers' SDXL loop (this pipeline), or its ControlNet loop over
        # the same components; either way AnyStory acts only through the UNet's processors.
        runner = self if controlnet is None else build_runner(self, controlnet)
        if runner is not self and getattr(controlnet, "_hf_hook", None) is None:
            controlnet.to(device)

        def loop(**call_kwargs):
            if runner is self:
                return super(AnyStoryPipeline, self).__call__(prompt, **call_kwargs)
            try:
                return runner(prompt, **call_kwargs)
            finally:
                self.maybe_free_model_hooks()  # the runner holds no hooks of its own: re-arm ours

        if not subjects:
            if runner is not self and "callback_on_step_end" in kwargs:
                kwargs["callback_on_step_end"] = self._callback_for(kwargs["callback_on_step_end"])
            return AnyStoryPipelineOutput(images=loop(**kwargs).images)
        background = self._background_encoding().to(device, dtype)

        router = router or self.default_router
        default_clip, default_reference = default_schedules(router, len(subjects))
        steps = kwargs.get("num_inference_steps", 50)
        size = self._output_size(kwargs, controlnet)
        routing = self._routing(
            router, subjects, background, layout, prompt, subject_phrases, subject_tokens,
            round(prompt_route_start * steps), size,
        )  # fmt: skip
        ctx = InjectionContext(
            subjects=subjects,
            background=background,
            routing=routing,
            clip_scale=clip_scale,
            reference_bias=reference_bias,
            subject_scales=subject_scales,
            clip_schedule=default_clip if clip_schedule == DEFAULT_SCHEDULE else clip_schedule,
            reference_schedule=default_reference if reference_schedule == DEFAULT_SCHEDULE else reference_schedule,
            record_steps=return_route_record,
        )

        user_callback = kwargs.pop("callback_on_step_end", None)
        if isinstance(user_callback, (PipelineCallback, MultiPipelineCallbacks)):
            kwargs["callback_on_step_end_tensor_inputs"] = user_callback.tensor_inputs

        callback = self._callback_for(user_callback) if user_callback else None

        def on_step_end(pipe, step, timestep, tensors):
            ctx.step = step + 1
            return callback(pipe, step, timestep, tensors) if callback else {}

        def before_unet(module, args, unet_kwargs):
            sample = args[0] if args else unet_kwargs["sample"]
            ctx.cfg = runner.do_classifier_free_guidance
            ctx.num_steps = runner._num_timesteps
            ctx.begin_pass(tuple(sample.shape[-2:]))

        # The context rides with the call (diffusers hands cross_attention_kwargs to every
        # attention processor); the pre-hook tells it where each UNet pass starts.
        kwargs["cross_attention_kwargs"] = {**(kwargs.get("cross_attention_kwargs") or {}), "injection": ctx}
        hook = self.unet.register_forward_pre_hook(before_unet, with_kwargs=True)
        try:
            output = loop(callback_on_step_end=on_step_end, **kwargs)
        finally:
            hook.remove()

        return AnyStoryPipelineOutput(
            images=output.images,
            route_maps=list(ctx.route_maps()),
            route_record=ctx.record if return_route_record else None,
        )
