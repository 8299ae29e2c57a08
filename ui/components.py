"""Gradio components of our own (the browser side is Gradio's own)."""

from __future__ import annotations

import gradio as gr


class PictureUpload(gr.Image):
    """An image upload whose file reaches the handler undecoded.

    gr.Image opens every upload with Pillow before any handler runs: a corrupt picture or a text
    file named .jpg then fails inside Gradio, and every output of the event shows a bare "Error".
    This one hands over the uploaded file's path as it is; the Studio decodes it (with its limits
    and bomb guard) and says what is wrong in words. It is drawn by Gradio's own Image front end.
    """

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload):
        if payload is not None and getattr(payload, "path", None) and not str(payload.url or "").startswith("data:"):
            return str(payload.path)
        try:
            return super().preprocess(payload)
        except Exception as err:  # noqa: BLE001 - a pasted picture Pillow cannot read
            raise gr.Error(f"the picture is not readable: {err}", print_exception=False) from err
