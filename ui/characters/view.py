"""What the Characters tab shows: the cast (gallery + table) and the form (new or editing)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from ..common import escape
from .layout import CAST_TABLE_HEADERS, MASK_FROM_ALPHA, MASK_SAVED, MASK_SOURCES, CharactersLayout


def load_picture(path: str | Path) -> Image.Image:
    """A copy of a picture file, fully read (the file can go away afterwards)."""
    with Image.open(path) as picture:
        picture.load()
        return picture.copy()


def painted_mask(editor_value: dict | None) -> Image.Image | None:
    """The union of the painted layers' alpha, at the size of the editor's background."""
    if not editor_value or editor_value.get("background") is None:
        return None
    background = editor_value["background"]
    size = background.size
    union = np.zeros((size[1], size[0]), dtype=np.uint8)
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.NEAREST)
        union = np.maximum(union, np.asarray(alpha))
    return Image.fromarray(union, "L")


def same_pixels(path_a: str | Path, path_b: str | Path) -> bool:
    """Whether two picture files hold the same pixels (an edit form round-trips the stored PNG)."""
    try:
        a, b = load_picture(path_a), load_picture(path_b)
    except OSError:
        return False
    return a.size == b.size and a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))


def used_in(users: list) -> str:
    """Where a character is used, by story: "The lighthouse: panels 1, 3 · The walk: panel 2"."""
    by_story: dict[int, tuple[str, list[int]]] = {}
    for story, panel in users:
        by_story.setdefault(story.id, (story.title, []))[1].append(panel.position + 1)
    parts = []
    for title, numbers in by_story.values():
        word = "panel" if len(numbers) == 1 else "panels"
        parts.append(f"{title}: {word} {', '.join(map(str, numbers))}")
    return " · ".join(parts) or "—"


class CharactersView:
    def __init__(self, tab: CharactersLayout):
        self.tab = tab

    def cast(self, studio, search: str = "") -> dict:
        """Gallery, table and the ids shown, for a search (empty: everyone)."""
        cast = self.tab.cast
        characters = studio.characters(search)
        items, rows = [], []
        for character in characters:
            state = studio.encoding_status(character)
            items.append((load_picture(character.thumbnail_path), f"{character.name} · {state}"))
            rows.append([character.name, character.description, state, used_in(studio.panels_using(character.id))])
        return {
            cast.gallery: gr.update(value=items, selected_index=None),
            cast.table: gr.update(value=rows, headers=CAST_TABLE_HEADERS),
            cast.shown_ids: [c.id for c in characters],
            cast.example_row: gr.update(visible=not studio.character_names()),
        }

    def blank_form(self) -> dict:
        form = self.tab.form
        return {
            form.selected: None,
            form.title: "### New character",
            form.name: "",
            form.description: "",
            form.picture: None,
            form.mask_source: gr.update(choices=MASK_SOURCES, value=MASK_FROM_ALPHA),
            form.mask_upload: None,
            form.mask_painter: None,
            form.mask_preview: None,
            form.save: gr.update(value="Add character"),
        }

    def edit_form(self, studio, character) -> dict:
        form = self.tab.form
        picture = load_picture(character.image_path)
        return {
            form.selected: character.id,
            form.title: f"### Editing {escape(character.name)}",
            form.name: character.name,
            form.description: character.description,
            form.picture: picture,
            form.mask_source: gr.update(choices=[MASK_SAVED, *MASK_SOURCES], value=MASK_SAVED),
            form.mask_upload: load_picture(character.mask_path),
            form.mask_painter: {"background": picture, "layers": [], "composite": None},
            form.mask_preview: studio.mask_preview(character.image_path, character.mask_path)[0],
            form.save: gr.update(value="Save changes"),
        }
