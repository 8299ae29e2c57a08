"""Named API endpoints for gradio_client: plain inputs (text, numbers, JSON, files), JSON out.

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    client.predict("Mia", "a girl with a red scarf", handle_file("mia.png"), None, api_name="/add_character")
    story = client.predict("The walk", api_name="/create_story")
    client.predict(story["id"], "[Mia] walks in the rain", "{}", api_name="/add_panel")
    client.predict(story["id"], False, api_name="/generate_story")
    files = client.predict(story["id"], "pdf", False, True, api_name="/export_story")

Characters are named by name (any case) or id; panel settings are a JSON object with any of
prompt, characters (names or ids), seed, steps, guidance, width, height, router, strengths
({name: number}) and layout ({name: [x0, y0, x1, y1]}). Errors come back as the app's message
(gradio_client raises AppError with it). Every endpoint acts on the caller's own Studio.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from .common import MODEL, api_errors, gpu
from .gpu_jobs import panel_runner
from .session import Sessions

SETTING_KEYS = (
    *("prompt", "characters", "seed", "steps", "guidance", "width", "height", "router", "strengths", "layout"),
    *("style", "negative"),
)


# -- records as JSON ---------------------------------------------------------------------------------


def character_ref(studio, ref: Any) -> int:
    """A character's id from its name (any case) or id (an int, or digits when no name matches)."""
    if isinstance(ref, bool):
        raise ValueError(f"a character is named by its name or id, got {ref!r}")
    if isinstance(ref, int) or (isinstance(ref, float) and ref.is_integer()):
        return studio.get_character(int(ref)).id
    if not isinstance(ref, str):
        raise ValueError(f"a character is named by its name or id, got {ref!r}")
    try:
        return studio.get_character(ref).id
    except KeyError:
        if ref.strip().isdigit():
            return studio.get_character(int(ref)).id
        raise


def character_dict(studio, character) -> dict:
    used = [f"{story.title} panel {panel.position + 1}" for story, panel in studio.panels_using(character.id)]
    return {
        "id": character.id,
        "name": character.name,
        "description": character.description,
        "status": studio.encoding_status(character),
        "used_in": used,
    }


def version_dict(version) -> dict:
    settings = version.settings
    return {
        "id": version.id,
        "panel_id": version.panel_id,
        "seed": settings.get("seed"),
        "model_prompt": settings.get("model_prompt"),
        "characters": settings.get("subject_names", []),
        "router_used": settings.get("router_used"),
        "notes": settings.get("notes", []),
        "created": version.created,
        "scores": version.scores,  # per character: present, area, box, clip (and dino); None: not scored
    }


def panel_dict(studio, panel) -> dict:
    known = {c.id: c.name for c in studio.characters()}
    name = lambda character_id: known.get(character_id, f"#{character_id}")  # noqa: E731
    return {
        "id": panel.id,
        "story_id": panel.story_id,
        "position": panel.position,
        "prompt": panel.prompt,
        "characters": [name(c) for c in panel.characters],
        "seed": panel.seed,
        "steps": panel.steps,
        "guidance": panel.guidance,
        "width": panel.width,
        "height": panel.height,
        "router": panel.router,
        "strengths": {name(c): v for c, v in panel.strengths.items()},
        "layout": {name(c): box for c, box in panel.layout.items()},
        "style": panel.style,
        "negative": panel.negative,
        "control": dict(panel.control),  # {} or {kind, strength, image (the stored picture's name)}
        "lora": dict(panel.lora),  # {} (the story's), {"none": true} or {source, weight}
        "lines": [{**line, "speaker": name(line["speaker"]) if line["speaker"] else ""} for line in panel.lines],
        "status": panel.status,
        "error": panel.error,
        "active_version_id": panel.active_version_id,
        "version_ids": [v.id for v in studio.versions(panel.id)],
    }


def story_dict(studio, story) -> dict:
    return {
        "id": story.id,
        "title": story.title,
        "lora": dict(story.lora),  # {} (none) or {source, weight}
        "panels": [panel_dict(studio, p) for p in studio.panels(story.id)],
    }


def lora_choice(lora_file: str | None, source: str | None) -> tuple[str | None, bool]:
    """What a client gave for a LoRA: its uploaded file (a path the server made), else the typed
    source (a hub id, or "none" on a panel), never a path of the server's own by name."""
    if lora_file:
        return lora_file, True
    return (source or "").strip() or None, False


def parse_settings(studio, settings: Any) -> dict:
    """A JSON object (text or dict) of panel settings, with characters named by name or id."""
    if settings is None or (isinstance(settings, str) and not settings.strip()):
        return {}
    if isinstance(settings, str):
        try:
            settings = json.loads(settings)
        except json.JSONDecodeError as err:
            raise ValueError(f"settings must be a JSON object: {err}") from err
    if not isinstance(settings, dict):
        raise ValueError('settings must be a JSON object, e.g. {"seed": 3, "characters": ["Mia"]}')
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise ValueError(f"unknown panel settings {', '.join(unknown)}; settings are {', '.join(SETTING_KEYS)}")
    fields = dict(settings)
    if "characters" in fields:
        if not isinstance(fields["characters"], list):
            raise ValueError("characters must be a list of names or ids")
        fields["characters"] = [character_ref(studio, c) for c in fields["characters"]]
    for key in ("strengths", "layout"):
        if key in fields:
            if not isinstance(fields[key], dict):
                raise ValueError(f"{key} must be an object keyed by character name")
            fields[key] = {character_ref(studio, k): v for k, v in fields[key].items()}
    return fields


# -- the endpoints -------------------------------------------------------------------------------------


class CharacterEndpoints:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    @api_errors
    def list_characters(self, search: str = "", request: gr.Request = None) -> list[dict]:
        """The cast (optionally those whose name or description contains `search`)."""
        studio = self.sessions.studio(request)
        return [character_dict(studio, c) for c in studio.characters(search or None)]

    @gpu
    @api_errors
    def add_character(
        self, name: str, description: str, image: str | None, mask: str | None, request: gr.Request = None
    ) -> dict:
        """Add a character from a picture file (its alpha channel is the mask unless a mask file is given)."""
        if image is None:
            raise ValueError("add_character needs a picture file")
        studio = self.sessions.studio(request)
        character = studio.add_character(name, description or "", image, mask)
        return {**character_dict(studio, character), "notes": list(studio.notes)}

    @gpu
    @api_errors
    def update_character(
        self,
        character: str,
        name: str,
        description: str,
        image: str | None,
        mask: str | None,
        request: gr.Request = None,
    ) -> dict:
        """Rename / re-describe (empty text keeps the old value); a new picture or mask is encoded again."""
        studio = self.sessions.studio(request)
        updated = studio.update_character(
            character_ref(studio, character), name=name or None, description=description or None, image=image, mask=mask
        )
        return {**character_dict(studio, updated), "notes": list(studio.notes)}

    @api_errors
    def delete_character(self, character: str, force: bool = False, request: gr.Request = None) -> str:
        """Delete a character; refused (naming the panels) while panels use it, unless force."""
        studio = self.sessions.studio(request)
        found = studio.get_character(character_ref(studio, character))
        studio.delete_character(found.id, force=bool(force))
        return f"deleted {found.name}"

    @gpu
    @api_errors
    def reencode_character(self, character: str, request: gr.Request = None) -> dict:
        """Encode a character again with the loaded weights."""
        studio = self.sessions.studio(request)
        return character_dict(studio, studio.reencode_character(character_ref(studio, character)))

    @api_errors
    def export_characters(self, request: gr.Request = None) -> str:
        """The whole cast as a zip (imports back with import_characters)."""
        studio = self.sessions.studio(request)
        return self.sessions.hand_out(studio.export_characters())

    @api_errors
    def import_characters(
        self, archive: str | None, on_clash: str = "rename", request: gr.Request = None
    ) -> list[dict]:
        """Import a cast zip; on_clash is rename (Mia (2)) or skip."""
        if archive is None:
            raise ValueError("import_characters needs a cast archive (.zip)")
        studio = self.sessions.studio(request)
        return [character_dict(studio, c) for c in studio.import_characters(archive, on_clash)]


class StoryEndpoints:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    @api_errors
    def list_stories(self, request: gr.Request = None) -> list[dict]:
        """Every story with its panels."""
        studio = self.sessions.studio(request)
        return [story_dict(studio, s) for s in studio.stories()]

    @api_errors
    def create_story(self, title: str, request: gr.Request = None) -> dict:
        """A new, empty story."""
        studio = self.sessions.studio(request)
        return story_dict(studio, studio.create_story(title or "Untitled story"))

    @api_errors
    def get_story(self, story_id: int, request: gr.Request = None) -> dict:
        """One story with its panels (settings, status, versions)."""
        studio = self.sessions.studio(request)
        return story_dict(studio, studio.get_story(int(story_id)))

    @api_errors
    def add_panel(self, story_id: int, prompt: str, settings: str = "{}", request: gr.Request = None) -> dict:
        """Add a panel at the end; `settings` is a JSON object (see update_panel)."""
        studio = self.sessions.studio(request)
        fields = parse_settings(studio, settings)
        fields.pop("prompt", None)
        return panel_dict(studio, studio.add_panel(int(story_id), prompt or "", **fields))

    @api_errors
    def update_panel(self, panel_id: int, settings: str, request: gr.Request = None) -> dict:
        """Change a panel: JSON with any of prompt, characters, seed, steps, guidance, width, height,
        router, strengths ({name: number}), layout ({name: [x0, y0, x1, y1]})."""
        studio = self.sessions.studio(request)
        return panel_dict(studio, studio.update_panel(int(panel_id), **parse_settings(studio, settings)))

    @api_errors
    def set_panel_control(
        self, panel_id: int, image: str | None, kind: str, strength: float = 1.0, edges_from_photo: bool = False,
        request: gr.Request = None,
    ) -> dict:  # fmt: skip
        """Give a panel a control picture (ControlNet): kind edges / pose / depth / scribble, strength
        0-2; edges_from_photo computes the edges of an uploaded photo. No image: remove it."""
        studio = self.sessions.studio(request)
        if image is None:
            return panel_dict(studio, studio.clear_panel_control(int(panel_id)))
        panel = studio.set_panel_control(
            int(panel_id), image, kind, float(strength), edges_from_photo=bool(edges_from_photo)
        )
        return panel_dict(studio, panel)

    @api_errors
    def set_story_lora(
        self, story_id: int, lora_file: str | None, source: str = "", weight: float = 1.0, request: gr.Request = None
    ) -> dict:
        """A story's LoRA style: an uploaded .safetensors file, or source a hub id (owner/name);
        neither: none. Weight -2 to 2. Pickles (.bin, .pt, .ckpt, or by content) are refused."""
        studio = self.sessions.studio(request)
        given, is_upload = lora_choice(lora_file, source)
        return story_dict(studio, studio.set_story_lora(int(story_id), given, float(weight), local_paths=is_upload))

    @api_errors
    def set_panel_lora(
        self, panel_id: int, lora_file: str | None, source: str = "", weight: float = 1.0, request: gr.Request = None
    ) -> dict:
        """A panel's own LoRA (as set_story_lora), source "none" for none whatever the story has,
        or neither file nor source to follow the story's again."""
        studio = self.sessions.studio(request)
        given, is_upload = lora_choice(lora_file, source)
        return panel_dict(studio, studio.set_panel_lora(int(panel_id), given, float(weight), local_paths=is_upload))

    @api_errors
    def move_panel(self, panel_id: int, position: int, request: gr.Request = None) -> list[dict]:
        """Move a panel to a position (0 = first); returns the story's panels in order."""
        studio = self.sessions.studio(request)
        return [panel_dict(studio, p) for p in studio.move_panel(int(panel_id), int(position))]

    @api_errors
    def delete_panel(self, panel_id: int, request: gr.Request = None) -> str:
        """Delete a panel with its versions."""
        self.sessions.studio(request).delete_panel(int(panel_id))
        return f"deleted panel {int(panel_id)}"

    @api_errors
    def set_active_version(self, panel_id: int, version_id: int, request: gr.Request = None) -> dict:
        """Make one kept version the panel's active one (the panel gets back the settings that made it)."""
        studio = self.sessions.studio(request)
        return panel_dict(studio, studio.set_active_version(int(panel_id), int(version_id), restore_settings=True))

    @api_errors
    def version_overlay(self, version_id: int, opacity: float = 0.45, request: gr.Request = None):
        """The router's regions over a version's image, and the legend as [name, colour] pairs."""
        studio = self.sessions.studio(request)
        picture = studio.version_overlay(int(version_id), float(opacity))
        return picture, [list(entry) for entry in studio.version_legend(int(version_id))]

    @api_errors
    def export_story(
        self, story_id: int, fmt: str = "pdf", overlay: bool = False, captions: bool = True, request: gr.Request = None
    ) -> list[str]:
        """Export the active versions: fmt is strip, grid, pdf, cbz or project (an archive that imports back)."""
        files = self.sessions.studio(request).export_story(
            int(story_id), fmt, overlay=bool(overlay), captions=bool(captions)
        )
        return [self.sessions.hand_out(f) for f in files]

    @api_errors
    def import_script(self, script: str, fmt: str = "auto", aliases: str = "{}", request: gr.Request = None) -> dict:
        """Import a script as a new story of panels with casts and dialogue; returns the story. Formats: plain
        text (one panel per paragraph; a line "Name: words" is that character's dialogue, "Narrator: words" a
        caption, "SFX: words" a sound effect), JSON ({"format": "anystory.script", "title", "style",
        "characters": [{"name", "aliases"}], "panels": [{"prompt", "cast", "dialogue": [{"speaker", "text",
        "kind"}]}]}) or a Fountain screenplay. Names not in the cast are listed in the error; nothing is written.

        Args:
            script: the script's text (plain text, JSON or Fountain).
            fmt: auto, text, json or fountain.
            aliases: a JSON object mapping words of the script to cast names, e.g. {"the girl": "Mia"}.
        """
        try:
            mapping = json.loads(aliases or "{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"aliases must be a JSON object: {err}") from err
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise ValueError('aliases must be a JSON object of names, e.g. {"the girl": "Mia"}')
        studio = self.sessions.studio(request)
        return story_dict(studio, studio.import_script(script, fmt or "auto", aliases=mapping))

    @api_errors
    def add_line(self, panel_id: int, text: str, speaker: str = "", kind: str = "", request: gr.Request = None) -> list:
        """Add a line to a panel, drawn as a speech bubble by the speaker in the image; returns the panel's lines.

        Args:
            panel_id: the panel's id.
            text: what is said (or the caption / sound effect).
            speaker: a character of the panel's cast by name; empty for narration (a caption box).
            kind: speech, thought, caption or sfx; empty: speech for a speaker, caption for narration.
        """
        studio = self.sessions.studio(request)
        studio.add_line(int(panel_id), text, speaker or None, kind or None)
        return studio.panel_lines(int(panel_id))

    @api_errors
    def list_lines(self, panel_id: int, request: gr.Request = None) -> list:
        """A panel's lines in order: speaker id and name ("" for narration), kind, text and nudge offset."""
        return self.sessions.studio(request).panel_lines(int(panel_id))

    @api_errors
    def line_warnings(self, panel_id: int, request: gr.Request = None) -> list[str]:
        """What is wrong with how a panel's lines show on its image, one sentence each ("line 4 does not fit
        panel 1: ..."): a line cut because even the smallest text does not fit, or a bubble that had to overlap
        another. Empty when every line shows in full; shorten or remove a line that is listed."""
        return self.sessions.studio(request).line_warnings(int(panel_id))

    @api_errors
    def list_styles(self, request: gr.Request = None) -> list:
        """The style presets: [label, id] pairs, for set_story_style."""
        return [list(choice) for choice in self.sessions.studio(request).style_choices()]

    @api_errors
    def set_story_style(
        self, story_id: int, style: str = "", negative: str = "", request: gr.Request = None
    ) -> dict:
        """Set a story's style preset (an id from list_styles, "" for none) and negative prompt; returns the story."""
        studio = self.sessions.studio(request)
        story = studio.set_story_style(int(story_id), style or "", negative or "")
        return {**story_dict(studio, story), "style": story.style, "negative": story.negative}

    @api_errors
    def export_pages(
        self,
        story_id: int,
        fmt: str = "pdf",
        layout: str = "grid",
        title_page: bool = False,
        fit: str = "auto",
        request: gr.Request = None,
    ) -> list[str]:
        """Export a story as comic pages with speech bubbles: fmt pdf, cbz or grid (PNG pages); layout grid,
        tiers, splash, book (one panel a page, caption below), webtoon or manga (right to left); fit auto (fill
        the cell when the shapes are close and no bubble is cut, else a smaller panel centred in it), crop or
        fit (always the whole picture)."""
        files = self.sessions.studio(request).export_story(
            int(story_id), fmt, layout=layout or "grid", title_page=bool(title_page), fit=fit or "auto"
        )
        return [self.sessions.hand_out(f) for f in files]

    @api_errors
    def import_project(self, archive: str | None, request: gr.Request = None) -> dict:
        """Import a project archive (from export_story with fmt="project") as a new story."""
        if archive is None:
            raise ValueError("import_project needs a project archive (.zip)")
        studio = self.sessions.studio(request)
        story = studio.import_project(archive)
        return {**story_dict(studio, story), "notes": list(studio.notes)}


class GenerationEndpoints:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    @api_errors
    def generate_panel(self, panel_id: int, new_seed: bool = False, request: gr.Request = None):
        """Generate one panel (new_seed: re-roll). Returns the image and the version (settings, notes).
        /cancel from the same client stops it after the current step."""
        studio = self.sessions.studio(request)
        event = self.sessions.cancels.start(request)
        try:
            version = panel_runner(studio)(int(panel_id), new_seed=bool(new_seed), cancel=event)
        finally:
            self.sessions.cancels.finish(request)
        return studio.version_image(version.id), version_dict(version)

    @api_errors
    def generate_story(self, story_id: int, regenerate_all: bool = False, request: gr.Request = None) -> list[dict]:
        """Generate the panels that have no up-to-date image (all with regenerate_all); returns the new
        versions. Each panel is its own GPU call; /cancel from the same client stops the run."""
        studio = self.sessions.studio(request)
        event = self.sessions.cancels.start(request)
        try:
            made = studio.generate_story(
                int(story_id), only_outdated=not regenerate_all, cancel=event, run_panel=panel_runner(studio)
            )
        finally:
            self.sessions.cancels.finish(request)
        return [version_dict(v) for v in made]

    @api_errors
    def best_of_panel(self, panel_id: int, n: int = 4, request: gr.Request = None) -> list[dict]:
        """Draw n new seeds for a panel, keep all as versions, make the best-scoring the active one;
        returns the versions, best first. /cancel stops it between draws."""
        studio = self.sessions.studio(request)
        event = self.sessions.cancels.start(request)
        try:
            made = studio.best_of_panel(int(panel_id), int(n), cancel=event, run_panel=panel_runner(studio))
        finally:
            self.sessions.cancels.finish(request)
        return [version_dict(v) for v in made]

    @api_errors
    def story_scores(self, story_id: int, request: gr.Request = None) -> dict:
        """The story's consistency table: characters x panels (positions), each cell a score record
        or None where the panel does not have that character; `low` lists the flagged cells."""
        table = self.sessions.studio(request).story_scores(int(story_id))
        cells = [[vars(cell) if cell is not None else None for cell in row] for row in table.cells]
        low = [{"character": name, "panel": position + 1} for name, position in table.low()]
        return {"characters": table.characters, "panels": [p + 1 for p in table.positions], "cells": cells, "low": low}

    @api_errors
    def cancel(self, request: gr.Request = None) -> str:
        """Stop this client's running generation after its current step (others' jobs are not touched)."""
        if self.sessions.cancels.cancel(request):
            return "cancelling: the generation stops after the current step"
        return "nothing of yours is generating"


class WorkspaceEndpoints:
    """A script's workspace: each gradio_client Client gets its own; keep its key to come back."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    @api_errors
    def workspace(self, request: gr.Request = None) -> dict:
        """This client's workspace: its key (keep it to reopen the workspace from another script) and its limits."""
        return {"key": self.sessions.current_key(request), "limits": self.sessions.limits.describe()}

    @api_errors
    def open_workspace(self, key: str, request: gr.Request = None) -> dict:
        """Act in the workspace this key opens from now on (the key is checked; a wrong one is refused)."""
        try:
            self.sessions.open_key(request, key)
        except KeyError as err:
            raise ValueError(str(err)) from err
        return self.workspace(request)

    @api_errors
    def delete_workspace(self, request: gr.Request = None) -> str:
        """Delete this client's workspace with everything in it."""
        self.sessions.delete(request)
        return "deleted this workspace with everything in it"


# -- registration: gr.api for JSON-only endpoints, hidden components where files travel ----------------


def register_api(sessions: Sessions) -> None:
    """Add the named endpoints to the Blocks being built."""
    characters, stories, generation = (
        CharacterEndpoints(sessions),
        StoryEndpoints(sessions),
        GenerationEndpoints(sessions),
    )
    model = MODEL
    for fn in (
        characters.list_characters,
        characters.delete_character,
        stories.list_stories,
        stories.create_story,
        stories.get_story,
        stories.add_panel,
        stories.update_panel,
        stories.move_panel,
        stories.delete_panel,
        stories.set_active_version,
        stories.import_script,
        stories.add_line,
        stories.list_lines,
        stories.line_warnings,
        stories.list_styles,
        stories.set_story_style,
    ):
        gr.api(fn, api_name=fn.__name__)
    gr.api(generation.generate_story, api_name="generate_story", **model)
    gr.api(generation.best_of_panel, api_name="best_of_panel", **model)
    gr.api(generation.story_scores, api_name="story_scores")
    gr.api(generation.cancel, api_name="cancel", queue=False)  # beside the queue: it must reach a full one
    if sessions.workspaces:
        workspace = WorkspaceEndpoints(sessions)
        for fn in (workspace.workspace, workspace.open_workspace, workspace.delete_workspace):
            gr.api(fn, api_name=fn.__name__)
    register_file_endpoints(characters, stories, generation)


def register_file_endpoints(characters: CharacterEndpoints, stories: StoryEndpoints, generation: GenerationEndpoints):
    """Endpoints that take or give files travel through hidden components (gr.api speaks JSON only)."""
    with gr.Column(visible=False):
        name, description = gr.Textbox(label="name"), gr.Textbox(label="description")
        character = gr.Textbox(label="character")
        image, mask = gr.File(label="image", type="filepath"), gr.File(label="mask", type="filepath")
        result = gr.JSON(label="result")
        panel_id = gr.Number(label="panel_id", precision=0)
        version_id = gr.Number(label="version_id", precision=0)
        story_id = gr.Number(label="story_id", precision=0)
        new_seed = gr.Checkbox(label="new_seed", value=False)
        picture = gr.Image(label="image", format="png", type="pil")
        legend = gr.JSON(label="legend")
        opacity = gr.Number(label="opacity", value=0.45)
        fmt = gr.Textbox(label="fmt", value="pdf")
        overlay, captions = gr.Checkbox(label="overlay", value=False), gr.Checkbox(label="captions", value=True)
        files = gr.File(label="files", file_count="multiple")
        archive = gr.File(label="archive", type="filepath")
        on_clash = gr.Textbox(label="on_clash", value="rename")
        one_file = gr.File(label="file")

    model = MODEL
    gr.on([], characters.add_character, [name, description, image, mask], result, api_name="add_character", **model)
    inputs = [character, name, description, image, mask]
    gr.on([], characters.update_character, inputs, result, api_name="update_character", **model)
    gr.on([], characters.reencode_character, [character], result, api_name="reencode_character", **model)
    gr.on([], characters.export_characters, [], one_file, api_name="export_characters")
    gr.on([], characters.import_characters, [archive, on_clash], result, api_name="import_characters")
    gr.on([], generation.generate_panel, [panel_id, new_seed], [picture, result], api_name="generate_panel", **model)
    gr.on([], stories.version_overlay, [version_id, opacity], [picture, legend], api_name="version_overlay")
    gr.on([], stories.export_story, [story_id, fmt, overlay, captions], files, api_name="export_story")
    gr.on([], stories.import_project, [archive], result, api_name="import_project")
    with gr.Column(visible=False):
        kind, strength = gr.Textbox(label="kind", value="edges"), gr.Number(label="strength", value=1.0)
        from_photo = gr.Checkbox(label="edges_from_photo", value=False)
    inputs = [panel_id, image, kind, strength, from_photo]
    gr.on([], stories.set_panel_control, inputs, result, api_name="set_panel_control")
    with gr.Column(visible=False):
        lora_file = gr.File(label="lora_file", type="filepath")
        source, weight = gr.Textbox(label="source", value=""), gr.Number(label="weight", value=1.0)
    gr.on([], stories.set_story_lora, [story_id, lora_file, source, weight], result, api_name="set_story_lora")
    gr.on([], stories.set_panel_lora, [panel_id, lora_file, source, weight], result, api_name="set_panel_lora")
    with gr.Column(visible=False):
        layout, title_page = gr.Textbox(label="layout", value="grid"), gr.Checkbox(label="title_page", value=False)
        fit = gr.Textbox(label="fit", value="auto")
    gr.on([], stories.export_pages, [story_id, fmt, layout, title_page, fit], files, api_name="export_pages")
