"""Draw the built-in example cast: three simple characters on transparent backgrounds.

    python assets/make_example_cast.py        # writes assets/cast/*.png and assets/cast/cast.json

Drawn here with Pillow shapes (no outside pictures, so no licence questions). The alpha channel
of each PNG is the character's mask. The app offers this cast on first open with an empty data
folder (and adds it by itself in preview mode), so the demo works at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
CAST_DIR = Path(__file__).resolve().parent / "cast"

SKIN = (241, 194, 160)
INK = (40, 32, 30)


def draw_girl(draw: ImageDraw.ImageDraw) -> None:
    """A girl with dark hair, a blue dress and a long red scarf."""
    draw.ellipse([78, 22, 178, 122], fill=(70, 45, 30))  # hair behind the head
    draw.rectangle([80, 70, 176, 150], fill=(70, 45, 30))
    draw.polygon([(88, 132), (168, 132), (196, 236), (60, 236)], fill=(60, 110, 200))  # dress
    draw.rectangle([96, 236, 112, 250], fill=SKIN)  # legs
    draw.rectangle([144, 236, 160, 250], fill=SKIN)
    draw.ellipse([92, 34, 164, 112], fill=SKIN)  # face
    draw.ellipse([110, 64, 118, 72], fill=INK)
    draw.ellipse([138, 64, 146, 72], fill=INK)
    draw.arc([114, 78, 142, 98], 20, 160, fill=(170, 60, 60), width=3)
    draw.rectangle([86, 112, 170, 134], fill=(205, 30, 40))  # scarf around the neck
    draw.polygon([(150, 120), (172, 120), (184, 196), (160, 200)], fill=(205, 30, 40))  # scarf end
    draw.ellipse([56, 150, 80, 174], fill=SKIN)  # hands
    draw.ellipse([176, 150, 200, 174], fill=SKIN)


def draw_dog(draw: ImageDraw.ImageDraw) -> None:
    """A small brown dog, side view, with a darker ear and a wagging tail."""
    brown, dark = (150, 95, 50), (95, 58, 30)
    draw.ellipse([50, 110, 190, 190], fill=brown)  # body
    for x in (62, 92, 142, 168):  # legs
        draw.rectangle([x, 170, x + 16, 232], fill=brown)
    draw.polygon([(182, 132), (236, 84), (242, 94), (190, 146)], fill=brown)  # tail
    draw.ellipse([22, 62, 112, 142], fill=brown)  # head
    draw.ellipse([8, 100, 52, 132], fill=(175, 120, 75))  # muzzle
    draw.ellipse([6, 104, 20, 116], fill=INK)  # nose
    draw.ellipse([48, 84, 58, 94], fill=INK)  # eye
    draw.polygon([(70, 62), (104, 56), (100, 120), (80, 112)], fill=dark)  # ear
    draw.rectangle([40, 134, 110, 142], fill=(30, 120, 200))  # collar


def draw_robot(draw: ImageDraw.ImageDraw) -> None:
    """A friendly silver robot with a screen face and an antenna."""
    silver, steel = (185, 192, 200), (120, 128, 140)
    draw.line([128, 14, 128, 44], fill=steel, width=5)  # antenna
    draw.ellipse([118, 6, 138, 26], fill=(240, 80, 60))
    draw.rounded_rectangle([76, 40, 180, 118], radius=14, fill=silver, outline=steel, width=4)  # head
    draw.rounded_rectangle([92, 56, 164, 102], radius=8, fill=(30, 60, 70))  # screen
    draw.ellipse([104, 68, 118, 82], fill=(80, 230, 220))
    draw.ellipse([138, 68, 152, 82], fill=(80, 230, 220))
    draw.rounded_rectangle([66, 124, 190, 214], radius=12, fill=silver, outline=steel, width=4)  # body
    draw.rectangle([108, 146, 148, 178], fill=(250, 200, 60))  # chest panel
    draw.rectangle([36, 130, 62, 200], fill=steel)  # arms
    draw.rectangle([194, 130, 220, 200], fill=steel)
    draw.rectangle([88, 214, 114, 248], fill=steel)  # legs
    draw.rectangle([142, 214, 168, 248], fill=steel)


# file stem -> (name, description used in prompts, drawing)
CAST: dict[str, tuple[str, str, Callable[[ImageDraw.ImageDraw], None]]] = {
    "mia": ("Mia", "a young girl with a red scarf", draw_girl),
    "rex": ("Rex", "a small brown dog", draw_dog),
    "bolt": ("Bolt", "a friendly silver robot", draw_robot),
}


def draw_character(draw_fn: Callable[[ImageDraw.ImageDraw], None]) -> Image.Image:
    """One character on a transparent square canvas."""
    picture = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    draw_fn(ImageDraw.Draw(picture))
    return picture


def write_example_cast(folder: Path = CAST_DIR) -> Path:
    """Write one PNG per character and `cast.json` (file, name, description) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for stem, (name, description, draw_fn) in CAST.items():
        draw_character(draw_fn).save(folder / f"{stem}.png", optimize=True)
        entries.append({"file": f"{stem}.png", "name": name, "description": description})
    (folder / "cast.json").write_text(json.dumps({"characters": entries}, indent=2) + "\n", encoding="utf-8")
    return folder


if __name__ == "__main__":
    print(f"wrote the example cast to {write_example_cast()}")
