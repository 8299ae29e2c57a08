"""The Characters tab: the cast as a gallery with encoding status, search, the add / edit form
with four mask sources and a mask preview, re-encode, delete with confirmation, zip import/export.

    layout.py   the components, part by part
    view.py     what the tab shows (Studio -> component values)
    form.py     the character form: pick, new, masks, preview, save
    cast.py     the cast: search, re-encode, delete, example cast, import / export
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..session import Sessions
from .cast import wire_cast
from .form import wire_form
from .layout import layout_characters
from .view import CharactersView, painted_mask

__all__ = ["CharactersTab", "build_characters_tab", "painted_mask"]


@dataclass
class CharactersTab:
    """What the app needs to refresh this tab (the cast changes what the storyboard offers)."""

    refresh: object  # (search, request) -> {component: value}
    inputs: list
    outputs: list


def build_characters_tab(sessions: Sessions, *, example_cast_dir: Path | None = None) -> CharactersTab:
    """Lay out the Characters tab inside the current Blocks and wire its parts."""
    tab = layout_characters()
    view = CharactersView(tab)
    wire_form(tab, view, sessions)
    refresh = wire_cast(tab, view, sessions, example_cast_dir)
    return CharactersTab(refresh=refresh, inputs=[tab.cast.search], outputs=[tab.status, *tab.cast.outputs])
