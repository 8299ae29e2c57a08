"""Evaluation: routing IoU on held-out scenes; CLIP-T / CLIP-I / DINO similarity of generations.

    python -m anystory.training.evaluate routing --base BASE --adapter CKPT --data HELDOUT --resolution 1024
    python -m anystory.training.evaluate similarity --base BASE --adapter CKPT --data HELDOUT \\
        --clip-model openai/clip-vit-large-patch14 --dino-model facebook/dinov2-base

Routing IoU: each held-out target is VAE-encoded, noised at timestep t (fixed noise per scene) and
run through the UNet once with the learned router (hard argmax routes). Per subject, IoU of its
route against its instance mask, background excluded, averaged over (scene, subject) pairs; the
ground truth at a grid is the area average of the masks, argmax over the N+1 slots (as
LayoutRouting makes oracle routes). Reported:
  map_iou         the majority over sites at the finest site grid (the route map at the
                  resolution the routers work at)
  site_iou        every cross-attention site's own route at its own grid, averaged over sites
                  (what injection uses); `by_site` has each site's figure
  latent_iou      the majority map resized to the latent grid against the masks there (the
                  pipeline's route_maps); `latent_ceiling` is the same for the oracle routes of the
                  site grids: site grids are coarser than the latent, so even a perfect router
                  scores below 1 there
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..attention import InjectionContext
from ..router import LearnedRouting, hard_routes
from .data import ManifestDataset
from .step import InputEncoder, TrainingModule

DEFAULT_TIMESTEPS = (200, 400, 600)


def slot_masks(masks: torch.Tensor) -> torch.Tensor:
    """Instance masks [N, H, W] -> slots [N+1, H, W], the background last."""
    return torch.cat([masks, (1 - masks.sum(0, keepdim=True)).clamp_min(0)])


def oracle_routes(slots: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """One-hot [N+1, h, w]: area average at the grid, argmax over slots."""
    return hard_routes(F.adaptive_avg_pool2d(slots[None].float(), grid))[0]


def subject_ious(pred: torch.Tensor, truth: torch.Tensor) -> list[float]:
    """IoU per subject slot (background excluded) of one-hot maps [N+1, h, w]; a subject absent
    from both maps is skipped (it vanished at this grid)."""
    ious = []
    for i in range(pred.shape[0] - 1):
        p, t = pred[i].bool(), truth[i].bool()
        union = (p | t).sum().item()
        if union:
            ious.append((p & t).sum().item() / union)
    return ious


def _majority(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    votes = sum(F.adaptive_avg_pool2d(m[None].float(), size)[0] for m in maps)
    return hard_routes(votes[None])[0]


@dataclass
class RoutingReport:
    timesteps: list[int]
    map_iou: dict[int, float] = field(default_factory=dict)
    site_iou: dict[int, float] = field(default_factory=dict)
    by_site: dict[int, list[float]] = field(default_factory=dict)
    latent_iou: dict[int, float] = field(default_factory=dict)
    latent_ceiling: dict[int, float] = field(default_factory=dict)
    scenes: int = 0

    def table(self) -> str:
        lines = [
            "| t | map IoU (router grid) | mean site IoU | latent-grid IoU | latent-grid ceiling |",
            "|---|---|---|---|---|",
        ]
        for t in self.timesteps:
            lines.append(
                f"| {t} | {self.map_iou[t]:.3f} | {self.site_iou[t]:.3f} | {self.latent_iou[t]:.3f} | {self.latent_ceiling[t]:.3f} |"
            )
        return "\n".join(lines)


@torch.no_grad()
def routing_iou(
    pipe,
    dataset: ManifestDataset,
    timesteps=DEFAULT_TIMESTEPS,
    seed: int = 0,
    max_scenes: int | None = None,
    noise_scheduler=None,
) -> RoutingReport:
    """Routing IoU of the pipeline's learned router on `dataset` (no augmentation) at each t."""
    from diffusers import DDPMScheduler

    _, cross_attn = pipe.anystory_processors()
    if not cross_attn or cross_attn[0].router is None:
        raise ValueError("routing IoU needs a pipeline with router weights (a stage-2 checkpoint or adapter='init')")
    noise_scheduler = noise_scheduler or DDPMScheduler.from_config(pipe.scheduler.config)
    module = TrainingModule(pipe, 2, noise_scheduler)
    encoder = InputEncoder(pipe)
    timesteps = [int(t) for t in timesteps]
    names = ("map", "site", "latent", "ceiling")
    scores = {name: {t: [] for t in timesteps} for name in names}
    per_site: dict[int, list[list[float]]] = {t: [] for t in timesteps}
    count = len(dataset) if max_scenes is None else min(max_scenes, len(dataset))
    for index in range(count):
        sample = dataset[(index, 0)]
        sample["drop_clip"] = False
        (item,) = encoder([sample], torch.Generator().manual_seed(seed * 100003 + index), (0, 1))
        subjects, background = module.encode_subjects(item)
        embeddings = torch.stack([s.routing_embedding for s in subjects] + [background.routing_embedding])
        slots = slot_masks(item["masks"]).cpu()
        latent_hw = tuple(item["latents"].shape[-2:])
        truth = oracle_routes(slots, latent_hw)
        for t in timesteps:
            item["timestep"] = torch.tensor([t], device=item["latents"].device)
            ctx = InjectionContext(subjects=subjects, background=background, routing=LearnedRouting(embeddings), record_steps=True)
            module.run_unet(item, ctx, module.noisy_latents(item))
            site_maps, oracle_maps, sites = [], [], []
            for entry in ctx.record:
                pred = entry["gates"][0]
                oracle = oracle_routes(slots, entry["grid"])
                ious = subject_ious(pred, oracle)
                scores["site"][t] += ious
                sites.append(float(np.mean(ious)) if ious else float("nan"))
                site_maps.append(pred)
                oracle_maps.append(oracle)
            per_site[t].append(sites)
            finest = max((m.shape[-2:] for m in site_maps), key=lambda hw: hw[0] * hw[1])
            scores["map"][t] += subject_ious(_majority(site_maps, tuple(finest)), oracle_routes(slots, tuple(finest)))
            scores["latent"][t] += subject_ious(_majority(site_maps, latent_hw), truth)
            scores["ceiling"][t] += subject_ious(_majority(oracle_maps, latent_hw), truth)
    mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
    return RoutingReport(
        timesteps=timesteps,
        map_iou={t: mean(scores["map"][t]) for t in timesteps},
        site_iou={t: mean(scores["site"][t]) for t in timesteps},
        by_site={t: np.nanmean(np.array(per_site[t]), axis=0).round(4).tolist() for t in timesteps},
        latent_iou={t: mean(scores["latent"][t]) for t in timesteps},
        latent_ceiling={t: mean(scores["ceiling"][t]) for t in timesteps},
        scenes=count,
    )


@torch.no_grad()
def diffusion_loss(
    pipe, dataset: ManifestDataset, stage: int = 1, timesteps=(100, 300, 500, 700, 900), seed: int = 0,
    max_scenes: int | None = None, noise_scheduler=None,
) -> float:
    """The training loss of `stage` without its randomness: every scene at every t with a fixed
    noise, no augmentation or CLIP drop (stage 1: oracle routes; stage 2: hard learned routes and
    the diffusion term only). For comparing checkpoints; a training log is too noisy for that."""
    from diffusers import DDPMScheduler

    noise_scheduler = noise_scheduler or DDPMScheduler.from_config(pipe.scheduler.config)
    module = TrainingModule(pipe, stage, noise_scheduler)
    encoder = InputEncoder(pipe)
    losses = []
    count = len(dataset) if max_scenes is None else min(max_scenes, len(dataset))
    for index in range(count):
        sample = dataset[(index, 0)]
        sample["drop_clip"] = False
        (item,) = encoder([sample], torch.Generator().manual_seed(seed * 100003 + index), (0, 1))
        for t in timesteps:
            item["timestep"] = torch.tensor([int(t)], device=item["latents"].device)
            torch.manual_seed(seed * 100003 + index)  # the same Gumbel draw for every checkpoint
            losses.append(module([item])["diffusion"].item())
    return float(np.mean(losses))


# -- similarity of generations -------------------------------------------------------------------


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten()[None], b.float().flatten()[None]).item()


def _crop_to_route(image: Image.Image, route: torch.Tensor) -> Image.Image:
    """The bounding box of a subject's route map (latent grid) on the image; all of it if empty."""
    if not route.any():
        return image
    rows, cols = torch.nonzero(route, as_tuple=True)
    sy, sx = image.height / route.shape[0], image.width / route.shape[1]
    box = (int(cols.min() * sx), int(rows.min() * sy), int((cols.max() + 1) * sx), int((rows.max() + 1) * sy))
    return image.crop(box)


class SimilarityModels:
    """CLIP (image + text) and DINO feature extractors, from hub ids or local folders."""

    def __init__(self, clip_model: str, dino_model: str, device="cpu"):
        from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor

        self.device = torch.device(device)
        self.clip = CLIPModel.from_pretrained(clip_model).to(self.device).eval()
        self.clip_processor = CLIPProcessor.from_pretrained(clip_model)
        self.dino = AutoModel.from_pretrained(dino_model).to(self.device).eval()
        self.dino_processor = AutoImageProcessor.from_pretrained(dino_model)

    @torch.no_grad()
    def clip_image(self, image: Image.Image) -> torch.Tensor:
        pixels = self.clip_processor(images=image, return_tensors="pt").pixel_values.to(self.device)
        return _features(self.clip.get_image_features(pixel_values=pixels))

    @torch.no_grad()
    def clip_text(self, text: str) -> torch.Tensor:
        tokens = self.clip_processor(text=[text], return_tensors="pt", padding=True, truncation=True).to(self.device)
        return _features(self.clip.get_text_features(**tokens))

    @torch.no_grad()
    def dino_image(self, image: Image.Image) -> torch.Tensor:
        pixels = self.dino_processor(images=image, return_tensors="pt").pixel_values.to(self.device)
        return self.dino(pixel_values=pixels).last_hidden_state[:, 0]  # the CLS token


def _features(output) -> torch.Tensor:
    """transformers 5 returns model outputs from get_*_features; older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass
class SimilarityReport:
    clip_t: float
    clip_i: float
    dino: float
    images: int


def similarity(
    pipe,
    dataset: ManifestDataset,
    models: SimilarityModels,
    router: str = "learned",
    max_scenes: int | None = None,
    seed: int = 0,
    **generate,
) -> SimilarityReport:
    """Generate each held-out caption with its references as subjects; CLIP-T of image and caption,
    CLIP-I and DINO of each subject's reference (masked, on white) and its routed region."""
    clip_t, clip_i, dino = [], [], []
    count = len(dataset) if max_scenes is None else min(max_scenes, len(dataset))
    for index in range(count):
        row = dataset.row(index)
        subjects, references = [], []
        for instance in row.instances:
            ref = instance.references[0]
            image = Image.open(ref.image).convert("RGB")
            mask = Image.open(ref.mask).convert("L") if ref.mask is not None else None
            subjects.append(pipe.encode_subject(image, mask))
            white = Image.new("RGB", image.size, (255, 255, 255))
            references.append(Image.composite(image, white, mask) if mask is not None else image)
        extra = {"layout": [np.asarray(Image.open(i.mask).convert("L")) / 255.0 for i in row.instances]} if router == "layout" else {}
        out = pipe(
            row.caption, subjects=subjects, router=router, generator=torch.Generator().manual_seed(seed + index),
            height=dataset.resolution, width=dataset.resolution, **extra, **generate,
        )  # fmt: skip
        image = out.images[0]
        clip_t.append(_cosine(models.clip_image(image), models.clip_text(row.caption)))
        for i, reference in enumerate(references):
            region = _crop_to_route(image, out.route_maps[0][i].bool())
            clip_i.append(_cosine(models.clip_image(region), models.clip_image(reference)))
            dino.append(_cosine(models.dino_image(region), models.dino_image(reference)))
    return SimilarityReport(float(np.mean(clip_t)), float(np.mean(clip_i)), float(np.mean(dino)), count)


# -- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    from ..pipeline import AnyStoryPipeline

    parser = argparse.ArgumentParser(description="Evaluate an AnyStory checkpoint on held-out scenes.")
    parser.add_argument("what", choices=("routing", "similarity"))
    parser.add_argument("--base", required=True, help="SDXL folder, hub id or single file")
    parser.add_argument("--adapter", required=True, help="AnyStory checkpoint folder")
    parser.add_argument("--data", required=True, help="held-out dataset folder")
    parser.add_argument("--manifest", default="manifest.jsonl")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--max-scenes", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS))
    parser.add_argument("--clip-model", default="openai/clip-vit-large-patch14")
    parser.add_argument("--dino-model", default="facebook/dinov2-base")
    parser.add_argument("--router", default="learned", choices=("learned", "layout", "prompt", "none"))
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--out", help="also write the report as JSON here")
    args = parser.parse_args(argv)

    pipe = AnyStoryPipeline.from_pretrained(args.base, adapter=args.adapter)
    pipe.set_progress_bar_config(disable=True)
    dataset = ManifestDataset(args.data, pipe.feature_extractor, args.resolution, pipe.anystory_config.reference_size, manifest=args.manifest)
    if args.what == "routing":
        report = routing_iou(pipe, dataset, args.timesteps, args.seed, args.max_scenes)
        print(report.table())
    else:
        models = SimilarityModels(args.clip_model, args.dino_model, pipe._execution_device)
        report = similarity(pipe, dataset, models, args.router, args.max_scenes, args.seed,
                            num_inference_steps=args.steps, guidance_scale=args.guidance_scale)  # fmt: skip
        print(json.dumps(asdict(report), indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(asdict(report), indent=1))


if __name__ == "__main__":
    main()
