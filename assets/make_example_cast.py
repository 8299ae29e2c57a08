"""Draw the built-in example cast: three characters of the preview model's toy world.

    python assets/make_example_cast.py        # writes assets/cast/*.png and assets/cast/cast.json

The preview model (assets/preview-model, docs/TRAINING.md "The preview model") is trained on a
synthetic world of textured shapes (anystory/training/synthetic.py): each identity is a shape, a
texture and two tones of one hue. The example cast are identities of that world, drawn here by the
same code that drew the training scenes, on transparent backgrounds (the alpha channel is the
mask); their descriptions are the words of the training captions. Mia and Rex are identities the
model was trained on; Bolt is one it never saw (an index outside the training pool), so it shows
that encoding a picture carries a new character. The app offers this cast on first open with an
empty data folder (and adds it by itself in preview mode), so the demo works at once.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anystory.training.synthetic import COMPACT_SHAPES, identity, render  # noqa: E402

SIZE = 256
CAST_DIR = Path(__file__).resolve().parent / "cast"
TRAINED_IDENTITIES = range(0, 16)  # the preview model's training pool (proof.ProofConfig.identities)

# file stem -> (name, identity index, rotation in degrees)
CAST: dict[str, tuple[str, int, float]] = {
    "mia": ("Mia", 0, 10.0),  # red stripes disc: trained on
    "rex": ("Rex", 12, 0.0),  # green dots triangle: trained on
    "bolt": ("Bolt", 19, 15.0),  # blue dots hexagon: never seen in training
}

# The example story: each character alone, then together (preview mode adds it with the cast).
STORY = {
    "title": "Shapes meet",
    "panels": [
        {"prompt": "[Mia]", "seed": 1},
        {"prompt": "[Rex]", "seed": 2},
        {"prompt": "[Mia] and [Rex]", "seed": 3},
        {"prompt": "[Bolt]", "seed": 4},
        {"prompt": "[Bolt] and [Mia]", "seed": 5},
        {"prompt": "[Rex] and [Bolt]", "seed": 6},
    ],
}


def draw_character(index: int, angle: float, seed: int = 0) -> Image.Image:
    """Identity `index` as the training scenes draw it, filling most of a transparent square."""
    side = int(SIZE * 0.85)
    sprite, mask = render(identity(index, COMPACT_SHAPES), side, math.radians(angle), np.random.RandomState(seed))
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    top = (SIZE - side) // 2
    rgba[top : top + side, top : top + side, :3] = np.where(mask[..., None], sprite, 0)
    rgba[top : top + side, top : top + side, 3] = mask * 255
    return Image.fromarray(rgba, "RGBA")


def description(index: int) -> str:
    return f"a {identity(index, COMPACT_SHAPES).name}"


def write_example_cast(folder: Path = CAST_DIR) -> Path:
    """Write one PNG per character and `cast.json` (file, name, description; the example story)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for stem, (name, index, angle) in CAST.items():
        draw_character(index, angle, seed=index).save(folder / f"{stem}.png", optimize=True)
        entries.append(
            {
                "file": f"{stem}.png",
                "name": name,
                "description": description(index),
                "identity": index,
                "trained_on": index in TRAINED_IDENTITIES,
            }
        )
    text = json.dumps({"characters": entries, "story": STORY}, indent=2) + "\n"
    (folder / "cast.json").write_text(text, encoding="utf-8")
    return folder


if __name__ == "__main__":
    print(f"wrote the example cast to {write_example_cast()}")
