"""Pages of a demo story, to look at: four panels with speech, thought, caption and sound-effect
lines, exported in every layout as PNG pages, PDF and CBZ (issue 16).

    HF_HUB_OFFLINE=1 python bench/pages_demo.py OUT_FOLDER [--fit auto|crop|fit] [--title-page]

The tiny offline model draws the pictures (random weights: coloured noise, not characters); the
router's layout boxes say where each character is, so the bubbles are placed from real route maps.
Not a test: it writes files for a person to look at.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anystory import AnyStoryPipeline  # noqa: E402
from anystory.pages import LAYOUTS  # noqa: E402
from anystory.studio import Studio  # noqa: E402
from anystory.tiny import synthetic_subject, write_tiny_ip_adapter, write_tiny_sdxl  # noqa: E402

# prompt, (width, height), layout boxes by name, lines (speaker or None, kind, text)
PANELS = [
    (
        "[Mia] and [Rex] at the edge of a forest",
        (256, 256),
        {"Mia": [0.02, 0.35, 0.45, 1.0], "Rex": [0.55, 0.5, 0.98, 1.0]},
        [
            (None, "caption", "Meanwhile, at the edge of the old forest..."),
            ("Mia", "speech", "Did you hear that noise behind the trees?"),
            ("Rex", "thought", "Squirrel. Definitely a squirrel."),
            (None, "sfx", "CRACK!"),
        ],
    ),
    (
        "[Mia] runs along a path, [Rex] behind her",
        (384, 256),
        {"Mia": [0.05, 0.3, 0.4, 1.0], "Rex": [0.6, 0.55, 0.95, 1.0]},
        [
            ("Mia", "speech", "Come on, Rex! Before it gets dark!"),
            ("Rex", "speech", "Woof! 汪汪!"),
            (None, "sfx", "THUD THUD"),
            (None, "caption", "They ran until the path ended."),
        ],
    ),
    (
        "[Mia] looks up at a tall tree",
        (256, 384),
        {"Mia": [0.2, 0.45, 0.8, 1.0]},
        [
            (None, "caption", "The tree was older than the village."),
            ("Mia", "thought", "I have seen this tree before, in grandmother's book: مرحبا بالعالم"),
            ("Mia", "speech", "Hello? Is anyone up there?"),
            (None, "sfx", "WHOOSH"),
        ],
    ),
    (
        "[Rex] sits beside [Mia] at a campfire",
        (256, 256),
        {"Mia": [0.05, 0.3, 0.5, 1.0], "Rex": [0.55, 0.55, 0.95, 1.0]},
        [
            ("Mia", "speech", "I told you the map was upside down, and now we are lost in the forest again."),
            ("Rex", "speech", "Woof."),
            ("Mia", "thought", "At least the fire is warm."),
            (None, "sfx", "CRACKLE"),
            (None, "caption", "And so the first night passed."),
        ],
    ),
]


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--fit", default="auto", choices=("auto", "crop", "fit"))
    parser.add_argument("--title-page", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_tiny_sdxl(Path(scratch) / "tiny-sdxl")
        ip_file = write_tiny_ip_adapter(folder, Path(scratch) / "ip.safetensors")
        pipe = AnyStoryPipeline.from_pretrained(
            str(folder), adapter="public", ip_adapter=str(ip_file), local_files_only=True
        )
        pipe.set_progress_bar_config(disable=True)
        studio = Studio(Path(scratch) / "data", pipe, preview=True)
        cast = {
            "Mia": studio.add_character("Mia", "a young woman with a red scarf", png(synthetic_subject(1))),
            "Rex": studio.add_character("Rex", "a small brown dog", png(synthetic_subject(2))),
        }
        story = studio.create_story("Lost in the forest")
        for prompt, (width, height), boxes, lines in PANELS:
            layout = {cast[name].id: box for name, box in boxes.items()}
            panel = studio.add_panel(
                story.id, prompt, router="layout", layout=layout, width=width, height=height, steps=3
            )
            studio.generate_panel(panel.id)
            for speaker, kind, text in lines:
                studio.add_line(panel.id, text, speaker, kind)
            for warning in studio.line_warnings(panel.id):
                print("warning:", warning)
        for layout in LAYOUTS:
            common = dict(layout=layout, title_page=args.title_page, fit=args.fit)
            written = studio.export_story(story.id, "grid", args.out / f"{layout}.png", **common)
            written += studio.export_story(story.id, "pdf", args.out / f"{layout}.pdf", **common)
            written += studio.export_story(story.id, "cbz", args.out / f"{layout}.cbz", **common)
            print(layout, ", ".join(p.name for p in written))
        studio.close()


if __name__ == "__main__":
    main()
