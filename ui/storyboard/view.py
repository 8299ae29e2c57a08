"""What the Storyboard tab shows for a story, one of its panels and one of its versions.

`render` reads the Studio and returns {component: value} for every component of
`StoryboardLayout.view_outputs`; the handlers call it after their one Studio call, so the tab
never shows a stale part.
"""

from __future__ import annotations

import html
import math
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from ..common import escape
from .layout import ALL_LAYERS, RouteOverlay, StoryboardLayout

DISPLAY_MIN_SIDE = 320  # px: smaller images are enlarged on screen (not in exports)
STATUS_TEXT = {
    "empty": "not generated yet",
    "ready": "ready: the active image matches the settings",
    "outdated": "outdated: the settings changed since the active image",
    "failed": "failed",
    "attention": "needs attention",
}
EMPTY_STORYBOARD = "No story yet: type a title above and click **New story**."
NO_PANELS = "This story has no panels: click **+ Panel**."


def placeholder(text: str, side: int = 128) -> Image.Image:
    """A grey square with a word, for a panel that has no image yet."""
    picture = Image.new("RGB", (side, side), (225, 225, 225))
    draw = ImageDraw.Draw(picture)
    draw.rectangle([0, 0, side - 1, side - 1], outline=(170, 170, 170), width=2)
    draw.text((10, side // 2 - 6), text, fill=(90, 90, 90))
    return picture


def short(text: str, length: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= length else text[: length - 1] + "…"


def for_display(picture: Image.Image, min_side: int = DISPLAY_MIN_SIDE) -> Image.Image:
    """Small panels (preview mode) enlarged by a whole factor, pixels kept sharp, so they can be seen."""
    factor = -(-min_side // max(picture.size))
    if factor <= 1:
        return picture
    return picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)


def number_or_none(value: Any) -> float | None:
    """A table cell as a number; blank / NaN cells are None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def story_labels(stories: list) -> list[tuple[str, int]]:
    """Dropdown labels: the title, with the id where two stories share one."""
    titles = [s.title for s in stories]
    return [(s.title if titles.count(s.title) == 1 else f"{s.title} · #{s.id}", s.id) for s in stories]


def legend_html(entries: list[tuple[str, str]]) -> str:
    """The overlay's one legend, beside the picture: a swatch and a name per character, and the
    background's hatching."""
    items = []
    for name, colour in entries:
        if name == "background":
            swatch = "background:repeating-linear-gradient(45deg,#6e6e6e 0 2px,#fff 2px 7px)"
        else:
            swatch = f"background:{colour}"
        items.append(
            '<div class="legend-entry" style="margin:3px 0;white-space:nowrap">'
            f'<span style="display:inline-block;width:16px;height:16px;{swatch};border:2px solid #333;'
            f'vertical-align:middle;margin-right:6px"></span>{html.escape(name)}</div>'
        )
    return f'<div id="overlay-legend-entries"><b>Legend</b>{"".join(items)}</div>'


def score_colour(score, low: float) -> str:
    """A cell's background: red when flagged (absent or under `low`), amber near it, green above."""
    if score is None or not score.present or score.clip is None:
        return "#f4b6b6"
    if score.clip < low:
        return "#f4b6b6"
    return "#f7e3a1" if score.clip < low + 0.1 else "#b9e4b9"


def score_text(score) -> str:
    if not score.present:
        return "absent"
    text = f"{score.clip:.2f}"
    return text + (f" · DINO {score.dino:.2f}" if score.dino is not None else "")


def score_badges(scores, low: float) -> str:
    """One badge per character of a version: its score, red when flagged."""
    if scores is None:
        return ""
    badges = []
    for entry in scores.characters:
        flag = " ⚠" if entry.low(low) else ""
        badges.append(
            f'<span class="score-badge" data-low="{int(entry.low(low))}" style="background:{score_colour(entry, low)};'
            f'border-radius:8px;padding:2px 8px;margin-right:6px;white-space:nowrap">'
            f"{html.escape(entry.name)}: {score_text(entry)}{flag}</span>"
        )
    return f'<div id="version-score-badges"><b>Consistency</b> {"".join(badges)}</div>'


def score_table(table) -> str:
    """The story's characters x panels table, coloured; a blank cell: not in that panel."""
    if not table.characters:
        return "<div>No scored panel yet: generate panels with characters to see how alike they stay.</div>"
    head = "".join(f"<th>{p + 1}</th>" for p in table.positions)
    rows = []
    for name, cells in zip(table.characters, table.cells):
        tds = "".join(
            "<td></td>" if cell is None else
            f'<td style="background:{score_colour(cell, table.low_score)};text-align:center">{score_text(cell)}</td>'
            for cell in cells
        )  # fmt: skip
        rows.append(f"<tr><th>{html.escape(name)}</th>{tds}</tr>")
    flagged = len(table.low())
    note = f"<p>{flagged} flagged (absent, or under {table.low_score:.2f})</p>" if flagged else ""
    header = f"<tr><th>Character / panel</th>{head}</tr>"
    return f'<table id="story-score-table">{header}{"".join(rows)}</table>{note}'


def lora_text(lora: dict) -> str:
    """A LoRA setting in words: an uploaded file by the start of its hash, else its source."""
    source = lora["source"]
    name = f"the uploaded file {source[6:18]}…" if source.startswith("loras/") else source
    return f"**{escape(name)}** at weight {lora['weight']:g}"


class StoryboardView:
    def __init__(self, tab: StoryboardLayout):
        self.tab = tab

    def render(self, studio, story_id: int | None, panel_id: int | None = None, version_id: int | None = None) -> dict:
        """Everything the tab shows for a story and one of its panels (the first story/panel when
        the one asked for is gone)."""
        tab = self.tab
        stories = studio.stories()
        if story_id is None or story_id not in {s.id for s in stories}:
            story_id = stories[-1].id if stories else None
        out: dict = {tab.bar.story_pick: gr.update(choices=story_labels(stories), value=story_id)}
        cast_choices = [(c.name, c.id) for c in studio.characters()]
        if story_id is None:
            out[tab.inspector.story_scores] = ""
            return {**out, **self._strip([], None), **self._no_panel(cast_choices, EMPTY_STORYBOARD, story=False)}
        panels = studio.panels(story_id)
        ids = [p.id for p in panels]
        if panel_id not in ids:
            panel_id = ids[0] if ids else None
        out.update(self._strip_items(studio, panels, panel_id))
        out[tab.inspector.story_scores] = score_table(studio.story_scores(story_id))
        if panel_id is None:
            return {**out, **self._no_panel(cast_choices, NO_PANELS, story=True)}
        panel = studio.get_panel(panel_id)
        kept = studio.versions(panel_id)
        if version_id not in [v.id for v in kept]:
            version_id = panel.active_version_id
        return {
            **out,
            **self._form(studio, panel, cast_choices),
            **self.style(studio, panel),
            **self.control(studio, panel),
            **self._inspector(studio, panel, kept, version_id),
            **self.overlay(studio, version_id),
            **self._buttons(story=True, panel=True),
        }

    # -- parts --

    def _buttons(self, *, story: bool, panel: bool) -> dict:
        """Buttons that have nothing to act on are off (an empty storyboard offers only New story)."""
        tab = self.tab
        strip, buttons = tab.strip, tab.buttons
        on = {strip.add_panel: story, tab.bar.rename_story: story, buttons.generate_all: story}
        for button in (strip.duplicate_panel, strip.move_up, strip.move_down, strip.delete_panel):
            on[button] = panel
        for button in (tab.form.save_panel, buttons.generate, buttons.reroll, buttons.best_of):
            on[button] = panel
        on[buttons.cancel] = story
        return {button: gr.update(interactive=value) for button, value in on.items()}

    def _strip(self, items: list, panel_id: int | None, ids: list[int] | None = None, labels=None) -> dict:
        strip = self.tab.strip
        return {
            strip.strip: items,
            strip.panel_ids: ids or [],
            strip.panel_pick: gr.update(choices=labels or [], value=panel_id),
        }

    def _strip_items(self, studio, panels: list, panel_id: int | None) -> dict:
        items, labels = [], []
        for panel in panels:
            state = "needs attention" if studio.panel_problems(panel) else panel.status
            if panel.active_version_id is not None:
                picture = studio.version_image(panel.active_version_id)
            else:
                picture = placeholder("no image yet")
            items.append((picture, f"{panel.position + 1} · {state}"))
            labels.append((f"{panel.position + 1} · {short(panel.prompt, 28) or '(no prompt)'}", panel.id))
        return self._strip(items, panel_id, [p.id for p in panels], labels)

    def _no_panel(self, cast_choices: list, message: str, *, story: bool) -> dict:
        form, inspector = self.tab.form, self.tab.inspector
        return {
            form.prompt: "",
            form.named: "",
            form.ticked: gr.update(choices=cast_choices, value=[]),
            form.per_character: [],
            inspector.panel_status: message,
            inspector.active_image: None,
            inspector.versions: [],
            inspector.version_ids: [],
            inspector.inspected: None,
            inspector.inspected_text: "",
            inspector.make_active: gr.update(interactive=False),
            inspector.scores: "",
            self.tab.lines.show_bubbles: True,
            self.tab.lines.speaker: gr.update(choices=[("Narration", "")], value=""),
            self.tab.lines.table: "",
            self.tab.lines.page_fit: "",
            **self.style(None, None),
            **self.control(None, None),
            **self.overlay(None, None),
            **self._buttons(story=story, panel=False),
        }

    def _form(self, studio, panel, cast_choices: list) -> dict:
        form = self.tab.form
        cast = studio.panel_cast(panel)
        named = [character for character, is_named in cast if is_named]
        named_ids = {c.id for c in named}
        known = ", ".join(name for name, _ in cast_choices) or "none yet (add some in the Characters tab)"
        size = (panel.width, panel.height)
        rows = []
        for character, _ in cast:
            box = panel.layout.get(character.id)
            rows.append([character.name, panel.strengths.get(character.id, 1.0), *(box if box else [None] * 4)])
        in_panel = ", ".join(f"**{escape(c.name)}**" for c in named)
        return {
            form.prompt: gr.update(value=panel.prompt, info=f"Name characters as [Name]. Known: {known}"),
            form.named: f"In this panel (named in the prompt): {in_panel}" if named else "",
            form.ticked: gr.update(
                choices=[(name, cid) for name, cid in cast_choices if cid not in named_ids],
                value=[c for c in panel.characters if c in {cid for _, cid in cast_choices} and c not in named_ids],
            ),
            form.seed: panel.seed,
            form.steps: panel.steps,
            form.guidance: panel.guidance,
            form.aspect: gr.update(value=next((a for a, s in form.sizes.items() if s == size), None)),
            form.width: panel.width,
            form.height: panel.height,
            form.router: panel.router,
            form.per_character: gr.update(value=rows),
        }

    def _inspector(self, studio, panel, kept: list, version_id: int | None) -> dict:
        inspector = self.tab.inspector
        active = panel.active_version_id
        captions = []
        for n, version in enumerate(kept):
            captions.append(f"✓ v{n + 1} active" if version.id == active else f"v{n + 1}")
        return {
            inspector.panel_status: self.panel_status(studio, panel),
            inspector.active_image: for_display(studio.panel_picture(panel.id)) if active else None,
            **self.lines(studio, panel),
            inspector.versions: [(studio.version_image(v.id), caption) for v, caption in zip(kept, captions)],
            inspector.version_ids: [v.id for v in kept],
            inspector.inspected: version_id,
            inspector.inspected_text: self._inspected_caption(panel, kept, version_id),
            inspector.make_active: gr.update(interactive=version_id is not None and version_id != active),
            inspector.scores: score_badges(studio.version_scores(version_id), studio.low_score) if version_id else "",
        }

    def style(self, studio, panel) -> dict:
        """The style presets to pick from, with the story's and the panel's choices."""
        part = self.tab.style
        if studio is None or panel is None:
            nothing = gr.update(choices=[], value=None)
            return {part.story_style: nothing, part.panel_style: nothing} | dict.fromkeys(
                (part.story_negative, part.panel_negative, part.lora.story_summary, part.lora.panel_summary), ""
            )
        story = studio.get_story(panel.story_id)
        presets = studio.style_choices()
        return {
            part.story_style: gr.update(choices=[("No style", ""), *presets], value=story.style),
            part.story_negative: story.negative,
            part.panel_style: gr.update(choices=[("The story's style", ""), *presets], value=panel.style),
            part.panel_negative: panel.negative,
            **self.lora(studio, story, panel),
        }

    def lora(self, studio, story, panel) -> dict:
        """The story's LoRA and the panel's choice (the story's, its own, none), with their weights."""
        part = self.tab.style.lora
        story_text = f"Story LoRA: {lora_text(story.lora)}" if story.lora else "The story has no LoRA."
        choice = "none" if panel.lora.get("none") else "own" if panel.lora else "story"
        used = studio.panel_lora(panel)
        panel_text = f"This panel generates with {lora_text(used)}." if used else "This panel generates without a LoRA."
        out = {part.story_summary: story_text, part.panel_summary: panel_text, part.panel_choice: choice}
        if story.lora:
            out[part.story_weight] = story.lora["weight"]
        if panel.lora.get("source"):
            out[part.panel_weight] = panel.lora["weight"]
        return out

    def control(self, studio, panel) -> dict:
        """The panel's control picture, its kind and strength (or that it has none)."""
        part = self.tab.control
        if studio is None or panel is None or not panel.control:
            summary = "" if panel is None else "No control picture: the panel is generated without a ControlNet."
            return {part.current: None, part.summary: summary}
        control = panel.control
        summary = (
            f"**{control['kind']}**, strength {control['strength']:g}: generation follows this picture "
            "(ControlNet); every version keeps the picture it was made with."
        )
        picture = studio.control_picture(control)
        return {
            part.current: for_display(picture) if picture is not None else None,
            part.summary: summary,
            part.kind: control["kind"],
            part.strength: control["strength"],
        }

    def lines(self, studio, panel) -> dict:
        """The line list (numbered, with speaker and kind) and the speakers the panel's cast offers."""
        part = self.tab.lines
        speakers = [("Narration", "")] + [(c.name, c.name) for c, _ in studio.panel_cast(panel)]
        rows = [
            f"{n}. **{escape(line['name'] or 'Narration')}** ({line['kind']}): {escape(line['text'])}"
            for n, line in enumerate(studio.panel_lines(panel.id), start=1)
        ]
        return {
            part.show_bubbles: True,
            part.speaker: gr.update(choices=speakers),
            part.table: "\n".join(rows) if rows else "*No lines yet: pick a speaker, type a line, click Add line.*",
            part.page_fit: panel.page_fit,
        }

    @staticmethod
    def panel_status(studio, panel) -> str:
        problems = studio.panel_problems(panel)
        state = "attention" if problems else panel.status
        text = f"**Panel {panel.position + 1}: {STATUS_TEXT.get(state, state)}**"
        if problems:
            text += " — " + escape("; ".join(problems))
        elif panel.status == "failed" and panel.error:
            text += f" — {escape(panel.error)}"
        if panel.active_version_id is not None:
            settings = studio.get_version(panel.active_version_id).settings
            text += f"\n\nThe model saw: *{escape(settings.get('model_prompt', ''))}*"
            if settings.get("model_negative"):
                text += f"\n\nNegative prompt: *{escape(settings['model_negative'])}*"
            control = settings.get("control") or {}
            if control:
                text += f"\n\nControl picture: {escape(control['kind'])}, strength {control['strength']:g} (ControlNet)"
            if settings.get("lora_used"):
                text += f"\n\nLoRA: {lora_text(settings['lora_used'])}"
            for note in settings.get("notes", []):
                text += f"\n\nNote: {escape(note)}"
        return text

    @staticmethod
    def _inspected_caption(panel, kept: list, version_id: int | None) -> str:
        if version_id is None:
            return ""
        number = [v.id for v in kept].index(version_id) + 1
        settings = kept[number - 1].settings
        state = "the active version" if version_id == panel.active_version_id else "not active"
        router_used = settings.get("router_used") or "none"
        return f"Inspecting **v{number}** ({state}) · seed {settings.get('seed')} · router {router_used}"

    def overlay(
        self, studio, version_id: int | None, opacity=0.55, shown=None, grid_value=ALL_LAYERS, first=None, last=None
    ):
        """Overlay image, its one legend, the per-character toggles and the record controls."""
        overlay: RouteOverlay = self.tab.overlay
        empty = {
            overlay.image: None,
            overlay.legend: "",
            overlay.shown: gr.update(choices=[], value=[]),
            overlay.record_row: gr.update(visible=False),
        }
        if version_id is None:
            return empty
        if studio.get_version(version_id).route_map_path is None:
            return {**empty, overlay.legend: "<div>No characters in this version, so no routes to show.</div>"}
        grids, recorded_steps = studio.route_record_choices(version_id)
        chosen_grid, step_range = None, None
        view: dict = {overlay.record_row: gr.update(visible=bool(grids))}
        if grids:
            labels = [f"{h}x{w}" for h, w in grids]
            if grid_value in labels:
                chosen_grid = grids[labels.index(grid_value)]
            else:
                grid_value = ALL_LAYERS
            low, high = recorded_steps[0], recorded_steps[-1]
            first = low if first is None else int(min(max(first, low), high))
            last = high if last is None else int(min(max(last, first), high))
            if (first, last) != (low, high):
                step_range = (first, last + 1)
            many = high > low
            top = high if many else low + 1
            view[overlay.grid] = gr.update(choices=[ALL_LAYERS, *labels], value=grid_value)
            view[overlay.step_from] = gr.update(minimum=low, maximum=top, value=first, interactive=many)
            view[overlay.step_to] = gr.update(minimum=low, maximum=top, value=last, interactive=many)
        legend = studio.version_legend(version_id)
        names = [name for name, _ in legend[:-1]]
        show = list(range(len(names))) if shown is None else [names.index(n) for n in shown if n in names]
        picture = studio.version_overlay(
            version_id, float(opacity), steps=step_range, grid=chosen_grid, legend=False, show=show
        )
        view[overlay.image] = for_display(picture)
        view[overlay.legend] = legend_html([entry for i, entry in enumerate(legend) if i in show or i == len(names)])
        view[overlay.shown] = gr.update(choices=names, value=[names[i] for i in show])
        return view
