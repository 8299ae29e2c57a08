"""Consistency scores: how much each character of a panel looks like its reference.

AnyStory's router says which pixels are which character, so a character is scored on its own
region rather than on the whole picture (as CLIP-I / DINO scores usually are):

1. region: the cells of the final route map that the router gave the character (majority, >= 0.5),
   at the image's size; a named character with no cell is *absent*: flagged, not scored;
2. crop: the region cut out exactly as a reference is cut for encoding (`encoder.prepare_subject`:
   square around its bounding box with the same margin, pixels outside the region white), so
   a region that is the reference itself gives the reference's own crop;
3. score: the cosine of the CLIP image embeddings (projection output, the image encoder the
   pipeline already holds) of the reference crop and the region crop; with a DINOv2 model
   (`DinoScorer`, `--dino MODEL`), the cosine of their DINO CLS embeddings too.

The scores of a version are a plain dict (`PanelScores.to_dict`), stored in its row and in project
archives (the records: scores.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .encoder import prepare_subject
from .scores import LOW_SCORE, CharacterScore, PanelScores

__all__ = ["LOW_SCORE", "CharacterScore", "DinoScorer", "PanelScores", "Scorer", "panel_regions", "region_masks"]

Embed = Callable[[list[Image.Image]], torch.Tensor]  # images -> unit embeddings [B, D]


# -- regions and crops ---------------------------------------------------------------------------


def region_masks(route_maps: np.ndarray, size: tuple[int, int]) -> list[np.ndarray | None]:
    """Per subject (the maps' slots but the last, the background): a bool mask at the image size
    `(width, height)` of the cells routed to it (>= 0.5: one-hot maps as they are, mean maps by
    majority), or None when it got none."""
    maps = np.asarray(route_maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] < 1:
        raise ValueError(f"route maps must be [subjects + 1, h, w], got shape {maps.shape}")
    width, height = size
    masks: list[np.ndarray | None] = []
    for slot in maps[:-1]:
        cells = slot >= 0.5
        if not cells.any():
            masks.append(None)
            continue
        picture = Image.fromarray(cells.astype(np.uint8) * 255, "L").resize((width, height), Image.NEAREST)
        masks.append(np.asarray(picture) >= 128)
    return masks


def crop_region(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The region cut out as a reference is (`prepare_subject`'s CLIP crop): a square around its
    bounding box with the same margin, pixels outside the region white."""
    mask_image = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return prepare_subject(image.convert("RGB"), mask_image, reference_size=8).clip_image


def reference_crop(picture: Image.Image, mask: Image.Image | None) -> Image.Image:
    """A character's reference as it was encoded: its masked crop (`prepare_subject`)."""
    return prepare_subject(picture, mask, reference_size=8).clip_image


def _box(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    return [
        float(cols.min() / width),
        float(rows.min() / height),
        float((cols.max() + 1) / width),
        float((rows.max() + 1) / height),
    ]


@dataclass
class Region:
    """One subject's part of a panel, cut out and ready to embed (no model needed so far)."""

    index: int
    name: str
    crop: Image.Image | None  # None: absent
    area: float = 0.0
    box: list[float] | None = None


def panel_regions(image: Image.Image, route_maps: np.ndarray, names: list[str]) -> list[Region]:
    """The crops to score, one per subject of the panel (the cheap part, before any model call)."""
    masks = region_masks(route_maps, image.size)
    if len(masks) != len(names):
        raise ValueError(f"the route maps have {len(masks)} subjects, the version names {len(names)}")
    regions = []
    for index, (name, mask) in enumerate(zip(names, masks)):
        if mask is None:
            regions.append(Region(index, name, None))
        else:
            regions.append(Region(index, name, crop_region(image, mask), float(mask.mean()), _box(mask)))
    return regions


@dataclass
class Scorer:
    """Scores panels with one or two embedders; `references` caches reference embeddings per key
    (a character's id and the time its picture last changed), so each is embedded once."""

    clip: Embed
    encoder: str = ""
    dino: DinoScorer | None = None
    references: dict[object, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)

    def reference(self, key: object, crop: Callable[[], Image.Image]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key not in self.references:
            picture = crop()
            clip = self.clip([picture])[0]
            dino = self.dino([picture])[0] if self.dino is not None else None
            self.references[key] = (clip, dino)
        return self.references[key]

    def score(
        self,
        image: Image.Image,
        route_maps: np.ndarray,
        names: list[str],
        references: list[tuple[object, Callable[[], Image.Image]]],
    ) -> PanelScores:
        """Score each subject of one panel: `references[i]` is (cache key, a function giving subject
        i's reference crop). The model runs on the present regions in one batch per embedder."""
        started = time.perf_counter()
        regions = panel_regions(image, route_maps, names)
        model_started = time.perf_counter()
        wanted = [references[r.index] for r in regions]
        refs = [self.reference(key, crop) for key, crop in wanted]
        present = [r for r in regions if r.crop is not None]
        crops = [r.crop for r in present]
        clip = self.clip(crops) if crops else None
        dino = self.dino(crops) if crops and self.dino is not None else None
        model_seconds = time.perf_counter() - model_started
        by_index: dict[int, tuple[float, float | None]] = {}
        for row, region in enumerate(present):
            ref_clip, ref_dino = refs[region.index]
            clip_score = _cosine(ref_clip, clip[row])
            dino_score = _cosine(ref_dino, dino[row]) if dino is not None and ref_dino is not None else None
            by_index[region.index] = (clip_score, dino_score)
        characters = []
        for region in regions:
            clip_score, dino_score = by_index.get(region.index, (None, None))
            characters.append(
                CharacterScore(
                    index=region.index,
                    name=region.name,
                    present=region.crop is not None,
                    area=round(region.area, 6),
                    box=[round(v, 6) for v in region.box] if region.box else None,
                    clip=clip_score,
                    dino=dino_score,
                )
            )
        return PanelScores(
            characters=characters,
            encoder=self.encoder,
            dino_model=self.dino.name if self.dino is not None else None,
            seconds=round(time.perf_counter() - started, 6),
            model_seconds=round(model_seconds, 6),
        )


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    # Both are unit length already; clamp the rounding error so a match reads exactly 1.0 at most.
    return float(max(-1.0, min(1.0, round(float(torch.dot(a.float(), b.float())), 6))))


class DinoScorer:
    """DINOv2 CLS embeddings (`transformers`), for the optional DINO score (`--dino MODEL`: a hub id
    or a local folder, e.g. facebook/dinov2-base)."""

    def __init__(self, name: str, device: str | torch.device = "cpu", local_files_only: bool = False):
        from transformers import AutoImageProcessor, AutoModel

        self.name = str(name)
        try:
            self.processor = AutoImageProcessor.from_pretrained(self.name, local_files_only=local_files_only)
            self.model = AutoModel.from_pretrained(self.name, local_files_only=local_files_only).to(device).eval()
        except (OSError, ValueError) as err:
            raise ValueError(f"could not load the DINO model {self.name!r}: {err}") from err
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values
        states = self.model(pixel_values=pixels.to(self.device, self.model.dtype)).last_hidden_state[:, 0]
        return torch.nn.functional.normalize(states.float(), dim=-1).cpu()
