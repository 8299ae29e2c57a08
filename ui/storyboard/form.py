"""The panel form as values: what a handler that saves the panel reads from the page."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..session import Sessions
from .view import number_or_none


@dataclass
class FormValues:
    """One panel form as the browser sent it (numbers may be None, table rows ragged)."""

    prompt: str | None
    ticked: list | None
    seed: float | None
    steps: float | None
    guidance: float | None
    width: float | None
    height: float | None
    router: str | None
    rows: list | None

    def settings(self, studio) -> dict[str, Any]:
        """The panel settings these values mean; ValueError says what is missing or wrong."""
        strengths, layout = {}, {}
        for row in self.rows or []:
            if not row or not str(row[0] or "").strip():
                continue
            character = studio.get_character(str(row[0]).strip())
            strength = number_or_none(row[1] if len(row) > 1 else None)
            if strength is not None and strength != 1.0:
                strengths[character.id] = strength
            box = [number_or_none(v) for v in list(row[2:6]) + [None] * (6 - len(row))]
            if any(v is not None for v in box):
                if any(v is None for v in box):
                    raise ValueError(
                        f"the layout box of {character.name} needs all four numbers x0, y0, x1, y1 (or none)"
                    )
                layout[character.id] = box
        numbers = {"seed": self.seed, "steps": self.steps, "guidance": self.guidance}
        numbers |= {"width": self.width, "height": self.height}
        for what, value in numbers.items():
            if value is None:
                raise ValueError(f"the panel needs a {what}")
        return {
            "prompt": self.prompt or "",
            "characters": list(self.ticked or []),
            "seed": int(self.seed),
            "steps": int(self.steps),
            "guidance": float(self.guidance),
            "width": int(self.width),
            "height": int(self.height),
            "router": self.router,
            "strengths": strengths,
            "layout": layout,
        }


def save_form(studio, panel_id: int | None, form: FormValues):
    """Write the form into its panel (a real change outdates the panel's image). The form lists
    only characters the prompt does not name; ticks the panel had on named ones are kept."""
    if panel_id is None:
        raise ValueError("pick or add a panel first")
    settings = form.settings(studio)
    named = {c.id for c, is_named in studio.panel_cast(studio.get_panel(panel_id)) if is_named}
    kept = [c for c in studio.get_panel(panel_id).characters if c in named and c not in settings["characters"]]
    settings["characters"] = kept + settings["characters"]
    return studio.update_panel(panel_id, **settings)


def form_handler(sessions: Sessions, work: Callable[..., dict], name: str) -> Callable:
    """A handler for `StoryboardLayout.form_inputs`: `work(studio, story_id, panel_id, form)`.

    Its parameters are spelled out: gradio hands gr.Request only to a named parameter.
    """

    def handler(
        story_id, panel_id, prompt, ticked, seed, steps, guidance, width, height, router, rows, request: gr.Request
    ):
        form = FormValues(prompt, ticked, seed, steps, guidance, width, height, router, rows)
        return work(sessions.studio(request), story_id, panel_id, form)

    handler.__name__ = handler.__qualname__ = name
    return handler
