"""One training forward pass: subjects encoded WITH gradients, the target noised, the UNet run under
an `InjectionContext`, the losses of METHOD.md §4.

The frozen models (VAE, text encoders, CLIP image encoder) run first, without gradients, in
`InputEncoder`; `TrainingModule` (what DDP wraps) holds the parts that train and computes the loss.
InjectionContext serves one set of subjects per UNet call, so each sample of a batch is its own
UNet call (batch 1); the trainer runs forward and backward sample by sample, which also keeps one
sample's graph in memory at a time.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import InjectionContext, transformer_blocks
from ..encoder import capture_reference_features, latent_mask
from ..encoding import SubjectEncoding
from ..router import LayoutRouting, LearnedRouting, routing_loss
from ..weights import adapter_tensors

# Checkpoint-key prefixes of what each stage trains (METHOD.md §4).
STAGE_PARTS = {
    1: ("subject_encoder.subject_qformer.", "reference_net.", ".attn1.to_k_ref.", ".attn1.to_v_ref.", ".attn2.to_k_ip.", ".attn2.to_v_ip."),
    2: ("subject_encoder.routing_qformer.", ".attn2.router."),
}


def stage_parameters(pipe, stage: int) -> dict[str, nn.Parameter]:
    """The parameters stage `stage` trains, by checkpoint key (in checkpoint order)."""
    if stage not in STAGE_PARTS:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    chosen = {}
    for key, tensor in adapter_tensors(pipe):
        if isinstance(tensor, nn.Parameter) and any(part in key for part in STAGE_PARTS[stage]):
            chosen[key] = tensor
    if not chosen:
        raise ValueError(f"this pipeline has nothing for stage {stage} to train (stage 2 needs a router)")
    return chosen


def content_key(*tensors: torch.Tensor, extra: str = "") -> str:
    """A digest of the tensors' values, shapes and dtypes: equal inputs, equal key, whatever row or
    step they came from; any changed value misses."""
    digest = hashlib.sha1(extra.encode())
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


class InputEncoder:
    """The frozen half of a step: VAE latents, prompt embeddings, CLIP states, reference inputs.

    With `cache=True` a row's target latent (targets are never augmented, so it does not change
    between epochs) and the prompt embeddings of each caption are kept. With `cache_subjects=True`
    the CLIP states and reference inputs of a sample's references are kept too, keyed by the
    content of the reference pictures (augmented references rarely repeat, so they mostly miss);
    each encoded sample carries that key as `subject_key` for `TrainingModule`'s cache.
    """

    def __init__(self, pipe, cache: bool = False, cache_subjects: bool = False):
        self.pipe, self.cache, self.cache_subjects = pipe, cache, cache_subjects
        self._rows: dict[int, torch.Tensor] = {}
        self._prompts: dict[str, tuple] = {}
        self._subjects: dict[str, tuple] = {}
        self._null_states: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @torch.no_grad()
    def vae_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode()
        return latents * vae.config.scaling_factor

    @torch.no_grad()
    def clip_states(self, pixels: torch.Tensor) -> torch.Tensor:
        encoder = self.pipe.image_encoder
        return encoder(pixels.to(self.device, encoder.dtype), output_hidden_states=True).hidden_states[-2]

    def null_states(self, like: torch.Tensor) -> torch.Tensor:
        """CLIP states of the all-zero image: the background slot and the CLIP-drop condition."""
        if self._null_states is None:
            self._null_states = self.clip_states(torch.zeros_like(like[:1]))
        return self._null_states

    @torch.no_grad()
    def _target(self, sample: dict) -> tuple:
        key = sample.get("index")
        latents = self._rows.get(key) if self.cache else None
        if latents is None:
            latents = self.vae_latents(sample["pixels"][None])
            if self.cache and key is not None:
                self._rows[key] = latents
        caption = sample["caption"]
        prompt = self._prompts.get(caption) if self.cache else None
        if prompt is None:
            embeds, _, pooled, _ = self.pipe.encode_prompt(caption, device=self.device, do_classifier_free_guidance=False)
            prompt = (embeds, pooled)
            if self.cache:
                self._prompts[caption] = prompt
        embeds, pooled = prompt
        h, w = sample["pixels"].shape[-2:]
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device, dtype=embeds.dtype)  # SDXL micro-conditioning
        return latents, embeds, pooled, time_ids

    @torch.no_grad()
    def _subject_inputs(self, sample: dict) -> tuple[str | None, tuple]:
        """(content key or None, (CLIP states, reference input, reference masks)) of a sample."""
        key = None
        if self.cache_subjects:
            key = content_key(sample["clip_pixels"], sample["reference_pixels"], sample["reference_masks"])
            if key in self._subjects:
                return key, self._subjects[key]
        clip_states = self.clip_states(sample["clip_pixels"])
        ref_latents = self.vae_latents(sample["reference_pixels"])
        ref_masks = torch.stack([latent_mask(m, tuple(ref_latents.shape[-2:])) for m in sample["reference_masks"]])
        ref_masks = ref_masks.to(ref_latents)
        reference_input = torch.cat([ref_latents * ref_masks[:, None], ref_masks[:, None]], dim=1)
        result = (torch.cat([clip_states, self.null_states(sample["clip_pixels"])]), reference_input, ref_masks)
        if key is not None:
            self._subjects[key] = result
        return key, result

    @torch.no_grad()
    def __call__(
        self, samples: list[dict], generator: torch.Generator | list[torch.Generator], timesteps: tuple[int, int]
    ) -> list[dict]:
        """Encode a batch; noise and timesteps come from `generator` (CPU), so they are reproducible:
        one generator for the batch, or one per sample (the trainer: seeded by the sample's stream
        position, so a sample gets the same noise on whichever process and in whichever batch)."""
        generators = generator if isinstance(generator, list) else [generator] * len(samples)
        if len(generators) != len(samples):
            raise ValueError(f"{len(generators)} generators for {len(samples)} samples")
        encoded = []
        for sample, generator in zip(samples, generators):
            latents, embeds, pooled, time_ids = self._target(sample)
            subject_key, (clip_states, reference_input, ref_masks) = self._subject_inputs(sample)
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            timestep = torch.randint(timesteps[0], timesteps[1], (1,), generator=generator).to(self.device)
            encoded.append(
                {
                    "latents": latents, "noise": noise, "timestep": timestep,
                    "prompt_embeds": embeds, "pooled": pooled, "time_ids": time_ids,
                    "clip_states": clip_states, "subject_key": subject_key,
                    "reference_input": reference_input, "reference_masks": ref_masks,
                    "masks": sample["masks"].to(self.device),
                    "drop_clip": bool(sample["drop_clip"]),
                }
            )  # fmt: skip
        return encoded


class TrainingModule(nn.Module):
    """The trainable parts and the loss of one stage; what `accelerator.prepare` wraps.

    stage 1: Subject QFormer, ReferenceNet, W~ (attn1) and W' (attn2) learn from the diffusion
      loss; routes are the oracle: the target's instance masks (`LayoutRouting`).
    stage 2: the encoder is frozen; the Routing QFormer and the routers learn from the diffusion
      loss + routing_weight * L_route, with Gumbel straight-through routes.
    """

    def __init__(self, pipe, stage: int, noise_scheduler, routing_weight: float = 0.1, gumbel_tau: float = 1.0,
                 cache_subjects: bool = False):  # fmt: skip
        super().__init__()
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.unet, self.subject_encoder, self.reference_net = pipe.unet, pipe.subject_encoder, pipe.reference_net
        self.anystory_blocks = pipe.anystory_blocks  # W~, W', routers: outside the UNet, trained here too
        if self.reference_net is None:
            raise ValueError("training needs an AnyStory ReferenceNet (load with adapter='init' or a checkpoint)")
        self.stage, self.routing_weight, self.gumbel_tau = stage, routing_weight, gumbel_tau
        self.noise_scheduler = noise_scheduler
        self._self_attn = [b.attn1.processor for b in transformer_blocks(self.unet)]
        # Stage 2 freezes the Subject QFormer and the ReferenceNet: their outputs for a sample's
        # references (its `subject_key`) are the same every time it comes round, so they are kept.
        self.cache_subjects = cache_subjects and stage == 2
        self._frozen: dict[tuple[str, bool], tuple] = {}

    # -- pieces, also used by the evaluation --

    def encode_subjects(self, item: dict) -> tuple[list[SubjectEncoding], SubjectEncoding]:
        """SubjectEncodings of one sample's subjects (+ background), differentiable where trained."""
        states = item["clip_states"].to(self.subject_encoder.dtype)
        count = states.shape[0] - 1
        key = (item.get("subject_key"), bool(item["drop_clip"]))
        if self.cache_subjects and key[0] is not None and key in self._frozen:
            tokens, features = self._frozen[key]
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.stage == 1):
                tokens = self.subject_encoder.subject_qformer(states)
                if item["drop_clip"]:  # the unconditional (background) tokens in every subject slot
                    tokens = torch.cat([tokens[-1:].expand(count, -1, -1), tokens[-1:]])
                reference_input = item["reference_input"].to(self.reference_net.dtype)
                features = capture_reference_features(self.reference_net, reference_input)
            if self.cache_subjects and key[0] is not None:
                self._frozen[key] = (tokens, features)
        routing = self.subject_encoder.routing_qformer
        embeddings = routing(states)[:, 0] if routing is not None else states.new_zeros(count + 1, 0)

        subjects = []
        for i in range(count):
            per_block = [f[i] if proc.inject else None for proc, f in zip(self._self_attn, features)]
            subjects.append(
                SubjectEncoding(tokens[i], embeddings[i], reference_features=per_block, reference_mask=item["reference_masks"][i])
            )
        return subjects, SubjectEncoding(tokens[count], embeddings[count])

    def run_unet(self, item: dict, ctx: InjectionContext, noisy: torch.Tensor) -> torch.Tensor:
        """One UNet pass under `ctx`, which rides with the call (`cross_attention_kwargs`): under
        gradient checkpointing a block re-run during backward gets the same context with its inputs."""
        ctx.cfg, ctx.num_steps, ctx.step = False, 1, 0
        ctx.begin_pass(tuple(noisy.shape[-2:]))
        added = {"text_embeds": item["pooled"], "time_ids": item["time_ids"]}
        return self.unet(
            noisy, item["timestep"], encoder_hidden_states=item["prompt_embeds"], added_cond_kwargs=added,
            cross_attention_kwargs={"injection": ctx},
        ).sample  # fmt: skip

    def release(self) -> None:
        """Nothing to release: no processor holds a context between calls (the context travels with
        each UNet call). Kept for callers written when the processors held it (trainer.py)."""

    def noisy_latents(self, item: dict) -> torch.Tensor:
        return self.noise_scheduler.add_noise(item["latents"], item["noise"], item["timestep"])

    # -- the loss --

    def forward(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        """Mean losses of the samples (each sample is its own UNet call)."""
        totals: dict[str, torch.Tensor] = {}
        for item in batch:
            for name, value in self._sample_loss(item).items():
                totals[name] = totals.get(name, 0) + value / len(batch)
        return totals

    def _sample_loss(self, item: dict) -> dict[str, torch.Tensor]:
        subjects, background = self.encode_subjects(item)
        masks = item["masks"]
        if self.stage == 1:
            routing = LayoutRouting(masks)
        else:
            embeddings = torch.stack([s.routing_embedding for s in subjects] + [background.routing_embedding])
            routing = LearnedRouting(embeddings, gumbel=True, tau=self.gumbel_tau)
        ctx = InjectionContext(subjects=subjects, background=background, routing=routing)
        noisy = self.noisy_latents(item)
        prediction = self.run_unet(item, ctx, noisy)

        latents, noise = item["latents"], item["noise"]
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, item["timestep"])
        else:
            target = noise
        diffusion = F.mse_loss(prediction.float(), target.float())
        losses = {"diffusion": diffusion}
        if self.stage == 2:
            slots = torch.cat([masks, (1 - masks.sum(0, keepdim=True)).clamp_min(0)])[None]  # background last
            losses["routing"] = routing_loss(routing.logits, slots).float()
            routing.keep_logits = False  # re-runs under gradient checkpointing add none
            losses["loss"] = diffusion + self.routing_weight * losses["routing"]
        else:
            losses["loss"] = diffusion
        return losses
