"""What the preview model really does, measured on its pictures (fixed seeds): four properties.

    python -m anystory.training.preview_checks [--model assets/preview-model] [--out checks.json]

The cast is the example cast (assets/cast: characters of the toy world), encoded from its pictures
as the app encodes them, drawn with the preview panel's size, steps and guidance.

- placement: two characters, learned router. The pixels that differ from the background (colour
  distance from the median of the picture's border > `FOREGROUND_DISTANCE`), taken per cell of the
  latent grid by majority, against the cells the route maps give the characters: IoU.
- layout: the layout router with two boxes. A foreground pixel belongs to the character whose
  reference has the most of that pixel's colour (`ColourStats`); the share of each character's
  pixels that falls inside its own box.
- identity: four panels, other prompts and partners, learned router. Each character's routed
  region (its foreground pixels) against every cast member's reference, by colour histogram
  (total variation distance): correct when its own reference is the nearest. The CLIP consistency
  score of the scores issue (`consistency.Scorer`, the model's own small image encoder) is
  reported beside it, own reference against the best other one.
- blending: the same four panels with `router="none"` (every character everywhere), measured on
  the regions of the routed picture of the same seed: the identity margin (distance to the nearest
  other reference minus distance to the own one) is smaller when the characters blend.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..consistency import Scorer, reference_crop, region_masks

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "assets" / "preview-model"
DEFAULT_CAST = ROOT / "assets" / "cast"
FOREGROUND_DISTANCE = 60.0  # RGB distance (0-441) from the background colour that counts as "differs"
BINS = 6  # colour histogram bins per channel
BOXES = ((0.0, 0.1, 0.5, 0.9), (0.5, 0.1, 1.0, 0.9))  # the layout check's boxes (fractions)
# (characters, seed) of the identity and blending panels: other partners and orders in each
PANELS = ((("Mia", "Rex"), 11), (("Bolt", "Mia"), 12), (("Rex", "Bolt"), 13), (("Rex", "Mia"), 14))


@dataclass
class DrawSettings:
    size: int = 256
    steps: int = 20
    guidance: float = 1.0


@dataclass
class CastMember:
    name: str
    description: str
    picture: Image.Image  # RGBA: the alpha channel is the mask


def load_cast(folder: str | Path = DEFAULT_CAST) -> list[CastMember]:
    folder = Path(folder)
    entries = json.loads((folder / "cast.json").read_text(encoding="utf-8"))["characters"]
    return [CastMember(e["name"], e["description"], Image.open(folder / e["file"]).convert("RGBA")) for e in entries]


# -- pixel statistics ----------------------------------------------------------------------------


def colour_histogram(pixels: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Normalised joint RGB histogram of pixels [N, 3] uint8."""
    index = (pixels.astype(np.int64) * bins // 256) @ np.array([bins * bins, bins, 1])
    counts = np.bincount(index, minlength=bins**3).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation distance of two histograms, 0 (same) .. 1 (disjoint)."""
    return float(0.5 * np.abs(a - b).sum())


def reference_pixels(member: CastMember) -> np.ndarray:
    rgba = np.asarray(member.picture)
    return rgba[..., :3][rgba[..., 3] >= 128]


def background_colour(image: np.ndarray, border: int = 8) -> np.ndarray:
    """The median colour of the picture's border ring: the background where the characters leave it."""
    ring = np.concatenate(
        [
            image[:border].reshape(-1, 3),
            image[-border:].reshape(-1, 3),
            image[:, :border].reshape(-1, 3),
            image[:, -border:].reshape(-1, 3),
        ]
    )
    return np.median(ring, axis=0)


def foreground(image: np.ndarray, threshold: float = FOREGROUND_DISTANCE) -> np.ndarray:
    """Pixels [H, W] whose colour differs from the background's by more than `threshold`."""
    return np.linalg.norm(image.astype(np.float32) - background_colour(image), axis=-1) > threshold


def cells(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A pixel mask at a coarser grid, by majority."""
    h, w = grid
    return mask.reshape(h, mask.shape[0] // h, w, mask.shape[1] // w).mean(axis=(1, 3)) >= 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


# -- drawing -------------------------------------------------------------------------------------


def load_model(folder: str | Path = DEFAULT_MODEL):
    from ..pipeline import AnyStoryPipeline

    folder = Path(folder)
    pipe = AnyStoryPipeline.from_pretrained(
        str(folder / "base"), adapter=str(folder / "adapter"), local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_for(members: list[CastMember]) -> str:
    return " and ".join(m.description for m in members)


def draw(
    pipe,
    encodings: dict,
    members: list[CastMember],
    seed: int,
    settings: DrawSettings,
    router: str = "learned",
    layout=None,
) -> tuple[np.ndarray, np.ndarray]:
    """(picture [H, W, 3] uint8, route maps [N+1, h, w]) of one panel."""
    extra = {"layout": list(layout)} if layout is not None else {}
    out = pipe(
        prompt_for(members),
        subjects=[encodings[m.name] for m in members],
        router=router,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        height=settings.size,
        width=settings.size,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )
    return np.asarray(out.images[0].convert("RGB")), out.route_maps[0].float().cpu().numpy()


# -- the four properties -------------------------------------------------------------------------


@dataclass
class CharacterCheck:
    panel: int
    name: str
    distances: dict[str, float]  # colour-histogram distance to each cast member's reference
    nearest: str
    clip_own: float | None = None
    clip_best_other: float | None = None

    @property
    def correct(self) -> bool:
        return self.nearest == self.name

    def margin(self) -> float:
        own = self.distances[self.name]
        return min(v for k, v in self.distances.items() if k != self.name) - own


@dataclass
class PreviewChecks:
    settings: dict
    placement_iou: list[float] = field(default_factory=list)
    layout_inside: dict[str, float] = field(default_factory=dict)  # share of a character's pixels in its box
    identity: list[dict] = field(default_factory=list)
    identity_share: float = 0.0  # checks whose own reference is the nearest
    clip_share: float | None = None  # the same by the CLIP consistency score
    margin_routed: float = 0.0
    margin_none: float = 0.0
    region_distance_routed: float = 0.0  # the two characters' regions, one from another (blended: small)
    region_distance_none: float = 0.0

    def table(self) -> str:
        return "\n".join(
            [
                f"placement: IoU of the pixels that differ from the background vs the route maps, per panel: "
                f"{', '.join(f'{v:.3f}' for v in self.placement_iou)} (mean {np.mean(self.placement_iou):.3f})",
                "layout: share of each character's pixels inside its box: "
                + ", ".join(f"{k} {v:.3f}" for k, v in self.layout_inside.items()),
                f"identity: own reference nearest (colour) in {self.identity_share:.0%} of {len(self.identity)} "
                "character-panels"
                + (f"; by the CLIP consistency score in {self.clip_share:.0%}" if self.clip_share is not None else ""),
                f"blending: identity margin routed {self.margin_routed:.3f} vs router='none' {self.margin_none:.3f}; "
                f"distance between the two characters' regions routed {self.region_distance_routed:.3f} vs none "
                f"{self.region_distance_none:.3f}",
            ]
        )


def placement(image: np.ndarray, route_maps: np.ndarray) -> float:
    """IoU of the foreground (at the route maps' grid) and the cells routed to any character."""
    grid = route_maps.shape[-2:]
    routed = route_maps[:-1].max(axis=0) >= 0.5
    return iou(cells(foreground(image), grid), routed)


def layout_shares(image: np.ndarray, members: list[CastMember], boxes) -> dict[str, float]:
    """Per character: of the foreground pixels whose colour is most that character's (of the panel's
    characters, by their references' histograms), the share inside its own box."""
    hists = np.stack([colour_histogram(reference_pixels(m)) for m in members])
    fg = foreground(image)
    index = (image.astype(np.int64) * BINS // 256) @ np.array([BINS * BINS, BINS, 1])
    owner = hists[:, index].argmax(axis=0)  # [H, W]
    likely = hists[:, index].max(axis=0) > 0  # a colour no reference has belongs to no one
    height, width = fg.shape
    shares = {}
    for i, (member, (x0, y0, x1, y1)) in enumerate(zip(members, boxes)):
        mine = fg & likely & (owner == i)
        inside = np.zeros_like(mine)
        inside[round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)] = True
        shares[member.name] = float((mine & inside).sum() / mine.sum()) if mine.any() else 0.0
    return shares


def region_stats(image: np.ndarray, route_maps: np.ndarray) -> list[np.ndarray | None]:
    """Per subject: the colour histogram of its routed region's foreground pixels (all of the
    region's pixels when none of it differs from the background), None when it got no cell."""
    masks = region_masks(route_maps, (image.shape[1], image.shape[0]))
    fg = foreground(image)
    out = []
    for mask in masks:
        if mask is None:
            out.append(None)
            continue
        pixels = image[mask & fg] if (mask & fg).any() else image[mask]
        out.append(colour_histogram(pixels))
    return out


def character_checks(
    panel: int, image: np.ndarray, route_maps: np.ndarray, members: list[CastMember], cast: list[CastMember]
) -> list[CharacterCheck]:
    references = {m.name: colour_histogram(reference_pixels(m)) for m in cast}
    checks = []
    for member, stats in zip(members, region_stats(image, route_maps)):
        if stats is None:  # absent: it counts as wrong, nearest to no one
            checks.append(CharacterCheck(panel, member.name, {k: 1.0 for k in references}, ""))
            continue
        distances = {k: distance(stats, ref) for k, ref in references.items()}
        checks.append(CharacterCheck(panel, member.name, distances, min(distances, key=distances.get)))
    return checks


def clip_scores(
    pipe,
    image: np.ndarray,
    route_maps: np.ndarray,
    members: list[CastMember],
    cast: list[CastMember],
    checks: list[CharacterCheck],
) -> None:
    """Fill each check's CLIP consistency score: its region against its own reference and against the
    best of the other cast members' (Scorer, as the app scores a version)."""
    scorer = Scorer(pipe.image_embeddings)
    picture = Image.fromarray(image)
    refs = {
        m.name: (m.name, lambda m=m: reference_crop(m.picture.convert("RGB"), m.picture.getchannel("A"))) for m in cast
    }
    for check, member in zip(checks, members):
        scores = {}
        for other in cast:
            names = [mm.name for mm in members]
            wanted = [refs[other.name] if mm is member else refs[mm.name] for mm in members]
            result = scorer.score(picture, route_maps, names, wanted)
            scores[other.name] = result.characters[names.index(member.name)].clip
        if scores[member.name] is not None:
            check.clip_own = scores[member.name]
            check.clip_best_other = max(v for k, v in scores.items() if k != member.name)


def run_checks(
    pipe, cast: list[CastMember], settings: DrawSettings | None = None, pictures: dict | None = None
) -> PreviewChecks:
    """The four properties; `pictures` (a dict), when given, gets every picture drawn, by name."""
    settings = settings or DrawSettings()
    pictures = {} if pictures is None else pictures
    by_name = {m.name: m for m in cast}
    encodings = {m.name: pipe.encode_subject(m.picture) for m in cast}
    report = PreviewChecks(settings=asdict(settings))

    checks, margins_none, regions_routed, regions_none = [], [], [], []
    for panel, (names, seed) in enumerate(PANELS):
        members = [by_name[n] for n in names]
        image, maps = draw(pipe, encodings, members, seed, settings)
        pictures[f"panel{panel}-{'-'.join(names)}-learned"] = image
        report.placement_iou.append(placement(image, maps))
        panel_checks = character_checks(panel, image, maps, members, cast)
        clip_scores(pipe, image, maps, members, cast, panel_checks)
        checks += panel_checks
        blended, _ = draw(pipe, encodings, members, seed, settings, router="none")
        pictures[f"panel{panel}-{'-'.join(names)}-none"] = blended
        # the routed picture's regions, read on the picture drawn without routing
        margins_none += [c.margin() for c in character_checks(panel, blended, maps, members, cast)]
        routed_stats, none_stats = region_stats(image, maps), region_stats(blended, maps)
        if all(s is not None for s in routed_stats):
            regions_routed.append(distance(*routed_stats))
            regions_none.append(distance(*none_stats))
    report.identity = [{**asdict(c), "correct": c.correct, "margin": c.margin()} for c in checks]
    report.identity_share = float(np.mean([c.correct for c in checks]))
    scored = [c for c in checks if c.clip_own is not None]
    report.clip_share = float(np.mean([c.clip_own > c.clip_best_other for c in scored])) if scored else None
    report.margin_routed = float(np.mean([c.margin() for c in checks]))
    report.margin_none = float(np.mean(margins_none))
    report.region_distance_routed = float(np.mean(regions_routed)) if regions_routed else 0.0
    report.region_distance_none = float(np.mean(regions_none)) if regions_none else 0.0

    members = [by_name[n] for n in PANELS[0][0]]
    image, _ = draw(pipe, encodings, members, 21, settings, router="layout", layout=BOXES)
    pictures[f"layout-{'-'.join(m.name for m in members)}"] = image
    report.layout_inside = layout_shares(image, members, BOXES)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a folder with base/ and adapter/")
    parser.add_argument("--cast", default=str(DEFAULT_CAST))
    parser.add_argument("--size", type=int, default=DrawSettings.size)
    parser.add_argument("--steps", type=int, default=DrawSettings.steps)
    parser.add_argument("--guidance", type=float, default=DrawSettings.guidance)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--pictures", help="also save every picture drawn in this folder (PNG)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pictures: dict = {}
    settings = DrawSettings(args.size, args.steps, args.guidance)
    report = run_checks(load_model(args.model), load_cast(args.cast), settings, pictures)
    print(report.table())
    if args.pictures:
        Path(args.pictures).mkdir(parents=True, exist_ok=True)
        for name, picture in pictures.items():
            Image.fromarray(picture).save(Path(args.pictures) / f"{name}.png")
    if args.out:
        Path(args.out).write_text(json.dumps(asdict(report), indent=1))


if __name__ == "__main__":
    main()
