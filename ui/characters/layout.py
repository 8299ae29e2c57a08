"""The Characters tab's components, part by part (see ui/storyboard/layout.py for the pattern)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..components import PictureUpload

MASK_FROM_ALPHA = "Alpha channel of the picture"
MASK_UPLOADED = "Uploaded mask"
MASK_PAINTED = "Painted mask"
MASK_SAVED = "Keep the saved mask"
MASK_SOURCES = [MASK_FROM_ALPHA, MASK_UPLOADED, MASK_PAINTED]
CAST_TABLE_HEADERS = ["Name", "Description", "Encoding", "Used in"]


@dataclass
class CastList:
    example_row: gr.Row
    add_examples: gr.Button
    search: gr.Textbox
    gallery: gr.Gallery
    table: gr.Dataframe
    reencode: gr.Button
    delete: gr.Button
    confirm_box: gr.Group
    confirm_text: gr.Markdown
    confirm_delete: gr.Button
    keep: gr.Button
    shown_ids: gr.State  # ids in gallery order

    @classmethod
    def create_examples_row(cls) -> tuple[gr.Row, gr.Button]:
        with gr.Row(visible=False) as example_row:
            gr.Markdown(
                "Your cast is empty. Start with ours: Mia (a girl with a red scarf), Rex (a brown dog) "
                "and Bolt (a robot)."
            )
            add_examples = gr.Button("Add the example cast", variant="secondary", elem_id="add-example-cast")
        return example_row, add_examples

    @classmethod
    def create(cls, example_row: gr.Row, add_examples: gr.Button) -> CastList:
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
            column_widths=["17%", "35%", "13%", "35%"],
            label="Encodings (ready: stored for the loaded weights · stale: made by other weights, "
            "encoded again on first use · missing · failed: Re-encode tries again)",
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
        return cls(
            example_row,
            add_examples,
            search,
            gallery,
            table,
            reencode,
            delete,
            confirm_box,
            confirm_text,
            confirm_delete,
            keep,
            gr.State([]),
        )

    @property
    def outputs(self) -> list:
        """What `cast_view` fills."""
        return [self.gallery, self.table, self.shown_ids, self.example_row]


@dataclass
class CastFiles:
    export_cast: gr.Button
    exported: gr.File
    archive: gr.File
    on_clash: gr.Radio
    import_cast: gr.Button

    @classmethod
    def create(cls) -> CastFiles:
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
        return cls(export_cast, exported, archive, on_clash, import_cast)


@dataclass
class CharacterForm:
    title: gr.Markdown
    name: gr.Textbox
    description: gr.Textbox
    picture: gr.Image
    mask_source: gr.Radio
    upload_box: gr.Group
    mask_upload: gr.Image
    paint_box: gr.Group
    mask_painter: gr.ImageEditor
    auto: gr.Button
    preview: gr.Button
    mask_preview: gr.Image
    save: gr.Button
    new: gr.Button
    selected: gr.State  # id of the character being edited; None: a new one

    @classmethod
    def create(cls) -> CharacterForm:
        title = gr.Markdown("### New character", elem_id="character-form-title")
        name = gr.Textbox(label="Name", placeholder="Mia", elem_id="character-name")
        description = gr.Textbox(
            label="Description (used in prompts)",
            placeholder="a young woman with a red scarf",
            info="[Name] in a panel prompt is replaced by these words.",
            elem_id="character-description",
        )
        picture = PictureUpload(
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
            mask_upload = PictureUpload(
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
        return cls(
            title,
            name,
            description,
            picture,
            mask_source,
            upload_box,
            mask_upload,
            paint_box,
            mask_painter,
            auto,
            preview,
            mask_preview,
            save,
            new,
            gr.State(None),
        )

    @property
    def outputs(self) -> list:
        """What `blank_form` / `edit_form` fill."""
        return [
            self.selected,
            self.title,
            self.name,
            self.description,
            self.picture,
            self.mask_source,
            self.mask_upload,
            self.mask_painter,
            self.mask_preview,
            self.save,
        ]

    @property
    def mask_inputs(self) -> list:
        """What `form_mask` reads: the character edited, its picture and the four mask sources."""
        return [self.selected, self.picture, self.mask_source, self.mask_upload, self.mask_painter]


@dataclass
class CharactersLayout:
    status: gr.Markdown
    cast: CastList
    files: CastFiles
    form: CharacterForm


def layout_characters() -> CharactersLayout:
    status = gr.Markdown(elem_id="characters-status")
    example_row, add_examples = CastList.create_examples_row()
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            cast = CastList.create(example_row, add_examples)
            files = CastFiles.create()
        with gr.Column(scale=2):
            form = CharacterForm.create()
    return CharactersLayout(status, cast, files, form)
