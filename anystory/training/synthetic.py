"""Synthetic scenes made in code, written in the training dataset format (see data.py).

Subjects are textured sprites: each identity has a shape, two colours and a texture, and is drawn
at any size and rotation. A scene pastes 1..N distinct identities at random places and sizes on
a random low-saturation background; each instance gets its visible mask and a separate reference
(the same identity drawn again, other size, rotation, place and background).

    python -m anystory.training.synthetic OUT --scenes 400 --subjects 2 --size 128 --seed 0
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
COMPACT_SHAPES = ("disc", "square", "triangle", "diamond", "hexagon")  # no part thinner than ~1/4 of the sprite
TEXTURES = ("stripes", "checker", "dots", "solid")
HUE_NAMES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet", "magenta", "pink")


@dataclass
class Identity:
    """One synthetic subject: what stays the same in every picture of it."""

    index: int
    shape: str
    texture: str
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    period: float  # texture period, as a fraction of the sprite size
    name: str


def identity(index: int, shapes: tuple[str, ...] = SHAPES) -> Identity:
    """Identity `index`: a two-tone texture in one hue (hues spread by the golden ratio), so that
    colour, texture and shape all tell identities apart; `shapes` and textures cycle."""
    rng = np.random.RandomState(7919 * index + 1)
    hue = (index * 0.618033988749895) % 1.0
    light = colorsys.hsv_to_rgb(hue, 0.9, 0.95)
    dark = colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.55))
    colors = tuple(tuple(int(c * 255) for c in rgb) for rgb in (light, dark))
    shape = shapes[index % len(shapes)]
    texture = TEXTURES[(index // len(shapes) + index) % len(TEXTURES)]
    name = f"{HUE_NAMES[int(hue * len(HUE_NAMES)) % len(HUE_NAMES)]} {texture} {shape}"
    return Identity(index, shape, texture, colors, float(rng.uniform(0.15, 0.3)), name)


def hue_of(subject: Identity) -> float:
    return colorsys.rgb_to_hsv(*(c / 255 for c in subject.colors[0]))[0]


def hue_gap(a: Identity, b: Identity) -> float:
    d = abs(hue_of(a) - hue_of(b))
    return min(d, 1 - d)


def choose(pool: list[Identity], count: int, rng: np.random.RandomState, min_hue_gap: float) -> list[Identity]:
    """`count` distinct identities whose hues are at least `min_hue_gap` apart (where 100 tries allow)."""
    for _ in range(100):
        chosen = [pool[i] for i in rng.choice(len(pool), count, replace=False)]
        if all(hue_gap(a, b) >= min_hue_gap for k, a in enumerate(chosen) for b in chosen[k + 1 :]):
            break
    return chosen


def _outline(shape: str, angle: float) -> list[np.ndarray]:
    """Polygons (unit size, centred at 0) of a shape; a second polygon is a hole."""

    def regular(n: int, radius: float = 0.5, phase: float = 0.0) -> np.ndarray:
        t = phase + np.arange(n) * 2 * math.pi / n
        return np.stack([np.cos(t), np.sin(t)], 1) * radius

    if shape == "disc":
        polys = [regular(48, 0.5)]
    elif shape == "ring":
        polys = [regular(48, 0.5), regular(48, 0.25)]
    elif shape == "square":
        polys = [regular(4, 0.5 * math.sqrt(2) * 0.85, math.pi / 4)]
    elif shape == "diamond":
        polys = [regular(4, 0.5)]
    elif shape == "triangle":
        polys = [regular(3, 0.55, -math.pi / 2) + [0, 0.1]]
    elif shape == "hexagon":
        polys = [regular(6, 0.5)]
    elif shape == "star":
        outer, inner = regular(5, 0.5, -math.pi / 2), regular(5, 0.22, -math.pi / 2 + math.pi / 5)
        polys = [np.stack([outer, inner], 1).reshape(-1, 2)]
    elif shape == "cross":
        a, b = 0.5, 0.18
        polys = [np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]])]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return [p @ rotation.T for p in polys]


def render(subject: Identity, size: int, angle: float, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """The sprite in a size x size box: RGB [size, size, 3] uint8 and mask [size, size] bool."""
    scale = 4  # draw the outline 4x larger, then area-downsample: smooth edges
    canvas = Image.new("L", (size * scale, size * scale))
    draw = ImageDraw.Draw(canvas)
    polys = _outline(subject.shape, angle)
    for k, poly in enumerate(polys):
        points = [tuple(v) for v in (poly + 0.5) * size * scale]
        draw.polygon(points, fill=0 if k else 255)
    mask = np.asarray(canvas.resize((size, size), Image.BOX)) >= 128

    yy, xx = (np.mgrid[:size, :size] - size / 2) / size
    u = xx * math.cos(angle) + yy * math.sin(angle)  # texture turns with the sprite
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    period = subject.period
    if subject.texture == "stripes":
        second = np.sin(2 * math.pi * u / period) > 0
    elif subject.texture == "checker":
        second = (np.floor(u / period) + np.floor(v / period)) % 2 == 1
    elif subject.texture == "dots":
        second = ((u / period) % 1 - 0.5) ** 2 + ((v / period) % 1 - 0.5) ** 2 < 0.09
    else:
        second = np.zeros((size, size), bool)
    first, other = (np.array(c, np.float32) for c in subject.colors)
    rgb = np.where(second[..., None], other, first)
    rgb = rgb + rng.normal(0, 8, rgb.shape)  # a little sensor noise
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def background(size: int, rng: np.random.RandomState) -> np.ndarray:
    """A smooth, low-saturation random background [size, size, 3] uint8."""
    base = colorsys.hsv_to_rgb(rng.rand(), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.8))
    coarse = rng.normal(0, 18, (4, 4, 3)).astype(np.float32)
    noise = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.BICUBIC)) for c in range(3)], -1)
    ramp = np.linspace(-1, 1, size)[None, :, None] * rng.uniform(-20, 20)
    pixels = np.array(base, np.float32) * 255 + noise + ramp + rng.normal(0, 4, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def paste(canvas: np.ndarray, sprite: np.ndarray, mask: np.ndarray, top: int, left: int) -> np.ndarray:
    """Paste a sprite; return its full-canvas mask."""
    h, w = mask.shape
    region = canvas[top : top + h, left : left + w]
    region[mask] = sprite[mask]
    full = np.zeros(canvas.shape[:2], bool)
    full[top : top + h, left : left + w] = mask
    return full


def scene(
    identities: list[Identity], size: int, rng: np.random.RandomState, scale: tuple[float, float] = (0.35, 0.55)
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paste each identity once, without overlap where 100 places allow (the sprite shrinks by 10%
    after every 20 failed places); visible masks (a later sprite occludes earlier ones)."""
    canvas = background(size, rng)
    taken = np.zeros((size, size), bool)
    masks = []
    for subject in identities:
        side, angle = int(rng.uniform(*scale) * size), rng.uniform(0, 2 * math.pi)
        sprite, mask = render(subject, side, angle, rng)
        for attempt in range(100):
            top, left = rng.randint(0, size - side + 1), rng.randint(0, size - side + 1)
            if not (taken[top : top + side, left : left + side] & mask).any():
                break
            if attempt % 20 == 19 and attempt < 99:
                side = max(8, int(side * 0.9))
                sprite, mask = render(subject, side, angle, rng)
        full = paste(canvas, sprite, mask, top, left)
        masks = [m & ~full for m in masks]
        masks.append(full)
        taken |= full
    return canvas, masks


def reference(subject: Identity, size: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """A separate picture of the subject: its own size, rotation, place and background."""
    canvas = background(size, rng)
    side = int(rng.uniform(0.6, 0.9) * size)
    sprite, mask = render(subject, side, rng.uniform(0, 2 * math.pi), rng)
    top, left = rng.randint(0, size - side + 1), rng.randint(0, size - side + 1)
    return canvas, paste(canvas, sprite, mask, top, left)


@dataclass
class SyntheticConfig:
    scenes: int = 200
    subjects: tuple[int, int] = (2, 2)  # min, max subjects per scene
    size: int = 128
    reference_size: int = 96
    identities: tuple[int, int] = (0, 16)  # identity indices [start, stop) to draw from
    scale: tuple[float, float] = (0.35, 0.55)  # sprite side as a fraction of the image side
    references_per_instance: int = 1
    self_reference: bool = False  # no separate references: each instance's crop of the target
    min_hue_gap: float = 0.15  # subjects of one scene differ in hue by at least this (of the colour circle)
    shapes: tuple[str, ...] = SHAPES  # e.g. COMPACT_SHAPES where thin parts would fall between grid cells
    seed: int = 0


def _save(array: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8) * (255 if array.dtype == bool else 1)).save(path)
    return str(path)


def generate(folder: str | Path, config: SyntheticConfig) -> Path:
    """Write `config.scenes` scenes to `folder` (images/, masks/, references/, manifest.jsonl)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(config.seed)
    unknown = set(config.shapes) - set(SHAPES)
    if unknown or not config.shapes:
        raise ValueError(f"shapes must be some of {SHAPES}, got {config.shapes}")
    pool = [identity(i, tuple(config.shapes)) for i in range(*config.identities)]
    if len(pool) < config.subjects[1]:
        raise ValueError(f"{len(pool)} identities cannot fill scenes of {config.subjects[1]} distinct subjects")
    rows = []
    for n in range(config.scenes):
        name = f"{config.seed:04d}-{n:06d}"
        count = rng.randint(config.subjects[0], config.subjects[1] + 1)
        chosen = choose(pool, count, rng, config.min_hue_gap)
        image, masks = scene(chosen, config.size, rng, config.scale)
        _save(image, folder / "images" / f"{name}.png")
        instances = []
        for i, (subject, mask) in enumerate(zip(chosen, masks)):
            entry = {"mask": f"masks/{name}-{i}.png", "subject": subject.index}
            _save(mask, folder / entry["mask"])
            if not config.self_reference:
                entry["references"] = []
                for r in range(config.references_per_instance):
                    ref, ref_mask = reference(subject, config.reference_size, rng)
                    stem = f"references/{name}-{i}-{r}"
                    _save(ref, folder / f"{stem}.png")
                    _save(ref_mask, folder / f"{stem}-mask.png")
                    entry["references"].append({"image": f"{stem}.png", "mask": f"{stem}-mask.png"})
            instances.append(entry)
        caption = " and ".join(f"a {s.name}" for s in chosen)
        rows.append({"id": name, "image": f"images/{name}.png", "caption": caption, "instances": instances})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "synthetic.json").write_text(json.dumps({"config": asdict(config), "identities": [asdict(s) for s in pool]}, indent=1))
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic AnyStory training scenes.")
    parser.add_argument("folder")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--subjects", type=int, nargs=2, default=(2, 2), metavar=("MIN", "MAX"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--reference-size", type=int, default=96)
    parser.add_argument("--identities", type=int, nargs=2, default=(0, 16), metavar=("START", "STOP"))
    parser.add_argument("--scale", type=float, nargs=2, default=(0.35, 0.55), metavar=("MIN", "MAX"))
    parser.add_argument("--references", type=int, default=1, help="separate references per instance")
    parser.add_argument("--self-reference", action="store_true", help="no separate references (stage-2 style)")
    parser.add_argument("--min-hue-gap", type=float, default=0.15, help="least hue difference of a scene's subjects (0..0.5)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES, help="the shapes identities cycle through")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = SyntheticConfig(
        scenes=args.scenes, subjects=tuple(args.subjects), size=args.size, reference_size=args.reference_size,
        identities=tuple(args.identities), scale=tuple(args.scale), references_per_instance=args.references,
        self_reference=args.self_reference, min_hue_gap=args.min_hue_gap, shapes=tuple(args.shapes), seed=args.seed,
    )  # fmt: skip
    print(generate(args.folder, config))


if __name__ == "__main__":
    main()
