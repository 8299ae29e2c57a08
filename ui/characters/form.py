"""The character form: pick a character to edit or start a new one, choose the mask's source
(alpha, upload, painting, automatic), preview the mask, save (encoded once)."""

from __future__ import annotations

import html

import gradio as gr

from ..common import MODEL, error_markdown, error_message, gpu, notes_markdown, shows_errors
from ..session import Sessions
from .layout import MASK_FROM_ALPHA, MASK_PAINTED, MASK_SAVED, MASK_UPLOADED, CharactersLayout
from .view import CharactersView, painted_mask, same_pixels

PRIVATE = {"api_visibility": "private"}  # UI events stay off the API page; the named API is ui/api.py


def form_mask(studio, source: str, character_id: int | None, upload: str | None, painting: dict | None):
    """The mask the form asks for: None (the picture's alpha), a file, or a painted picture."""
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


def save_character(studio, character_id, name, description, path, source, mask) -> tuple[object, str]:
    """Add, or save an edit (encoded again only when the picture or the mask changed)."""
    if character_id is None:
        character = studio.add_character(name, description, path, mask)
        return character, f"added {character.name} (encoded once, stored)"
    old = studio.get_character(character_id)
    if source == MASK_SAVED and same_pixels(path, old.image_path):
        character = studio.update_character(character_id, name=name, description=description)
        return character, f"saved {character.name}"
    character = studio.update_character(character_id, name=name, description=description, image=path, mask=mask)
    return character, f"saved {character.name} with its new picture or mask (encoded again)"


def wire_form(tab: CharactersLayout, view: CharactersView, sessions: Sessions) -> None:
    status, form, cast = tab.status, tab.form, tab.cast

    @shows_errors(status)
    def pick(ids, evt: gr.SelectData, request: gr.Request) -> dict:
        studio = sessions.studio(request)
        character = studio.get_character(ids[evt.index])
        return {status: "", cast.confirm_box: gr.update(visible=False), **view.edit_form(studio, character)}

    @shows_errors(status)
    def start_new() -> dict:
        return {status: "", cast.confirm_box: gr.update(visible=False), **view.blank_form()}

    def show_mask_tools(source: str) -> dict:
        return {
            form.upload_box: gr.update(visible=source == MASK_UPLOADED),
            form.paint_box: gr.update(visible=source == MASK_PAINTED),
        }

    def new_picture(path: str | None, source: str, request: gr.Request) -> dict:
        """A new picture: checked at once (a bad one is refused in words and taken away), painted
        over, and its own alpha replaces the saved mask (sizes may differ)."""
        source = MASK_FROM_ALPHA if source == MASK_SAVED else source
        if path is None:
            return {form.mask_painter: None, form.mask_preview: None, form.mask_source: source, status: ""}
        try:
            picture = sessions.studio(request).read_picture(path)
        except Exception as err:  # noqa: BLE001 - refused pictures become a message
            message = error_message(err)
            gr.Warning(html.escape(message))
            empty = {form.picture: None, form.mask_painter: None, form.mask_preview: None}
            return {**empty, form.mask_source: source, status: error_markdown(message)}
        painter = {"background": picture, "layers": [], "composite": None}
        return {form.mask_painter: painter, form.mask_preview: None, form.mask_source: source, status: ""}

    @shows_errors(status)
    def auto_mask(path: str | None, request: gr.Request) -> dict:
        if path is None:
            raise ValueError("upload a reference picture first")
        studio = sessions.studio(request)
        mask = studio.auto_mask(path)
        preview, warnings = studio.mask_preview(path, mask)
        return {
            status: notes_markdown(warnings, "automatic mask made: check the preview"),
            form.mask_upload: mask,
            form.mask_source: MASK_UPLOADED,
            form.upload_box: gr.update(visible=True),
            form.paint_box: gr.update(visible=False),
            form.mask_preview: preview,
        }

    @shows_errors(status)
    def preview_mask(character_id, path, source, upload, painting, request: gr.Request) -> dict:
        if path is None:
            raise ValueError("upload a reference picture first")
        studio = sessions.studio(request)
        preview, warnings = studio.mask_preview(path, form_mask(studio, source, character_id, upload, painting))
        return {
            status: notes_markdown(warnings, "mask preview: the tinted part is left out"),
            form.mask_preview: preview,
        }

    @gpu
    @shows_errors(status)
    def save(character_id, name, description, path, source, upload, painting, query, request: gr.Request) -> dict:
        if path is None:
            raise ValueError("choose a reference picture for the character")
        studio = sessions.studio(request)
        mask = form_mask(studio, source, character_id, upload, painting)
        character, done = save_character(studio, character_id, name, description, path, source, mask)
        return {
            status: notes_markdown(studio.notes, done),
            **view.cast(studio, query),
            **view.edit_form(studio, character),
        }

    cast.gallery.select(pick, [cast.shown_ids], [status, cast.confirm_box, *form.outputs], **PRIVATE)
    form.new.click(start_new, None, [status, cast.confirm_box, *form.outputs], **PRIVATE)
    tools = [form.upload_box, form.paint_box]
    form.mask_source.change(show_mask_tools, [form.mask_source], tools, show_progress="hidden", **PRIVATE)
    picture_outputs = [form.picture, form.mask_painter, form.mask_preview, form.mask_source, status]
    form.picture.upload(new_picture, [form.picture, form.mask_source], picture_outputs, **PRIVATE)
    form.picture.clear(new_picture, [form.picture, form.mask_source], picture_outputs, **PRIVATE)
    auto_outputs = [status, form.mask_upload, form.mask_source, *tools, form.mask_preview]
    form.auto.click(auto_mask, [form.picture], auto_outputs, **PRIVATE)
    form.preview.click(preview_mask, form.mask_inputs, [status, form.mask_preview], **PRIVATE)
    save_inputs = [form.selected, form.name, form.description, form.picture, form.mask_source]
    save_inputs += [form.mask_upload, form.mask_painter, cast.search]
    save_outputs = [status, *cast.outputs, *form.outputs]
    form.save.click(save, save_inputs, save_outputs, **MODEL, **PRIVATE)
