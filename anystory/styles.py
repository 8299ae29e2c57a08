"""Style presets (issue 16): data, not code. assets/styles.json holds each preset's prompt
template ("{prompt}" stands for the panel's prompt) and negative prompt; a story picks one, a
panel may pick another, and both may add a negative prompt of their own."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

STYLES_FILE = Path(__file__).resolve().parent.parent / "assets" / "styles.json"
STYLES_FORMAT = "anystory.styles"


@dataclass(frozen=True)
class Style:
    id: str
    label: str
    prompt: str  # a template with {prompt}
    negative: str

    def apply(self, prompt: str) -> str:
        """The panel's prompt inside the template (replace, not str.format: prompts may hold braces)."""
        return self.prompt.replace("{prompt}", prompt).strip(" ,")


def load_styles(path: str | Path = STYLES_FILE) -> dict[str, Style]:
    """The presets of a styles file by id, in file order; ValueError says what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the style presets {path}: {err}") from err
    if not isinstance(data, dict) or data.get("format") != STYLES_FORMAT or not isinstance(data.get("styles"), list):
        raise ValueError(f"{path} is not an AnyStory styles file (format {STYLES_FORMAT!r} with a list of styles)")
    styles: dict[str, Style] = {}
    for number, raw in enumerate(data["styles"], start=1):
        fields = {key: raw.get(key) if isinstance(raw, dict) else None for key in ("id", "label", "prompt", "negative")}
        if not all(isinstance(value, str) for value in fields.values()) or not fields["id"]:
            raise ValueError(f"{path}: style {number} needs text id, label, prompt and negative")
        if "{prompt}" not in fields["prompt"]:
            raise ValueError(f"{path}: style {fields['id']!r} has no {{prompt}} in its prompt template")
        if fields["id"] in styles:
            raise ValueError(f"{path}: style id {fields['id']!r} appears twice")
        styles[fields["id"]] = Style(**fields)
    return styles


def negative_prompt(*parts: str) -> str:
    """Negative prompts joined (style, story, panel), empty parts left out, repeats once."""
    seen: list[str] = []
    for part in parts:
        for term in (t.strip() for t in (part or "").split(",")):
            if term and term.lower() not in (s.lower() for s in seen):
                seen.append(term)
    return ", ".join(seen)
