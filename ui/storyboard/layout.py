"""The Storyboard tab's components, part by part: each `*.create()` lays its part out where it is
called, so `build_storyboard_tab` reads as the page does."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..components import PictureUpload

ALL_LAYERS = "all layers"
PAGE_FIT_CHOICES = [
    ("as the export says (auto)", ""),
    ("auto: fill the cell when the shapes are close", "auto"),
    ("crop: fill the cell, keep the bubbles", "crop"),
    ("fit: the whole picture, smaller", "fit"),
]
BEST_OF = 4  # seeds the "Best of N" button draws
EXPORT_CHOICES = [
    ("PNG strip", "strip"),
    ("PNG page grid", "grid"),
    ("PDF", "pdf"),
    ("CBZ (comic readers)", "cbz"),
    ("Project archive (imports back)", "project"),
]
# The page layouts of the Studio (anystory/pages.py), as the writer reads them
PAGE_LAYOUTS = [
    ("loose panels (strip, simple page grid)", ""),
    ("2x2 grid", "grid"),
    ("three tiers", "tiers"),
    ("splash + strip", "splash"),
    ("picture book: one panel a page, caption below", "book"),
    ("webtoon: one vertical strip", "webtoon"),
    ("manga: right to left", "manga"),
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


def aspect_sizes(base_side: int) -> dict[str, tuple[int, int]]:
    """The aspect presets scaled so that 1:1 is base_side square (multiples of 8)."""
    scale = base_side / 1024

    def snap(value: float) -> int:
        return max(64, int(round(value * scale / 8)) * 8)

    return {aspect: (snap(w), snap(h)) for aspect, (w, h) in ASPECTS.items()}


@dataclass
class StoryBar:
    story_pick: gr.Dropdown
    title: gr.Textbox
    create_story: gr.Button
    rename_story: gr.Button

    @classmethod
    def create(cls) -> StoryBar:
        with gr.Row(equal_height=True):
            story_pick = gr.Dropdown(label="Story", choices=[], value=None, scale=3, elem_id="story-pick")
            title = gr.Textbox(
                label="Title",
                placeholder="type a title, then New story (or Rename this one)",
                scale=3,
                elem_id="story-title",
            )
            create_story = gr.Button("New story", variant="primary", scale=1, elem_id="create-story")
            rename_story = gr.Button("Rename", scale=1, elem_id="rename-story")
        return cls(story_pick, title, create_story, rename_story)


@dataclass
class PanelStrip:
    strip: gr.Gallery
    panel_pick: gr.Dropdown
    add_panel: gr.Button
    duplicate_panel: gr.Button
    move_up: gr.Button
    move_down: gr.Button
    delete_panel: gr.Button
    panel_ids: gr.State  # ids in strip order, to map a click on the strip to a panel

    @classmethod
    def create(cls) -> PanelStrip:
        panel_pick = gr.Dropdown(label="Panel", choices=[], value=None, elem_id="panel-pick")
        strip = gr.Gallery(
            label="Panels (click one to edit it)",
            columns=1,
            height=430,
            allow_preview=False,
            object_fit="contain",
            fit_columns=False,
            format="png",
            elem_id="panel-strip",
        )
        with gr.Row():
            add_panel = gr.Button("+ Panel", size="sm", min_width=60, elem_id="add-panel")
            duplicate_panel = gr.Button("Duplicate", size="sm", min_width=60, elem_id="duplicate-panel")
        with gr.Row():
            move_up = gr.Button("↑ Up", size="sm", min_width=40, elem_id="move-up")
            move_down = gr.Button("↓ Down", size="sm", min_width=40, elem_id="move-down")
            delete_panel = gr.Button("Delete", variant="stop", size="sm", min_width=40, elem_id="delete-panel")
        return cls(strip, panel_pick, add_panel, duplicate_panel, move_up, move_down, delete_panel, gr.State([]))

    @property
    def buttons(self) -> list:
        """The buttons that need a story (and a panel) to act on."""
        return [self.add_panel, self.duplicate_panel, self.move_up, self.move_down, self.delete_panel]


@dataclass
class PanelForm:
    prompt: gr.Textbox
    named: gr.Markdown  # the characters the prompt names: in the panel, no box to tick
    ticked: gr.CheckboxGroup
    seed: gr.Number
    steps: gr.Number
    guidance: gr.Number
    aspect: gr.Dropdown
    width: gr.Number
    height: gr.Number
    router: gr.Radio
    per_character: gr.Dataframe
    save_panel: gr.Button
    sizes: dict[str, tuple[int, int]]

    @classmethod
    def create(cls, defaults: dict, routers: tuple[str, ...]) -> PanelForm:
        sizes = aspect_sizes(int(defaults["width"]))
        prompt = gr.Textbox(label="Prompt", lines=3, elem_id="panel-prompt")
        named = gr.Markdown(elem_id="panel-named")
        ticked = gr.CheckboxGroup(
            label="Also in this panel",
            info="Characters the prompt does not name; a ticked one is added to the prompt with its description.",
            choices=[],
            elem_id="panel-characters",
        )
        with gr.Row():
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="panel-seed", min_width=90)
            steps = gr.Number(
                defaults["steps"],
                label="Steps",
                precision=0,
                minimum=1,
                maximum=1000,
                elem_id="panel-steps",
                min_width=90,
            )
            guidance = gr.Number(
                defaults["guidance"],
                label="Guidance",
                minimum=0,
                maximum=100,
                step=0.5,
                elem_id="panel-guidance",
                min_width=90,
            )
        with gr.Row():
            aspect = gr.Dropdown(
                label="Aspect",
                choices=[(f"{a} ({w}×{h})", a) for a, (w, h) in sizes.items()],
                value=None,
                elem_id="panel-aspect",
                min_width=90,
            )
            width = gr.Number(
                defaults["width"], label="Width", precision=0, minimum=64, step=8, elem_id="panel-width", min_width=90
            )
            height = gr.Number(
                defaults["height"],
                label="Height",
                precision=0,
                minimum=64,
                step=8,
                elem_id="panel-height",
                min_width=90,
            )
        router = gr.Radio(
            list(routers),
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
        return cls(
            prompt,
            named,
            ticked,
            seed,
            steps,
            guidance,
            aspect,
            width,
            height,
            router,
            per_character,
            save_panel,
            sizes,
        )

    @property
    def inputs(self) -> list:
        """The form's values, in the order `read_form` takes them."""
        return [self.prompt, self.ticked, self.seed, self.steps, self.guidance, self.width, self.height, self.router]


@dataclass
class GenerationButtons:
    generate: gr.Button
    reroll: gr.Button
    generate_all: gr.Button
    cancel: gr.Button
    best_of: gr.Button  # draw BEST_OF seeds, keep all, activate the best-scoring

    @classmethod
    def create(cls) -> GenerationButtons:
        with gr.Row():
            generate = gr.Button("Generate", variant="primary", min_width=80, elem_id="generate-panel")
            reroll = gr.Button("Re-roll", min_width=70, elem_id="reroll-panel")
            generate_all = gr.Button("Generate all", variant="primary", min_width=90, elem_id="generate-all")
            cancel = gr.Button("Cancel", variant="stop", min_width=70, elem_id="cancel-generation")
        best_of = gr.Button(f"Best of {BEST_OF}", size="sm", elem_id="best-of-panel")
        return cls(generate, reroll, generate_all, cancel, best_of)

    @property
    def all(self) -> list:
        return [self.generate, self.reroll, self.generate_all, self.cancel, self.best_of]


@dataclass
class VersionInspector:
    panel_status: gr.Markdown
    active_image: gr.Image
    versions: gr.Gallery
    inspected_text: gr.Markdown
    make_active: gr.Button
    version_ids: gr.State  # ids in gallery order
    inspected: gr.State  # the version shown in the overlay; None: the active one
    scores: gr.HTML  # a badge per character of the inspected version
    story_scores: gr.HTML  # the story's table: characters x panels

    @classmethod
    def create(cls) -> VersionInspector:
        panel_status = gr.Markdown(elem_id="panel-status")
        active_image = gr.Image(
            label="Active version", interactive=False, format="png", height=330, elem_id="active-image"
        )
        versions = gr.Gallery(
            label="Versions (click one to inspect it)",
            columns=5,
            height=130,
            allow_preview=False,
            object_fit="contain",
            fit_columns=False,
            format="png",
            elem_id="version-gallery",
        )
        inspected_text = gr.Markdown(elem_id="inspected-version")
        make_active = gr.Button("Make this version active", size="sm", elem_id="make-active")
        scores = gr.HTML(elem_id="version-scores")
        with gr.Accordion("Consistency: each character in each panel", open=False, elem_id="story-scores-part"):
            story_scores = gr.HTML(elem_id="story-scores")
        return cls(
            panel_status, active_image, versions, inspected_text, make_active, gr.State([]), gr.State(None),
            scores, story_scores,
        )  # fmt: skip


@dataclass
class RouteOverlay:
    image: gr.Image
    legend: gr.HTML
    shown: gr.CheckboxGroup  # the characters drawn (the legend's toggles)
    opacity: gr.Slider
    record_row: gr.Row
    grid: gr.Dropdown
    step_from: gr.Slider
    step_to: gr.Slider

    @classmethod
    def create(cls) -> RouteOverlay:
        with gr.Accordion("Who is where: the router's overlay", open=True, elem_id="overlay-part"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    image = gr.Image(
                        label="Routes overlay",
                        show_label=False,  # the label would cover the picture's corner
                        interactive=False,
                        format="png",
                        height=360,
                        elem_id="overlay-image",
                    )
                with gr.Column(scale=2):
                    legend = gr.HTML(elem_id="overlay-legend")
                    shown = gr.CheckboxGroup(label="Show", choices=[], elem_id="overlay-shown")
                    opacity = gr.Slider(0, 1, value=0.55, step=0.05, label="Fill opacity", elem_id="overlay-opacity")
                    with gr.Row(visible=False) as record_row:
                        grid = gr.Dropdown(
                            label="Layer resolution", choices=[ALL_LAYERS], value=ALL_LAYERS, elem_id="overlay-grid"
                        )
                        step_from = gr.Slider(0, 1, value=0, step=1, label="From step", elem_id="overlay-step-from")
                        step_to = gr.Slider(0, 1, value=1, step=1, label="To step", elem_id="overlay-step-to")
        return cls(image, legend, shown, opacity, record_row, grid, step_from, step_to)

    @property
    def outputs(self) -> list:
        return [self.image, self.legend, self.shown, self.record_row, self.grid, self.step_from, self.step_to]

    @property
    def inputs(self) -> list:
        """What drawing the overlay reads, after the version: opacity, shown, grid, steps."""
        return [self.opacity, self.shown, self.grid, self.step_from, self.step_to]


@dataclass
class StoryFiles:
    export_format: gr.Radio
    with_overlay: gr.Checkbox
    with_captions: gr.Checkbox
    export: gr.Button
    exported: gr.File
    project_archive: gr.File
    import_project: gr.Button
    page_layout: gr.Dropdown
    title_page: gr.Checkbox
    preview: gr.Button
    pages: gr.Gallery
    script: gr.Textbox
    script_file: gr.File
    script_format: gr.Radio
    aliases: gr.Textbox
    import_script: gr.Button

    @classmethod
    def create(cls) -> StoryFiles:
        with gr.Accordion("Export and import", open=False, elem_id="files-part"), gr.Row(equal_height=False):
            with gr.Column():
                export_format = gr.Radio(
                    EXPORT_CHOICES, value="pdf", label="Export the active versions as", elem_id="export-format"
                )
                with gr.Row():
                    with_overlay = gr.Checkbox(label="with route overlays", value=False)
                    with_captions = gr.Checkbox(label="with captions", value=True)
                with gr.Row():
                    page_layout = gr.Dropdown(
                        PAGE_LAYOUTS, value="", label="Page layout (pages, PDF, CBZ)", elem_id="page-layout"
                    )
                    title_page = gr.Checkbox(label="title page with the cast", value=False, elem_id="title-page")
                with gr.Row():
                    preview = gr.Button("Preview pages", elem_id="preview-pages")
                    export = gr.Button("Export", elem_id="export-story")
                pages = gr.Gallery(
                    label="Pages", columns=3, height=420, format="png", object_fit="contain", elem_id="page-preview"
                )
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
                script = gr.Textbox(
                    label="Script (paste): plain text, JSON or Fountain",
                    lines=6,
                    placeholder="Mia walks Rex in the park.\nMia: Come on, Rex!\n\nNext paragraph: next panel.",
                    elem_id="script-text",
                )
                script_file = gr.File(
                    label="or a script file", file_types=[".txt", ".json", ".fountain"], type="filepath",
                    elem_id="script-file",
                )  # fmt: skip
                script_format = gr.Radio(
                    ["auto", "text", "json", "fountain"], value="auto", label="Format", elem_id="script-format"
                )
                aliases = gr.Textbox(
                    label="Aliases, one a line: the girl = Mia", lines=2, elem_id="script-aliases"
                )
                import_script = gr.Button("Import script as a new story", elem_id="import-script")
        return cls(
            export_format, with_overlay, with_captions, export, exported, project_archive, import_project,
            page_layout, title_page, preview, pages, script, script_file, script_format, aliases, import_script,
        )  # fmt: skip


@dataclass
class StoragePart:
    """The data folder's size and free space, and a bulk delete of old versions (with a confirmation)."""

    accordion: gr.Accordion
    summary: gr.Markdown
    refresh: gr.Button
    delete_old: gr.Button
    confirm_row: gr.Row
    confirm_text: gr.Markdown
    confirm: gr.Button
    keep: gr.Button

    @classmethod
    def create(cls) -> StoragePart:
        with gr.Accordion("Storage", open=False, elem_id="storage") as accordion:
            summary = gr.Markdown(elem_id="storage-summary")
            with gr.Row():
                refresh = gr.Button("Refresh", scale=1, elem_id="storage-refresh")
                delete_old = gr.Button(
                    "Delete old versions (keep active)", variant="stop", scale=2, elem_id="delete-old-versions"
                )
            with gr.Row(visible=False, equal_height=True) as confirm_row:
                confirm_text = gr.Markdown(elem_id="delete-old-question")
                confirm = gr.Button("Yes, delete them", variant="stop", scale=1, elem_id="delete-old-confirm")
                keep = gr.Button("No, keep them", scale=1, elem_id="delete-old-keep")
        return cls(accordion, summary, refresh, delete_old, confirm_row, confirm_text, confirm, keep)


@dataclass
class StylePart:
    """The story's style preset and negative prompt; the panel's own ones (blank: the story's)."""

    story_style: gr.Dropdown
    story_negative: gr.Textbox
    panel_style: gr.Dropdown
    panel_negative: gr.Textbox
    save: gr.Button
    lora: LoraPart

    @classmethod
    def create(cls) -> StylePart:
        with gr.Accordion("Style and negative prompt", open=False, elem_id="style-part"):
            with gr.Row():
                story_style = gr.Dropdown(label="Story style", choices=[], elem_id="story-style")
                panel_style = gr.Dropdown(label="This panel's style", choices=[], elem_id="panel-style")
            story_negative = gr.Textbox(label="Story negative prompt", lines=1, elem_id="story-negative")
            panel_negative = gr.Textbox(label="This panel's negative prompt", lines=1, elem_id="panel-negative")
            save = gr.Button("Save style", size="sm", elem_id="save-style")
            lora = LoraPart.create()
        return cls(story_style, story_negative, panel_style, panel_negative, save, lora)

    @property
    def outputs(self) -> list:
        return [self.story_style, self.story_negative, self.panel_style, self.panel_negative, *self.lora.outputs]


PANEL_LORA_CHOICES = [("The story's LoRA", "story"), ("Its own LoRA", "own"), ("No LoRA", "none")]


@dataclass
class LoraPart:
    """LoRA styles (SDXL, .safetensors only): the story's, and the panel's own or none, with weights."""

    story_summary: gr.Markdown
    story_file: gr.File
    story_source: gr.Textbox
    story_weight: gr.Slider
    story_save: gr.Button
    story_remove: gr.Button
    panel_summary: gr.Markdown
    panel_choice: gr.Radio
    panel_file: gr.File
    panel_source: gr.Textbox
    panel_weight: gr.Slider
    panel_save: gr.Button

    @classmethod
    def create(cls) -> LoraPart:
        gr.Markdown("**LoRA style** (an SDXL LoRA, .safetensors only: a pickle could run code)")
        story_summary = gr.Markdown(elem_id="story-lora-summary")
        with gr.Row(equal_height=False):
            story_file = gr.File(
                label="Story LoRA file (.safetensors)", file_types=[".safetensors"], type="filepath",
                height=90, elem_id="story-lora-file",
            )  # fmt: skip
            story_source = gr.Textbox(label="…or a hub id (owner/name)", lines=1, elem_id="story-lora-source")
        story_weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="Story LoRA weight (0 = no effect)",
                                 elem_id="story-lora-weight")  # fmt: skip
        with gr.Row():
            story_save = gr.Button("Use for the story", size="sm", elem_id="story-lora-save")
            story_remove = gr.Button("Remove the story's LoRA", size="sm", variant="stop", elem_id="story-lora-remove")
        panel_summary = gr.Markdown(elem_id="panel-lora-summary")
        panel_choice = gr.Radio(PANEL_LORA_CHOICES, value="story", label="This panel", elem_id="panel-lora-choice")
        with gr.Row(equal_height=False):
            panel_file = gr.File(
                label="The panel's own LoRA file (.safetensors)", file_types=[".safetensors"], type="filepath",
                height=90, elem_id="panel-lora-file",
            )  # fmt: skip
            panel_source = gr.Textbox(label="…or a hub id (owner/name)", lines=1, elem_id="panel-lora-source")
        panel_weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="The panel's LoRA weight",
                                 elem_id="panel-lora-weight")  # fmt: skip
        panel_save = gr.Button("Save the panel's LoRA", size="sm", elem_id="panel-lora-save")
        return cls(
            story_summary, story_file, story_source, story_weight, story_save, story_remove,
            panel_summary, panel_choice, panel_file, panel_source, panel_weight, panel_save,
        )  # fmt: skip

    @property
    def outputs(self) -> list:
        return [self.story_summary, self.story_weight, self.panel_summary, self.panel_choice, self.panel_weight]


CONTROL_KINDS = ("edges", "pose", "depth", "scribble")  # as the Studio's control settings name them


@dataclass
class ControlPart:
    """The panel's control picture (ControlNet): upload one, or edges from a photo; kind, strength."""

    current: gr.Image
    summary: gr.Markdown
    upload: PictureUpload
    kind: gr.Radio
    strength: gr.Slider
    from_photo: gr.Checkbox
    apply: gr.Button
    remove: gr.Button
    sketch: gr.Sketchpad
    use_sketch: gr.Button

    @classmethod
    def create(cls) -> ControlPart:
        with gr.Accordion("Control picture (pose, depth, edges, scribble)", open=False, elem_id="control-part"):
            summary = gr.Markdown(elem_id="control-summary")
            with gr.Row(equal_height=False):
                current = gr.Image(
                    label="This panel's control picture", interactive=False, format="png", height=180,
                    elem_id="control-current",
                )  # fmt: skip
                upload = PictureUpload(
                    label="New control picture, or a photo", type="filepath", image_mode=None,
                    sources=["upload", "clipboard"], format="png", height=180, elem_id="control-upload",
                )  # fmt: skip
            kind = gr.Radio(list(CONTROL_KINDS), value="edges", label="Kind", elem_id="control-kind")
            strength = gr.Slider(
                0, 2, value=1.0, step=0.05, label="Strength (0 = no effect)", elem_id="control-strength"
            )
            from_photo = gr.Checkbox(
                label="Compute the edges of this photo (no model; kind: edges)", value=False, elem_id="control-edges"
            )
            with gr.Row():
                apply = gr.Button("Use for this panel", size="sm", elem_id="control-apply")
                remove = gr.Button("Remove control picture", size="sm", variant="stop", elem_id="control-remove")
            sketch = gr.Sketchpad(
                label="…or draw a scribble (pick the brush, draw dark strokes)", type="pil",
                canvas_size=(512, 512), height=260, layers=False, elem_id="control-sketch",
            )  # fmt: skip
            use_sketch = gr.Button("Use my drawing (scribble)", size="sm", elem_id="control-use-sketch")
        return cls(current, summary, upload, kind, strength, from_photo, apply, remove, sketch, use_sketch)

    @property
    def outputs(self) -> list:
        return [self.current, self.summary, self.kind, self.strength]


@dataclass
class PanelLines:
    """The panel's lines (dialogue, captions, sound effects), drawn as bubbles over its image."""

    show_bubbles: gr.Checkbox
    speaker: gr.Dropdown
    kind: gr.Dropdown
    text: gr.Textbox
    add: gr.Button
    table: gr.Markdown
    number: gr.Number
    remove: gr.Button
    dx: gr.Slider
    dy: gr.Slider
    nudge: gr.Button
    page_fit: gr.Dropdown  # how this panel meets its cell on the pages

    @classmethod
    def create(cls) -> PanelLines:
        with gr.Accordion("Lines and speech bubbles", open=True, elem_id="panel-lines"):
            show_bubbles = gr.Checkbox(label="Show bubbles over the image", value=True, elem_id="show-bubbles")
            with gr.Row():
                speaker = gr.Dropdown(label="Speaker", choices=[("Narration", "")], value="", elem_id="line-speaker")
                kind = gr.Dropdown(
                    label="Kind",
                    choices=[("auto", ""), "speech", "thought", "caption", "sfx"],
                    value="",
                    elem_id="line-kind",
                )
            text = gr.Textbox(label="Line", placeholder="What they say", elem_id="line-text")
            add = gr.Button("Add line", size="sm", elem_id="add-line")
            table = gr.Markdown(elem_id="line-list")
            with gr.Row():
                number = gr.Number(label="Line number", value=1, precision=0, minimum=1, elem_id="line-number")
                remove = gr.Button("Remove line", size="sm", variant="stop", elem_id="remove-line")
            with gr.Row():  # a nudge from the automatic place, kept for every re-roll
                dx = gr.Slider(-0.5, 0.5, value=0.0, step=0.01, label="Move right (of width)", elem_id="line-dx")
                dy = gr.Slider(-0.5, 0.5, value=0.0, step=0.01, label="Move down (of height)", elem_id="line-dy")
            nudge = gr.Button("Move this line's bubble", size="sm", elem_id="nudge-line")
            page_fit = gr.Dropdown(
                label="On the pages (PDF, CBZ, page pictures)",
                choices=PAGE_FIT_CHOICES,
                value="",
                elem_id="panel-page-fit",
            )
        return cls(show_bubbles, speaker, kind, text, add, table, number, remove, dx, dy, nudge, page_fit)


@dataclass
class StoryboardLayout:
    """Every component of the tab, by part."""

    status: gr.Markdown
    bar: StoryBar
    strip: PanelStrip
    form: PanelForm
    buttons: GenerationButtons
    inspector: VersionInspector
    overlay: RouteOverlay
    files: StoryFiles
    storage: StoragePart
    lines: PanelLines
    style: StylePart
    control: ControlPart

    @property
    def view_outputs(self) -> list:
        """What `StoryboardView.render` fills: the whole tab but the buttons and the files part."""
        bar, strip, form, inspector = self.bar, self.strip, self.form, self.inspector
        return [
            self.status,
            bar.story_pick,
            strip.strip,
            strip.panel_ids,
            strip.panel_pick,
            form.prompt,
            form.named,
            form.ticked,
            form.seed,
            form.steps,
            form.guidance,
            form.aspect,
            form.width,
            form.height,
            form.router,
            form.per_character,
            inspector.panel_status,
            inspector.active_image,
            inspector.versions,
            inspector.version_ids,
            inspector.inspected,
            inspector.inspected_text,
            inspector.make_active,
            inspector.scores,
            inspector.story_scores,
            self.lines.show_bubbles,
            self.lines.speaker,
            self.lines.table,
            self.lines.page_fit,
            *self.style.outputs,
            *self.control.outputs,
            *self.overlay.outputs,
            *self.strip.buttons,
            bar.rename_story,
            form.save_panel,
            *self.buttons.all,
        ]

    @property
    def form_inputs(self) -> list:
        """The story and panel being edited, then the form: what saving a panel reads."""
        return [self.bar.story_pick, self.strip.panel_pick, *self.form.inputs, self.form.per_character]


def layout_storyboard(defaults: dict, routers: tuple[str, ...]) -> StoryboardLayout:
    """The editor on one screen: panels on the left, the panel's form in the middle, its image,
    the Generate buttons and its versions on the right; the overlay and the files below."""
    status = gr.Markdown(elem_id="storyboard-status")
    bar = StoryBar.create()
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=220):
            strip = PanelStrip.create()
        with gr.Column(scale=4, min_width=360):
            form = PanelForm.create(defaults, routers)
            style = StylePart.create()
            control = ControlPart.create()
        with gr.Column(scale=4, min_width=360):
            buttons = GenerationButtons.create()
            inspector = VersionInspector.create()
            lines = PanelLines.create()
    overlay = RouteOverlay.create()
    files = StoryFiles.create()
    storage = StoragePart.create()
    return StoryboardLayout(
        status, bar, strip, form, buttons, inspector, overlay, files, storage, lines, style, control
    )  # fmt: skip


__all__ = ["ALL_LAYERS", "StoryboardLayout", "aspect_sizes", "layout_storyboard"]
