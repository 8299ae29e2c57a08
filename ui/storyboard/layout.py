"""The Storyboard tab's components, part by part: each `*.create()` lays its part out where it is
called, so `build_storyboard_tab` reads as the page does."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

ALL_LAYERS = "all layers"
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
                placeholder="a title for a new story, or a new title for this one",
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
        return cls(strip, panel_pick, add_panel, duplicate_panel, move_up, move_down, delete_panel, gr.State([]))


@dataclass
class PanelForm:
    prompt: gr.Textbox
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
            width = gr.Number(defaults["width"], label="Width", precision=0, minimum=64, step=8, elem_id="panel-width")
            height = gr.Number(
                defaults["height"], label="Height", precision=0, minimum=64, step=8, elem_id="panel-height"
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
            prompt, ticked, seed, steps, guidance, aspect, width, height, router, per_character, save_panel, sizes
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

    @classmethod
    def create(cls) -> GenerationButtons:
        with gr.Row():
            generate = gr.Button("Generate", variant="primary", elem_id="generate-panel")
            reroll = gr.Button("Re-roll (new seed)", elem_id="reroll-panel")
            generate_all = gr.Button("Generate all", variant="primary", elem_id="generate-all")
            cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-generation")
        return cls(generate, reroll, generate_all, cancel)


@dataclass
class VersionInspector:
    panel_status: gr.Markdown
    active_image: gr.Image
    versions: gr.Gallery
    inspected_text: gr.Markdown
    make_active: gr.Button
    version_ids: gr.State  # ids in gallery order
    inspected: gr.State  # the version shown in the overlay; None: the active one

    @classmethod
    def create(cls) -> VersionInspector:
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
        return cls(panel_status, active_image, versions, inspected_text, make_active, gr.State([]), gr.State(None))


@dataclass
class RouteOverlay:
    image: gr.Image
    legend: gr.HTML
    opacity: gr.Slider
    record_row: gr.Row
    grid: gr.Dropdown
    step_from: gr.Slider
    step_to: gr.Slider

    @classmethod
    def create(cls) -> RouteOverlay:
        image = gr.Image(
            label="Routes overlay (who is where)", interactive=False, format="png", height=340, elem_id="overlay-image"
        )
        legend = gr.HTML(elem_id="overlay-legend")
        opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Overlay opacity", elem_id="overlay-opacity")
        with gr.Row(visible=False) as record_row:
            grid = gr.Dropdown(label="Layer resolution", choices=[ALL_LAYERS], value=ALL_LAYERS, elem_id="overlay-grid")
            step_from = gr.Slider(0, 1, value=0, step=1, label="From step", elem_id="overlay-step-from")
            step_to = gr.Slider(0, 1, value=1, step=1, label="To step", elem_id="overlay-step-to")
        return cls(image, legend, opacity, record_row, grid, step_from, step_to)

    @property
    def outputs(self) -> list:
        return [self.image, self.legend, self.record_row, self.grid, self.step_from, self.step_to]


@dataclass
class StoryFiles:
    export_format: gr.Radio
    with_overlay: gr.Checkbox
    with_captions: gr.Checkbox
    export: gr.Button
    exported: gr.File
    project_archive: gr.File
    import_project: gr.Button

    @classmethod
    def create(cls) -> StoryFiles:
        with gr.Accordion("Export and import", open=True), gr.Row(equal_height=False):
            with gr.Column():
                export_format = gr.Radio(
                    EXPORT_CHOICES, value="pdf", label="Export the active versions as", elem_id="export-format"
                )
                with gr.Row():
                    with_overlay = gr.Checkbox(label="with route overlays", value=False)
                    with_captions = gr.Checkbox(label="with captions", value=True)
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
        return cls(export_format, with_overlay, with_captions, export, exported, project_archive, import_project)


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
            *self.overlay.outputs,
        ]

    @property
    def form_inputs(self) -> list:
        """The story and panel being edited, then the form: what saving a panel reads."""
        return [self.bar.story_pick, self.strip.panel_pick, *self.form.inputs, self.form.per_character]


def layout_storyboard(defaults: dict, routers: tuple[str, ...]) -> StoryboardLayout:
    status = gr.Markdown(elem_id="storyboard-status")
    bar = StoryBar.create()
    strip = PanelStrip.create()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            form = PanelForm.create(defaults, routers)
            buttons = GenerationButtons.create()
        with gr.Column(scale=1):
            inspector = VersionInspector.create()
            overlay = RouteOverlay.create()
    files = StoryFiles.create()
    return StoryboardLayout(status, bar, strip, form, buttons, inspector, overlay, files)


__all__ = ["ALL_LAYERS", "StoryboardLayout", "aspect_sizes", "layout_storyboard"]
