"""The Storyboard tab: stories of ordered panels, the panel form, generation with progress and
Cancel, versions, the router's overlay, exports and imports.

    layout.py      the components, part by part (the page's layout)
    view.py        what the tab shows for a story / panel / version (Studio -> component values)
    form.py        the panel form as values (page -> panel settings)
    panels.py      stories and panels: pick, create, rename, save, add, duplicate, move, delete
    generation.py  generate, re-roll, generate all, cancel
    versions.py    inspect a version, make it active, redraw the overlay
    files.py       export and import
    lines.py       a panel's lines (speech bubbles): add, remove, show / hide
    control.py     a panel's control picture (ControlNet): use one, edges from a photo, remove
    lora.py        LoRA styles: the story's, a panel's own or none, with weights
    storage.py     the data folder's size and free space; delete old versions
"""

from __future__ import annotations

from dataclasses import dataclass

from ..session import Sessions
from .control import wire_control
from .files import wire_files
from .generation import Generation
from .layout import StoryboardLayout, layout_storyboard
from .lines import wire_lines
from .lora import wire_lora
from .panels import wire_panels, wire_stories
from .storage import wire_storage
from .versions import wire_versions
from .view import StoryboardView


@dataclass
class StoryboardTab:
    """What the app needs to refresh this tab (from app load and tab switches)."""

    refresh: object  # (story_id, panel_id, request) -> {component: value}
    inputs: list
    outputs: list


def build_storyboard_tab(sessions: Sessions) -> StoryboardTab:
    """Lay out the Storyboard tab inside the current Blocks and wire its parts."""
    tab: StoryboardLayout = layout_storyboard(sessions.panel_defaults, sessions.routers)
    view = StoryboardView(tab)
    wire_stories(tab, view, sessions)
    refresh = wire_panels(tab, view, sessions)
    Generation(tab, view, sessions).wire()
    wire_versions(tab, view, sessions)
    wire_files(tab, view, sessions)
    wire_storage(tab, view, sessions)
    wire_lines(tab, view, sessions)
    wire_control(tab, view, sessions)
    wire_lora(tab, view, sessions)
    return StoryboardTab(refresh=refresh, inputs=[tab.bar.story_pick, tab.strip.panel_pick], outputs=tab.view_outputs)


__all__ = ["StoryboardTab", "build_storyboard_tab"]
