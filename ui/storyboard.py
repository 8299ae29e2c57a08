"""The Storyboard tab: stories, ordered panels with their settings, generation (one, all,
re-roll, cancel) with progress, versions, the router's overlay with a legend, exports, import."""

from __future__ import annotations

import html
import math
import secrets
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from anystory.library import name_key
from anystory.story import ROUTERS, mentioned_names

from .common import (
    CancelEvents,
    error_markdown,
    error_message,
    escape,
    gpu,
    notes_markdown,
    progress_reporter,
    shows_errors,
)

ALL_LAYERS = "all layers"
DISPLAY_MIN_SIDE = 320  # px: smaller images are enlarged on screen (not in exports)
EXPORT_CHOICES = [
    ("PNG strip", "strip"),
    ("PNG page grid", "grid"),
    ("PDF", "pdf"),
    ("CBZ (comic readers)", "cbz"),
    ("Project archive (imports back)", "project"),
]
TABLE_HEADERS = ["Character", "Strength", "x0", "y0", "x1", "y1"]
# aspect -> (width, height) at SDXL's 1024 base; scaled to the Studio's default size.
ASPECTS = {
    "1:1": (1024, 1024),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
}
STATUS_TEXT = {
    "empty": "not generated yet",
    "ready": "ready: the active image matches the settings",
    "outdated": "outdated: the settings changed since the active image",
    "failed": "failed",
}


def aspect_sizes(base_side: int) -> dict[str, tuple[int, int]]:
    """The aspect presets scaled so that 1:1 is base_side square (multiples of 8)."""
    scale = base_side / 1024

    def snap(value: float) -> int:
        return max(64, int(round(value * scale / 8)) * 8)

    return {aspect: (snap(w), snap(h)) for aspect, (w, h) in ASPECTS.items()}


def placeholder(text: str, side: int = 128) -> Image.Image:
    """A grey square with a word, for a panel that has no image yet."""
    picture = Image.new("RGB", (side, side), (225, 225, 225))
    draw = ImageDraw.Draw(picture)
    draw.rectangle([0, 0, side - 1, side - 1], outline=(170, 170, 170), width=2)
    draw.text((10, side // 2 - 6), text, fill=(90, 90, 90))
    return picture


def random_seed() -> int:
    """A fresh seed for a panel added in the UI (so that panels do not all share one noise)."""
    return secrets.randbelow(2**31 - 1)


def short(text: str, length: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1] + "…"


def for_display(picture: Image.Image, min_side: int = DISPLAY_MIN_SIDE) -> Image.Image:
    """Small panels (preview mode) enlarged by a whole factor, pixels kept sharp, so they can be seen."""
    factor = -(-min_side // max(picture.size))
    if factor <= 1:
        return picture
    return picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)


def legend_html(entries: list[tuple[str, str]]) -> str:
    """The overlay's colours as text next to the image: a swatch and a name per entry."""
    items = [
        f'<span class="legend-entry" style="margin-right:14px;white-space:nowrap">'
        f'<span style="display:inline-block;width:14px;height:14px;background:{colour};'
        f'border:1px solid #444;vertical-align:middle;margin-right:5px"></span>{html.escape(name)}</span>'
        for name, colour in entries
    ]
    return f'<div id="overlay-legend-entries">Legend: {"".join(items)}</div>'


def number_or_none(value: Any) -> float | None:
    """A table cell as a number; blank / NaN cells are None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    return None if math.isnan(number) else number


@dataclass
class StoryboardTab:
    """What the app needs to refresh this tab (from app load and tab switches)."""

    refresh: Any  # (story_id, panel_id) -> {component: value}
    inputs: list
    outputs: list


def build_storyboard_tab(studio) -> StoryboardTab:  # noqa: C901 - one function lays out and wires one tab
    """Lay out the Storyboard tab inside the current Blocks and wire its handlers."""
    cancels = CancelEvents()
    defaults = studio.panel_defaults
    sizes = aspect_sizes(int(defaults["width"]))
    status = gr.Markdown(elem_id="storyboard-status")
    with gr.Row(equal_height=True):
        story_pick = gr.Dropdown(label="Story", choices=[], value=None, scale=3, elem_id="story-pick")
        title = gr.Textbox(
            label="Title",
            placeholder="a title for a new story, or a new title for this one",
            scale=3,
            elem_id="story-title",
        )
        create_story = gr.Button("New story", variant="primary", scale=1, elem_id="create-story")
        rename_story = gr.Button("Rename", scale=1, elem_id="rename-story")
    strip = gr.Gallery(
        label="Panels (click one to edit it)",
        columns=6,
        height=200,
        allow_preview=False,
        object_fit="contain",
        fit_columns=False,
        format="png",
        elem_id="panel-strip",
    )
    with gr.Row(equal_height=True):
        panel_pick = gr.Dropdown(label="Panel", choices=[], value=None, scale=4, elem_id="panel-pick")
        add_panel = gr.Button("+ Panel", scale=1, elem_id="add-panel")
        duplicate_panel = gr.Button("Duplicate", scale=1, elem_id="duplicate-panel")
        move_up = gr.Button("↑ Up", scale=1, elem_id="move-up")
        move_down = gr.Button("↓ Down", scale=1, elem_id="move-down")
        delete_panel = gr.Button("Delete", variant="stop", scale=1, elem_id="delete-panel")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="panel-prompt")
            ticked = gr.CheckboxGroup(
                label="Characters in this panel",
                info="Named ones ([Name]) are in already; a ticked one that the prompt does not name is added to it.",
                choices=[],
                elem_id="panel-characters",
            )
            with gr.Row():
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="panel-seed")
                steps = gr.Number(
                    defaults["steps"], label="Steps", precision=0, minimum=1, maximum=1000, elem_id="panel-steps"
                )
                guidance = gr.Number(
                    defaults["guidance"], label="Guidance", minimum=0, maximum=100, step=0.5, elem_id="panel-guidance"
                )
            with gr.Row():
                aspect = gr.Dropdown(
                    label="Aspect",
                    choices=[(f"{a} ({w}×{h})", a) for a, (w, h) in sizes.items()],
                    value=None,
                    elem_id="panel-aspect",
                )
                width = gr.Number(
                    defaults["width"], label="Width", precision=0, minimum=64, step=8, elem_id="panel-width"
                )
                height = gr.Number(
                    defaults["height"], label="Height", precision=0, minimum=64, step=8, elem_id="panel-height"
                )
            router = gr.Radio(
                list(ROUTERS),
                value=defaults["router"],
                label="Router (who goes where)",
                info="learned: the trained router (public weights use prompt instead) · prompt: where each "
                "character's words attend · layout: your boxes · none: no routing",
                elem_id="panel-router",
            )
            per_character = gr.Dataframe(
                headers=TABLE_HEADERS,
                datatype=["str", "number", "number", "number", "number", "number"],
                column_count=len(TABLE_HEADERS),
                type="array",
                interactive=True,
                label="Per character: strength (0-10, 1 = normal) and layout box "
                "(x0, y0, x1, y1 as fractions; blank = none)",
                elem_id="panel-table",
            )
            save_panel = gr.Button("Save panel", elem_id="save-panel")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate-panel")
                reroll = gr.Button("Re-roll (new seed)", elem_id="reroll-panel")
                generate_all = gr.Button("Generate all", variant="primary", elem_id="generate-all")
                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-generation")
        with gr.Column(scale=1):
            panel_status = gr.Markdown(elem_id="panel-status")
            active_image = gr.Image(
                label="Active version", interactive=False, format="png", height=300, elem_id="active-image"
            )
            versions = gr.Gallery(
                label="Versions (click one to inspect it)",
                columns=5,
                height=150,
                allow_preview=False,
                object_fit="contain",
                fit_columns=False,
                format="png",
                elem_id="version-gallery",
            )
            inspected_text = gr.Markdown(elem_id="inspected-version")
            make_active = gr.Button("Make this version active", elem_id="make-active")
            overlay_image = gr.Image(
                label="Routes overlay (who is where)",
                interactive=False,
                format="png",
                height=340,
                elem_id="overlay-image",
            )
            legend = gr.HTML(elem_id="overlay-legend")
            opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Overlay opacity", elem_id="overlay-opacity")
            with gr.Row(visible=False) as record_row:
                grid = gr.Dropdown(
                    label="Layer resolution", choices=[ALL_LAYERS], value=ALL_LAYERS, elem_id="overlay-grid"
                )
                step_from = gr.Slider(0, 1, value=0, step=1, label="From step", elem_id="overlay-step-from")
                step_to = gr.Slider(0, 1, value=1, step=1, label="To step", elem_id="overlay-step-to")
    with gr.Accordion("Export and import", open=True):
        with gr.Row(equal_height=False):
            with gr.Column():
                export_format = gr.Radio(
                    EXPORT_CHOICES, value="pdf", label="Export the active versions as", elem_id="export-format"
                )
                with gr.Row():
                    export_overlay = gr.Checkbox(label="with route overlays", value=False)
                    export_captions = gr.Checkbox(label="with captions", value=True)
                export = gr.Button("Export", elem_id="export-story")
                exported = gr.File(
                    label="Exported files", file_count="multiple", interactive=False, elem_id="exported-files"
                )
            with gr.Column():
                project_archive = gr.File(
                    label="Project archive to import (.zip)",
                    file_types=[".zip"],
                    type="filepath",
                    elem_id="project-archive",
                )
                import_project = gr.Button("Import project", elem_id="import-project")

    version_ids = gr.State([])
    inspected = gr.State(None)  # the version shown in the overlay; None: the active one
    panel_ids = gr.State([])

    view_outputs = [
        story_pick,
        strip,
        panel_ids,
        panel_pick,
        prompt,
        ticked,
        seed,
        steps,
        guidance,
        aspect,
        width,
        height,
        router,
        per_character,
        panel_status,
        active_image,
        versions,
        version_ids,
        inspected,
        inspected_text,
        overlay_image,
        legend,
        record_row,
        grid,
        step_from,
        step_to,
    ]
    form_inputs = [panel_pick, prompt, ticked, seed, steps, guidance, width, height, router, per_character]
    overlay_inputs = [inspected, opacity, grid, step_from, step_to]

    # -- reading the Studio into the view --

    def panel_cast(panel) -> list:
        """The panel's characters: those its prompt names (known ones), then the ticked ones."""
        by_key = {name_key(c.name): c for c in studio.characters()}
        by_id = {c.id: c for c in by_key.values()}
        cast = []
        for name in mentioned_names(panel.prompt):
            character = by_key.get(name_key(name))
            if character is not None and character not in cast:
                cast.append(character)
        for character_id in panel.characters:
            character = by_id.get(character_id)
            if character is not None and character not in cast:
                cast.append(character)
        return cast

    def table_rows(panel) -> list[list]:
        rows = []
        for character in panel_cast(panel):
            box = panel.layout.get(character.id)
            rows.append([character.name, panel.strengths.get(character.id, 1.0), *(box if box else [None] * 4)])
        return rows

    def overlay_view(
        version_id: int | None, opacity_value: float = 0.45, grid_value=ALL_LAYERS, first=None, last=None
    ) -> dict:
        """Overlay image, legend and the record controls for one version."""
        empty = {overlay_image: None, legend: "", record_row: gr.update(visible=False)}
        if version_id is None:
            return empty
        version = studio.stories.get_version(version_id)
        if version.route_map_path is None:
            return {**empty, legend: "<div>No characters in this version, so no routes to show.</div>"}
        grids, recorded_steps = studio.route_record_choices(version_id)
        chosen_grid = None
        step_range = None
        if grids:
            grid_labels = [f"{h}x{w}" for h, w in grids]
            if grid_value in grid_labels:
                chosen_grid = grids[grid_labels.index(grid_value)]
            else:
                grid_value = ALL_LAYERS
            low, high = recorded_steps[0], recorded_steps[-1]
            first = low if first is None else int(min(max(first, low), high))
            last = high if last is None else int(min(max(last, first), high))
            if (first, last) != (low, high):
                step_range = (first, last + 1)
        picture = studio.version_overlay(version_id, float(opacity_value), steps=step_range, grid=chosen_grid)
        view = {overlay_image: for_display(picture), legend: legend_html(studio.version_legend(version_id))}
        if grids:
            view[record_row] = gr.update(visible=True)
            view[grid] = gr.update(choices=[ALL_LAYERS, *grid_labels], value=grid_value)
            many = high > low
            view[step_from] = gr.update(minimum=low, maximum=high if many else low + 1, value=first, interactive=many)
            view[step_to] = gr.update(minimum=low, maximum=high if many else low + 1, value=last, interactive=many)
        else:
            view[record_row] = gr.update(visible=False)
        return view

    def view(story_id: int | None, panel_id: int | None = None, version_id: int | None = None) -> dict:
        """Everything the tab shows for a story and one of its panels."""
        stories = studio.stories.stories()
        if story_id is None or story_id not in {s.id for s in stories}:
            story_id = stories[-1].id if stories else None
        titles = [s.title for s in stories]
        labels = [(s.title if titles.count(s.title) == 1 else f"{s.title} · #{s.id}", s.id) for s in stories]
        out: dict = {story_pick: gr.update(choices=labels, value=story_id)}
        cast_choices = [(c.name, c.id) for c in studio.characters()]
        if story_id is None:
            return {
                **out,
                strip: [],
                panel_ids: [],
                panel_pick: gr.update(choices=[], value=None),
                prompt: "",
                ticked: gr.update(choices=cast_choices, value=[]),
                per_character: [],
                panel_status: "Create a story to start: type a title and click **New story**.",
                active_image: None,
                versions: [],
                version_ids: [],
                inspected: None,
                inspected_text: "",
                **overlay_view(None),
            }
        panels = studio.stories.panels(story_id)
        ids = [p.id for p in panels]
        if panel_id not in ids:
            panel_id = ids[0] if ids else None
        items = []
        for panel in panels:
            picture = (
                studio.version_image(panel.active_version_id)
                if panel.active_version_id is not None
                else placeholder("no image yet")
            )
            items.append((picture, f"{panel.position + 1} · {panel.status}"))
        labels = [(f"Panel {p.position + 1} · {p.status} · {short(p.prompt) or '(no prompt)'}", p.id) for p in panels]
        out.update({strip: items, panel_ids: ids, panel_pick: gr.update(choices=labels, value=panel_id)})
        if panel_id is None:
            return {
                **out,
                prompt: "",
                ticked: gr.update(choices=cast_choices, value=[]),
                per_character: [],
                panel_status: "This story has no panels: click **+ Panel**.",
                active_image: None,
                versions: [],
                version_ids: [],
                inspected: None,
                inspected_text: "",
                **overlay_view(None),
            }
        panel = studio.stories.get_panel(panel_id)
        cast_ids = {character_id for _, character_id in cast_choices}
        named = {c.name for c in panel_cast(panel) if c.id not in panel.characters}
        known = ", ".join(name for name, _ in cast_choices) or "none yet (add some in the Characters tab)"
        kept = studio.stories.versions(panel_id)
        kept_ids = [v.id for v in kept]
        if version_id not in kept_ids:
            version_id = panel.active_version_id
        out.update(
            {
                prompt: gr.update(value=panel.prompt, info=f"Name characters as [Name]. Known: {known}"),
                ticked: gr.update(
                    choices=[(f"{name} (named)" if name in named else name, cid) for name, cid in cast_choices],
                    value=[c for c in panel.characters if c in cast_ids],
                ),
                seed: panel.seed,
                steps: panel.steps,
                guidance: panel.guidance,
                aspect: gr.update(value=next((a for a, s in sizes.items() if s == (panel.width, panel.height)), None)),
                width: panel.width,
                height: panel.height,
                router: panel.router,
                per_character: gr.update(value=table_rows(panel)),
                panel_status: panel_status_text(panel),
                active_image: for_display(studio.version_image(panel.active_version_id))
                if panel.active_version_id
                else None,
                versions: [
                    (
                        studio.version_image(v.id),
                        f"v{n + 1} · seed {v.settings.get('seed')}"
                        + (" · active" if v.id == panel.active_version_id else ""),
                    )
                    for n, v in enumerate(kept)
                ],
                version_ids: kept_ids,
                inspected: version_id,
                inspected_text: inspected_caption(panel, kept, version_id),
                **overlay_view(version_id),
            }
        )
        return out

    def panel_status_text(panel) -> str:
        text = f"**Panel {panel.position + 1}: {STATUS_TEXT.get(panel.status, panel.status)}**"
        if panel.status == "failed" and panel.error:
            text += f" — {escape(panel.error)}"
        if panel.active_version_id is not None:
            settings = studio.stories.get_version(panel.active_version_id).settings
            text += f"\n\nThe model saw: *{escape(settings.get('model_prompt', ''))}*"
            for note in settings.get("notes", []):
                text += f"\n\nNote: {escape(note)}"
        return text

    def inspected_caption(panel, kept, version_id) -> str:
        if version_id is None:
            return ""
        number = [v.id for v in kept].index(version_id) + 1
        settings = kept[number - 1].settings
        state = "the active version" if version_id == panel.active_version_id else "not active"
        router_used = settings.get("router_used") or "none"
        return f"Inspecting **v{number}** ({state}) · seed {settings.get('seed')} · router {router_used}"

    def save_form(
        panel_id,
        prompt_text,
        ticked_ids,
        seed_value,
        steps_value,
        guidance_value,
        width_value,
        height_value,
        router_value,
        rows,
    ):
        """Write the form into the panel (a real change outdates its image)."""
        if panel_id is None:
            raise ValueError("pick or add a panel first")
        strengths, layout = {}, {}
        for row in rows or []:
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
        for value, what in (
            (seed_value, "seed"),
            (steps_value, "steps"),
            (guidance_value, "guidance"),
            (width_value, "width"),
            (height_value, "height"),
        ):
            if value is None:
                raise ValueError(f"the panel needs a {what}")
        return studio.update_panel(
            panel_id,
            prompt=prompt_text or "",
            characters=list(ticked_ids or []),
            seed=int(seed_value),
            steps=int(steps_value),
            guidance=float(guidance_value),
            width=int(width_value),
            height=int(height_value),
            router=router_value,
            strengths=strengths,
            layout=layout,
        )

    # -- handlers --

    @shows_errors(status)
    def show(story_id, panel_id) -> dict:
        return {status: "", **view(story_id, panel_id)}

    @shows_errors(status)
    def pick_story(story_id) -> dict:
        return {status: "", **view(story_id)}

    @shows_errors(status)
    def pick_panel_in_strip(story_id, ids, evt: gr.SelectData) -> dict:
        return {status: "", **view(story_id, ids[evt.index])}

    @shows_errors(status)
    def new_story(story_title) -> dict:
        story = studio.create_story(story_title or "Untitled story")
        panel = studio.add_panel(story.id, "", seed=random_seed())
        return {
            status: notes_markdown([], f"created “{story.title}” with one empty panel"),
            title: "",
            **view(story.id, panel.id),
        }

    @shows_errors(status)
    def rename(story_id, story_title) -> dict:
        if story_id is None:
            raise ValueError("pick a story first")
        story = studio.stories.rename_story(story_id, story_title)
        return {status: notes_markdown([], f"renamed to “{story.title}”"), title: "", **view(story_id)}

    @shows_errors(status)
    def save_panel_now(story_id, *form) -> dict:
        panel = save_form(*form)
        return {status: notes_markdown([], f"saved panel {panel.position + 1}"), **view(story_id, panel.id)}

    @shows_errors(status)
    def new_panel(story_id, *form) -> dict:
        if story_id is None:
            raise ValueError("create a story first")
        if form[0] is not None:
            save_form(*form)
        panel = studio.add_panel(story_id, "", seed=random_seed())
        return {status: notes_markdown([], f"added panel {panel.position + 1}"), **view(story_id, panel.id)}

    @shows_errors(status)
    def duplicate(story_id, *form) -> dict:
        save_form(*form)
        copy = studio.stories.duplicate_panel(form[0])
        return {status: notes_markdown([], f"duplicated as panel {copy.position + 1}"), **view(story_id, copy.id)}

    def mover(offset: int):
        @shows_errors(status)
        def move(story_id, *form) -> dict:
            panel = save_form(*form)
            studio.move_panel(panel.id, max(0, panel.position + offset))
            moved = studio.stories.get_panel(panel.id)
            return {status: notes_markdown([], f"moved to position {moved.position + 1}"), **view(story_id, panel.id)}

        return move

    @shows_errors(status)
    def remove_panel(story_id, panel_id) -> dict:
        if panel_id is None:
            raise ValueError("pick a panel first")
        position = studio.stories.get_panel(panel_id).position
        studio.stories.delete_panel(panel_id)
        return {status: notes_markdown([], f"deleted panel {position + 1} and its versions"), **view(story_id)}

    def run_generation(story_id, form, request, progress, work, *, needs_panel: bool = True) -> dict:
        """Save the form, run `work(story_id, panel_id, progress_callback, cancel_event)`, show the result."""
        panel_id = form[0]
        try:
            if story_id is None:
                raise ValueError("create a story first")
            if panel_id is not None or needs_panel:
                save_form(*form)
            event = cancels.start(request)
            try:
                done = work(story_id, panel_id, progress_reporter(progress), event)
            finally:
                cancels.finish(request)
            return {status: notes_markdown(studio.notes, done), **view(story_id, panel_id)}
        except Exception as err:  # noqa: BLE001 - shown, and the panel shows its failed state
            message = error_message(err)
            gr.Warning(html.escape(message))
            try:
                refreshed = view(story_id, panel_id)
            except Exception:  # noqa: BLE001
                refreshed = {}
            return {**refreshed, status: error_markdown(message)}

    def generation_handler(name: str, work, *, needs_panel: bool = True):
        """A queued handler that saves the panel form, then runs `work`. Its parameters are spelled
        out: gradio hands gr.Request and gr.Progress only to positional parameters."""

        @gpu
        def handler(
            story_id,
            panel_id,
            prompt_text,
            ticked_ids,
            seed_value,
            steps_value,
            guidance_value,
            width_value,
            height_value,
            router_value,
            rows,
            request: gr.Request,
            progress=gr.Progress(),
        ) -> dict:
            form = (
                panel_id,
                prompt_text,
                ticked_ids,
                seed_value,
                steps_value,
                guidance_value,
                width_value,
                height_value,
                router_value,
                rows,
            )
            return run_generation(story_id, form, request, progress, work, needs_panel=needs_panel)

        handler.__name__ = handler.__qualname__ = name
        return handler

    def generate_panel_work(story_id, panel_id, report, event) -> str:
        version = studio.generate_panel(panel_id, progress=report, cancel=event)
        return f"generated panel {studio.stories.get_panel(panel_id).position + 1} (seed {version.settings['seed']})"

    def reroll_panel_work(story_id, panel_id, report, event) -> str:
        version = studio.reroll_panel(panel_id, progress=report, cancel=event)
        return f"re-rolled panel {studio.stories.get_panel(panel_id).position + 1} with seed {version.settings['seed']}"

    def generate_story_work(story_id, panel_id, report, event) -> str:
        made = studio.generate_story(story_id, progress=report, cancel=event)
        return f"generated {len(made)} panel(s); up-to-date panels were kept" if made else "every panel is up to date"

    generate_one = generation_handler("generate_one", generate_panel_work)
    reroll_one = generation_handler("reroll_one", reroll_panel_work)
    generate_every = generation_handler("generate_every", generate_story_work, needs_panel=False)

    def stop(request: gr.Request) -> None:
        """Set this session's cancel event, and say so in a toast: the status line is the
        generation's own, whose answer ("cancelled") may come back before this one does."""
        if cancels.cancel(request):
            gr.Info("Cancelling: the generation stops after the current step.")
        else:
            gr.Info("Nothing of yours is generating.")

    @shows_errors(status)
    def pick_version(story_id, panel_id, ids, evt: gr.SelectData) -> dict:
        return {status: "", **view(story_id, panel_id, ids[evt.index])}

    @shows_errors(status)
    def activate(story_id, panel_id, version_id) -> dict:
        if panel_id is None or version_id is None:
            raise ValueError("click a version first")
        studio.set_active_version(panel_id, version_id, restore_settings=True)
        return {
            status: notes_markdown([], "made it the active version; the panel has the settings that made it again"),
            **view(story_id, panel_id, version_id),
        }

    @shows_errors(status)
    def redraw_overlay(version_id, opacity_value, grid_value, first, last) -> dict:
        return {status: "", **overlay_view(version_id, opacity_value, grid_value, first, last)}

    def pick_aspect(choice) -> dict:
        if choice not in sizes:
            return {}
        w, h = sizes[choice]
        return {width: w, height: h}

    @shows_errors(status)
    def export_now(story_id, fmt, with_overlay, with_captions) -> dict:
        if story_id is None:
            raise ValueError("pick a story first")
        files = studio.export_story(story_id, fmt, overlay=bool(with_overlay), captions=bool(with_captions))
        names = ", ".join(f.name for f in files)
        return {
            status: notes_markdown(studio.notes if fmt == "project" else [], f"exported {names}"),
            exported: [str(f) for f in files],
        }

    @shows_errors(status)
    def import_now(path) -> dict:
        if path is None:
            raise ValueError("choose a project archive (.zip) first")
        story = studio.import_project(path)
        return {
            status: notes_markdown(studio.notes, f"imported “{story.title}”"),
            project_archive: None,
            **view(story.id),
        }

    # -- wiring (UI events are private; the named API lives in ui/api.py) --

    private = {"api_visibility": "private"}
    with_status = [status, *view_outputs]
    story_pick.input(pick_story, [story_pick], with_status, **private)
    panel_pick.input(show, [story_pick, panel_pick], with_status, **private)
    strip.select(pick_panel_in_strip, [story_pick, panel_ids], with_status, **private)
    create_story.click(new_story, [title], [title, *with_status], **private)
    rename_story.click(rename, [story_pick, title], [title, *with_status], **private)
    save_panel.click(save_panel_now, [story_pick, *form_inputs], with_status, **private)
    add_panel.click(new_panel, [story_pick, *form_inputs], with_status, **private)
    duplicate_panel.click(duplicate, [story_pick, *form_inputs], with_status, **private)
    move_up.click(mover(-1), [story_pick, *form_inputs], with_status, **private)
    move_down.click(mover(+1), [story_pick, *form_inputs], with_status, **private)
    delete_panel.click(remove_panel, [story_pick, panel_pick], with_status, **private)
    generating = {"concurrency_id": "model", "show_progress_on": [active_image], **private}
    generate.click(generate_one, [story_pick, *form_inputs], with_status, **generating)
    reroll.click(reroll_one, [story_pick, *form_inputs], with_status, **generating)
    generate_all.click(generate_every, [story_pick, *form_inputs], with_status, **generating)
    cancel.click(stop, None, None, **private)  # queued: a toast needs the queue (its own concurrency group, not "model")
    versions.select(pick_version, [story_pick, panel_pick, version_ids], with_status, **private)
    make_active.click(activate, [story_pick, panel_pick, inspected], with_status, **private)
    overlay_outputs = [status, overlay_image, legend, record_row, grid, step_from, step_to]
    opacity.release(redraw_overlay, overlay_inputs, overlay_outputs, show_progress="hidden", **private)
    grid.input(redraw_overlay, overlay_inputs, overlay_outputs, **private)
    step_from.release(redraw_overlay, overlay_inputs, overlay_outputs, show_progress="hidden", **private)
    step_to.release(redraw_overlay, overlay_inputs, overlay_outputs, show_progress="hidden", **private)
    aspect.input(pick_aspect, [aspect], [width, height], **private)
    export.click(
        export_now, [story_pick, export_format, export_overlay, export_captions], [status, exported], **private
    )
    import_project.click(import_now, [project_archive], [status, project_archive, *view_outputs], **private)

    return StoryboardTab(refresh=show, inputs=[story_pick, panel_pick], outputs=with_status)
