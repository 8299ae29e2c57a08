"""The Characters tab: the cast as a gallery, search, encoding status, add / edit form with the
four mask sources, mask preview, re-encode, delete with confirmation, import / export (zip)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from .common import escape, gpu, notes_markdown, shows_errors

MASK_FROM_ALPHA = "Alpha channel of the picture"
MASK_UPLOADED = "Uploaded mask"
MASK_PAINTED = "Painted mask"
MASK_SAVED = "Keep the saved mask"
MASK_SOURCES = [MASK_FROM_ALPHA, MASK_UPLOADED, MASK_PAINTED]
CAST_TABLE_HEADERS = ["Name", "Description", "Encoding", "Used in"]
EXAMPLE_CAST_DIR = Path(__file__).resolve().parent.parent / "assets" / "cast"


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


def add_example_cast(studio, folder: str | Path = EXAMPLE_CAST_DIR) -> list[str]:
    """Add the built-in cast (assets/cast); names already in the library are left as they are."""
    folder = Path(folder)
    entries = json.loads((folder / "cast.json").read_text(encoding="utf-8"))["characters"]
    known = {name.casefold() for name in studio.library.names()}
    added = []
    for entry in entries:
        if entry["name"].casefold() in known:
            continue
        studio.add_character(entry["name"], entry["description"], str(folder / entry["file"]))
        added.append(entry["name"])
    return added


@dataclass
class CharactersTab:
    """The components other parts of the app refresh (the cast changes what the storyboard offers)."""

    studio: Any
    status: gr.Markdown
    gallery: gr.Gallery
    table: gr.Dataframe
    shown_ids: gr.State
    example_row: gr.Row
    search: gr.Textbox
    refresh: Any = None  # (search) -> {component: value}: the cast as it is now

    @property
    def refresh_inputs(self) -> list:
        return [self.search]

    @property
    def refresh_outputs(self) -> list:
        return [self.status, self.gallery, self.table, self.shown_ids, self.example_row]

    def cast_view(self, search: str = "") -> dict:
        """Gallery, table and the ids shown, for a search (empty: everyone)."""
        studio = self.studio
        characters = studio.characters(search)
        items, rows = [], []
        for character in characters:
            state = studio.encoding_status(character)
            items.append((load_picture(character.thumbnail_path), f"{character.name} · {state}"))
            used = [f"{story.title} #{panel.position + 1}" for story, panel in studio.panels_using(character.id)]
            rows.append([character.name, character.description, state, ", ".join(used) or "—"])
        return {
            self.gallery: gr.update(value=items, selected_index=None),
            self.table: gr.update(value=rows, headers=CAST_TABLE_HEADERS),
            self.shown_ids: [c.id for c in characters],
            self.example_row: gr.update(visible=not studio.library.names()),
        }


def build_characters_tab(studio, *, example_cast_dir: Path | None = EXAMPLE_CAST_DIR) -> CharactersTab:
    """Lay out the Characters tab inside the current Blocks and wire its handlers."""
    status = gr.Markdown(elem_id="characters-status")
    with gr.Row(visible=False) as example_row:
        gr.Markdown(
            "Your cast is empty. Start with ours: Mia (a girl with a red scarf), Rex (a brown dog) and Bolt (a robot)."
        )
        add_examples = gr.Button("Add the example cast", variant="secondary", elem_id="add-example-cast")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            search = gr.Textbox(label="Search", placeholder="a name or words of a description", elem_id="cast-search")
            gallery = gr.Gallery(
                label="Cast (click one to edit it)",
                columns=4,
                height=300,
                allow_preview=False,
                object_fit="contain",
                format="png",
                elem_id="cast-gallery",
            )
            table = gr.Dataframe(
                headers=CAST_TABLE_HEADERS,
                datatype=["str", "str", "str", "str"],
                interactive=False,
                wrap=True,
                label="Encodings (ready: stored for the loaded weights · stale: made by other weights, "
                "encoded again on first use · missing)",
                elem_id="cast-table",
            )
            with gr.Row():
                reencode = gr.Button("Re-encode", elem_id="reencode-character")
                delete = gr.Button("Delete…", variant="stop", elem_id="delete-character")
            with gr.Group(visible=False) as confirm_box:
                confirm_text = gr.Markdown(elem_id="delete-confirm-text")
                with gr.Row():
                    confirm_delete = gr.Button("Yes, delete", variant="stop", elem_id="confirm-delete")
                    keep = gr.Button("No, keep it", elem_id="cancel-delete")
            with gr.Accordion("Import / export the cast (zip)", open=False):
                with gr.Row():
                    export_cast = gr.Button("Export the cast", elem_id="export-cast")
                    exported = gr.File(label="Cast archive", interactive=False)
                archive = gr.File(label="Cast archive to import", file_types=[".zip"], type="filepath")
                on_clash = gr.Radio(
                    [("rename the imported one", "rename"), ("skip it", "skip")],
                    value="rename",
                    label="When a name is already in the cast",
                )
                import_cast = gr.Button("Import", elem_id="import-cast")
        with gr.Column(scale=2):
            form_title = gr.Markdown("### New character", elem_id="character-form-title")
            name = gr.Textbox(label="Name", placeholder="Mia", elem_id="character-name")
            description = gr.Textbox(
                label="Description (used in prompts)",
                placeholder="a young woman with a red scarf",
                info="[Name] in a panel prompt is replaced by these words.",
                elem_id="character-description",
            )
            picture = gr.Image(
                label="Reference picture (a transparent PNG gives the mask at once)",
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                format="png",
                height=260,
                elem_id="character-picture",
            )
            mask_source = gr.Radio(MASK_SOURCES, value=MASK_FROM_ALPHA, label="Mask", elem_id="mask-source")
            with gr.Group(visible=False) as upload_box:
                mask_upload = gr.Image(
                    label="Mask (white or opaque = the character)",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    format="png",
                    height=220,
                    elem_id="mask-upload",
                )
            with gr.Group(visible=False) as paint_box:
                mask_painter = gr.ImageEditor(
                    label="Paint over the character",
                    type="pil",
                    image_mode="RGBA",
                    sources=[],
                    transforms=[],
                    layers=False,
                    brush=gr.Brush(colors=["#ff2d55"], color_mode="fixed", default_size=24),
                    format="png",
                    height=320,
                    elem_id="mask-painter",
                )
            with gr.Row():
                auto = gr.Button("Auto mask", elem_id="auto-mask")
                preview = gr.Button("Preview mask", elem_id="preview-mask")
            mask_preview = gr.Image(
                label="Mask preview (outside the mask is tinted)",
                interactive=False,
                format="png",
                height=220,
                elem_id="mask-preview",
            )
            with gr.Row():
                save = gr.Button("Add character", variant="primary", elem_id="save-character")
                new = gr.Button("New character", elem_id="new-character")
    selected = gr.State(None)  # id of the character being edited; None: a new one
    shown_ids = gr.State([])

    tab = CharactersTab(studio, status, gallery, table, shown_ids, example_row, search)
    cast_outputs = [gallery, table, shown_ids, example_row]
    form = [
        selected,
        form_title,
        name,
        description,
        picture,
        mask_source,
        mask_upload,
        mask_painter,
        mask_preview,
        save,
    ]

    def blank_form() -> dict:
        return {
            selected: None,
            form_title: "### New character",
            name: "",
            description: "",
            picture: None,
            mask_source: gr.update(choices=MASK_SOURCES, value=MASK_FROM_ALPHA),
            mask_upload: None,
            mask_painter: None,
            mask_preview: None,
            save: gr.update(value="Add character"),
        }

    def edit_form(character) -> dict:
        picture_copy = load_picture(character.image_path)
        return {
            selected: character.id,
            form_title: f"### Editing {escape(character.name)}",
            name: character.name,
            description: character.description,
            picture: picture_copy,
            mask_source: gr.update(choices=[MASK_SAVED, *MASK_SOURCES], value=MASK_SAVED),
            mask_upload: load_picture(character.mask_path),
            mask_painter: {"background": picture_copy, "layers": [], "composite": None},
            mask_preview: studio.mask_preview(character.image_path, character.mask_path)[0],
            save: gr.update(value="Save changes"),
        }

    def form_mask(source: str, character_id: int | None, upload: str | None, painting: dict | None):
        if source == MASK_FROM_ALPHA:
            return None
        if source == MASK_UPLOADED:
            if upload is None:
                raise ValueError("upload a mask first, or choose another mask source")
            return upload
        if source == MASK_PAINTED:
            mask = painted_mask(painting)
            if mask is None:
                raise ValueError("paint over the picture first (upload the picture, then paint with the brush)")
            return mask
        if character_id is None:
            raise ValueError("there is no saved mask for a new character; choose another mask source")
        return str(studio.get_character(character_id).mask_path)

    # -- handlers --

    @shows_errors(status)
    def show_cast(query: str) -> dict:
        return {status: "", **tab.cast_view(query)}

    tab.refresh = show_cast

    @shows_errors(status)
    def pick_character(ids: list[int], evt: gr.SelectData) -> dict:
        character = studio.get_character(ids[evt.index])
        return {status: "", confirm_box: gr.update(visible=False), **edit_form(character)}

    @shows_errors(status)
    def start_new() -> dict:
        return {status: "", confirm_box: gr.update(visible=False), **blank_form()}

    def show_mask_tools(source: str) -> dict:
        return {
            upload_box: gr.update(visible=source == MASK_UPLOADED),
            paint_box: gr.update(visible=source == MASK_PAINTED),
        }

    def picture_to_painter(path: str | None, source: str) -> dict:
        """A new picture: paint over it, and its own alpha replaces the saved mask (sizes may differ)."""
        source = MASK_FROM_ALPHA if source == MASK_SAVED else source
        if path is None:
            return {mask_painter: None, mask_preview: None, mask_source: source}
        painter = {"background": load_picture(path), "layers": [], "composite": None}
        return {mask_painter: painter, mask_preview: None, mask_source: source}

    @shows_errors(status)
    def auto_mask(path: str | None) -> dict:
        if path is None:
            raise ValueError("upload a reference picture first")
        mask = studio.auto_mask(path)
        preview_image, warnings = studio.mask_preview(path, mask)
        return {
            status: notes_markdown(warnings, "automatic mask made: check the preview"),
            mask_upload: mask,
            mask_source: MASK_UPLOADED,
            upload_box: gr.update(visible=True),
            paint_box: gr.update(visible=False),
            mask_preview: preview_image,
        }

    @shows_errors(status)
    def preview_mask(character_id, path, source, upload, painting) -> dict:
        if path is None:
            raise ValueError("upload a reference picture first")
        preview_image, warnings = studio.mask_preview(path, form_mask(source, character_id, upload, painting))
        return {
            status: notes_markdown(warnings, "mask preview: the tinted part is left out"),
            mask_preview: preview_image,
        }

    @gpu
    @shows_errors(status)
    def save_character(character_id, new_name, new_description, path, source, upload, painting, query) -> dict:
        if path is None:
            raise ValueError("choose a reference picture for the character")
        mask = form_mask(source, character_id, upload, painting)
        if character_id is None:
            character = studio.add_character(new_name, new_description, path, mask)
            done = f"added {character.name} (encoded once, stored)"
        else:
            old = studio.get_character(character_id)
            if source == MASK_SAVED and same_pixels(path, old.image_path):
                character = studio.update_character(character_id, name=new_name, description=new_description)
                done = f"saved {character.name}"
            else:
                character = studio.update_character(
                    character_id, name=new_name, description=new_description, image=path, mask=mask
                )
                done = f"saved {character.name} with its new picture or mask (encoded again)"
        return {status: notes_markdown(studio.notes, done), **tab.cast_view(query), **edit_form(character)}

    @gpu
    @shows_errors(status)
    def reencode_character(character_id, query) -> dict:
        if character_id is None:
            raise ValueError("click a character in the cast first")
        character = studio.reencode_character(character_id)
        return {status: notes_markdown(studio.notes, f"{character.name} encoded again"), **tab.cast_view(query)}

    @shows_errors(status)
    def ask_delete(character_id) -> dict:
        if character_id is None:
            raise ValueError("click a character in the cast first")
        character = studio.get_character(character_id)
        users = studio.panels_using(character_id)
        if users:
            where = ", ".join(f"“{story.title}” panel {panel.position + 1}" for story, panel in users)
            text = (
                f"Delete **{escape(character.name)}**? It is used by {escape(where)}. "
                f"It will be unticked there; prompts that name [{escape(character.name)}] must then be edited."
            )
        else:
            text = f"Delete **{escape(character.name)}**? No panel uses it."
        return {status: "", confirm_box: gr.update(visible=True), confirm_text: text}

    @shows_errors(status)
    def delete_character(character_id, query) -> dict:
        if character_id is None:
            raise ValueError("click a character in the cast first")
        gone = studio.get_character(character_id).name
        studio.delete_character(character_id, force=True)
        return {
            status: notes_markdown([], f"deleted {gone}"),
            confirm_box: gr.update(visible=False),
            **tab.cast_view(query),
            **blank_form(),
        }

    def keep_character() -> dict:
        return {confirm_box: gr.update(visible=False)}

    @shows_errors(status)
    def export_the_cast() -> dict:
        if not studio.library.names():
            raise ValueError("the cast is empty: nothing to export")
        path = studio.export_characters(studio.exports_dir / "cast.zip")
        return {status: notes_markdown([], "cast exported: download it below"), exported: str(path)}

    @shows_errors(status)
    def import_the_cast(path, clash, query) -> dict:
        if path is None:
            raise ValueError("choose a cast archive (.zip) to import")
        imported = studio.import_characters(path, clash)
        names = ", ".join(c.name for c in imported) or "nobody (every name was already in the cast)"
        return {status: notes_markdown(studio.notes, f"imported {names}"), archive: None, **tab.cast_view(query)}

    @gpu
    @shows_errors(status)
    def add_examples_now(query) -> dict:
        added = add_example_cast(studio, example_cast_dir)
        return {status: notes_markdown(studio.notes, f"added {', '.join(added) or 'nobody'}"), **tab.cast_view(query)}

    # -- wiring (UI-only events: hidden from the API page; the named API is in ui/api.py) --

    private = {"api_visibility": "private"}
    search.change(show_cast, [search], [status, *cast_outputs], show_progress="hidden", **private)
    gallery.select(pick_character, [shown_ids], [status, confirm_box, *form], **private)
    new.click(start_new, None, [status, confirm_box, *form], **private)
    mask_source.change(show_mask_tools, [mask_source], [upload_box, paint_box], show_progress="hidden", **private)
    new_picture_outputs = [mask_painter, mask_preview, mask_source]
    picture.upload(picture_to_painter, [picture, mask_source], new_picture_outputs, **private)
    picture.clear(picture_to_painter, [picture, mask_source], new_picture_outputs, **private)
    auto.click(auto_mask, [picture], [status, mask_upload, mask_source, upload_box, paint_box, mask_preview], **private)
    mask_inputs = [selected, picture, mask_source, mask_upload, mask_painter]
    preview.click(preview_mask, mask_inputs, [status, mask_preview], **private)
    save.click(
        save_character,
        [selected, name, description, picture, mask_source, mask_upload, mask_painter, search],
        [status, *cast_outputs, *form],
        concurrency_id="model",
        **private,
    )
    reencode.click(reencode_character, [selected, search], [status, *cast_outputs], concurrency_id="model", **private)
    delete.click(ask_delete, [selected], [status, confirm_box, confirm_text], **private)
    confirm_delete.click(delete_character, [selected, search], [status, confirm_box, *cast_outputs, *form], **private)
    keep.click(keep_character, None, [confirm_box], **private)
    export_cast.click(export_the_cast, None, [status, exported], **private)
    import_cast.click(import_the_cast, [archive, on_clash, search], [status, archive, *cast_outputs], **private)
    add_examples.click(add_examples_now, [search], [status, *cast_outputs], concurrency_id="model", **private)
    return tab
