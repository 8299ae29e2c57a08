"""The Studio: the one service the UI and scripts call — library + stories + pipeline + one GPU.

    studio = Studio.open("./data", preview=True)             # or Studio(data_dir, pipeline)
    mia = studio.add_character("Mia", "a young woman with a red scarf", Image.open("mia.png"))
    story = studio.create_story("The walk")
    panel = studio.add_panel(story.id, "[Mia] walks in the rain")
    version = studio.generate_panel(panel.id)                 # image + route maps, kept as a version
    studio.export_story(story.id, "pdf", "walk.pdf")

Encode once: a character is encoded when it is added (or its picture changes) and the encoding
is stored; generations read it from disk through a memory cache. Encodings made by other weights
are detected as stale and re-encoded on first use, with a note.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import bubbles as bub
from . import images as imgs
from . import pages as pg
from . import render
from . import scripts as scr
from .control_pictures import control_picture_for, edge_map, scribble_map, store_control_picture
from .control_settings import CONTROL_KINDS, check_control
from .files import DiskFull
from .library import Character, CharacterNotFound, Library
from .limits import LimitReached, Limits
from .lora_files import LoraFileError, lora_cache_key, lora_load_source, lora_setting
from .lora_settings import is_stored_lora
from .mentions import iter_mentions, mentioned_names, resolve_mentions
from .model_loading import ModelLoading, ModelNotLoaded
from .model_slot import ModelSlot, TurnCancelled
from .names import name_key
from .scores import LOW_SCORE, CharacterScore, PanelScores
from .storage import StudioDatabase
from .story import ROUTERS, DeletedVersions, Panel, StorageReport, Stories, Story, Version, check_setting
from .styles import Style, load_styles, negative_prompt

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "./data"
EXAMPLE_CAST_DIR = Path(__file__).resolve().parent.parent / "assets" / "cast"
PREVIEW_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "preview-model"
EXPORT_FORMATS = ("strip", "grid", "pdf", "cbz", "project")
# The preview model is trained at 256 px; its base never learned an unconditional prediction (no
# caption dropout in its fit), so classifier-free guidance has nothing to push from: guidance 1.
PREVIEW_PANEL = {"width": 256, "height": 256, "steps": 20, "guidance": 1.0}
REAL_PANEL = {"width": 1024, "height": 1024, "steps": 25, "guidance": 5.0}
MAX_BEST_OF = 8  # seeds one "best of N" may draw


# The SDXL ControlNet each control kind runs outside preview mode (README, Models: sizes, licences).
CONTROLNET_SOURCES = {
    "edges": "diffusers/controlnet-canny-sdxl-1.0",
    "depth": "diffusers/controlnet-depth-sdxl-1.0",
    "pose": "xinsir/controlnet-openpose-sdxl-1.0",
    "scribble": "xinsir/controlnet-scribble-sdxl-1.0",
}


class StudioError(ValueError):
    """Something the user asked for cannot be done; the message says why and what to do."""


class CharacterInUse(StudioError):
    pass


class GenerationCancelled(StudioError):
    pass


@dataclass
class PanelPlan:
    """What one panel asks of the pipeline, resolved from its prompt and ticked characters."""

    prompt: str  # with [Name] replaced by descriptions
    character_ids: list[int]
    phrases: list[str]  # each character's words in `prompt` (for the prompt router)
    warnings: list[str] = field(default_factory=list)
    negative: str = ""  # the style's, the story's and the panel's negative prompts
    style: str = ""  # the preset used


@dataclass
class ScoreTable:
    """A story's consistency at a glance: one row per character, one column per panel (its active
    version); a cell is that character's score there, or None where the panel does not have it
    (or was not scored)."""

    characters: list[str]
    panels: list[int]  # panel ids, in story order
    positions: list[int]  # their positions (0 = first)
    cells: list[list[CharacterScore | None]]  # [character][panel]
    low_score: float = LOW_SCORE

    def low(self) -> list[tuple[str, int]]:
        """(character, panel position) of every flagged cell: absent, or scored under `low_score`."""
        return [
            (name, self.positions[column])
            for name, row in zip(self.characters, self.cells)
            for column, cell in enumerate(row)
            if cell is not None and cell.low(self.low_score)
        ]


class LimitsGuard:
    """The Studio's limits, checked before every commit: a write that adds rows past a count limit,
    or grows the folder past its byte limit, is refused and rolled back (rows and files)."""

    TABLES = ("characters", "stories", "panels", "versions")

    def __init__(self, database: StudioDatabase, limits: Limits):
        self.database, self.limits = database, limits

    def _counts(self) -> dict[str, int]:
        return {table: self.database.count(table) for table in self.TABLES}

    def _bytes(self) -> int | None:
        return self.database.own_bytes() if self.limits.max_bytes is not None else None

    def before(self, db) -> tuple[dict[str, int], int | None]:
        return self._counts(), self._bytes()

    def check(self, db, before: tuple[dict[str, int], int | None]) -> None:
        counts, used = before
        for table, now in self._counts().items():
            if now > counts[table]:
                self.limits.check_count(table, counts[table], now - counts[table])
        after = self._bytes()
        if after is not None and after > used:
            self.limits.check_bytes(used, after - used)


class Studio:
    def __init__(
        self,
        data_dir: str | os.PathLike,
        pipeline,
        *,
        preview: bool = False,
        keep_route_record: bool = True,
        limits: Limits | None = None,
        model_slot: ModelSlot | None = None,
        scoring: bool = True,
        dino=None,
        low_score: float = LOW_SCORE,
    ):
        """One data folder (a writer's cast and stories) on a pipeline: a loaded one, or a
        `ModelLoading` still loading it (the Studio opens at once; model calls wait for it).

        Several Studios (workspaces) can share one pipeline: give them one `model_slot`, so that
        one model call (encode or generate) runs at a time among them, the others waiting in line.
        scoring: score each character of each generated panel (consistency.py); dino: a loaded
        `consistency.DinoScorer` for the DINO score too; low_score: the CLIP score flagged low.
        """
        self.data_dir = Path(data_dir)
        self.limits = limits or Limits.local()
        self._database = StudioDatabase(self.data_dir)
        self._database.guard = LimitsGuard(self._database, self.limits)
        self._library = Library(self._database)
        self._stories = Stories(self._database)
        self._model = pipeline if isinstance(pipeline, ModelLoading) else ModelLoading.loaded(pipeline)
        self.preview = preview
        self.controlnet_sources = dict(CONTROLNET_SOURCES)  # control kind -> ControlNet (hub id, folder, file)
        self.keep_route_record = keep_route_record
        self._panel_defaults: dict | None = None
        self.encode_count = 0  # encoder passes made by this Studio (encode once: see tests)
        self._local = threading.local()  # per thread: `notes`
        self._encodings: dict[int, tuple[str, str, object]] = {}  # id -> (updated, encoder_id, encoding)
        self._gpu = model_slot or ModelSlot(self.limits.max_queue)  # one model call at a time
        self._state = threading.Lock()
        self._busy: set[int] = set()  # characters used by the running generation
        self.exports_dir = self.data_dir / "exports"
        self.routers = ROUTERS  # the router choices a panel can make
        self.scoring, self.dino, self.low_score = scoring, dino, low_score
        self._scorer = None  # consistency.Scorer, made on first use (it caches reference embeddings)
        self.styles: dict[str, Style] = load_styles()  # presets are data: assets/styles.json

    @property
    def pipeline(self):
        """The pipeline, waiting for it while it loads; StudioError when it failed to load."""
        try:
            return self._model.get()
        except ModelNotLoaded as err:
            raise StudioError(str(err)) from err

    @pipeline.setter
    def pipeline(self, pipeline) -> None:
        self._model = ModelLoading.loaded(pipeline)

    @property
    def model_loading(self) -> ModelLoading:
        """The pipeline's loading (done from the start when the Studio was given a pipeline)."""
        return self._model

    @property
    def model_state(self) -> str:
        """"loading" (until the model has loaded and what waited for it has run: the example
        cast), "ready" or "failed: <why>"."""
        if not self._model.settled:
            return "loading"
        error = self._model.error
        return "ready" if error is None else f"failed: {error}"

    def wait_for_model(
        self, progress: Callable[[float, str], None] | None = None, cancel: threading.Event | None = None
    ) -> None:
        """Wait while the model loads, saying so through `progress`; a cancel stops the wait."""
        said = False
        while not self._model.done:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("cancelled while the model was loading")
            if progress is not None and not said:
                progress(0.0, "model loading…")
                said = True
            self._model.wait(0.2)
        self.pipeline  # noqa: B018 (raises the StudioError of a failed load)

    @property
    def panel_defaults(self) -> dict:
        """A new panel's size, steps, guidance and router (known while the model loads when the
        loading says which router it will default to)."""
        if self._panel_defaults is None:  # one dict, made once: callers may change it
            router = self._model.default_router if not self._model.ready else None
            if router is None:
                router = self.pipeline.default_router
            self._panel_defaults = dict(PREVIEW_PANEL if self.preview else REAL_PANEL, router=router)
        return self._panel_defaults

    @panel_defaults.setter
    def panel_defaults(self, value: dict) -> None:
        self._panel_defaults = dict(value)

    @property
    def notes(self) -> list[str]:
        """Messages for the user from the last operation of the calling thread. Per thread, as the
        app serves each browser request in a worker thread: one writer never reads another's notes."""
        if not hasattr(self._local, "notes"):
            self._local.notes = []
        return self._local.notes

    @notes.setter
    def notes(self, value: list[str]) -> None:
        self._local.notes = list(value)

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
        *,
        model: str | None = None,
        adapter: str | None = None,
        preview: bool = False,
        offload: bool = False,
        limits: Limits | None = None,
        dino: str | None = None,
        **pipeline_kwargs,
    ) -> Studio:
        """Load the model (the shipped preview model in preview mode) and open the data folder; `dino`
        names a DINOv2 model (hub id or folder) to score with too."""
        pipeline = load_pipeline(
            data_dir, model=model, adapter=adapter, preview=preview, offload=offload, **pipeline_kwargs
        )
        return cls(data_dir, pipeline, preview=preview, limits=limits, dino=load_dino(dino, pipeline))

    def close(self) -> None:
        """Close the data folder's database connections (the Studio is not used afterwards)."""
        self._database.close()
        self._encodings.clear()

    @property
    def model_id(self) -> str:
        p = self.pipeline
        return f"{p.base_model}|{p.mode}|{p.encoder_id}"

    # -- characters ------------------------------------------------------------------------------

    def _prepare_picture(self, image, mask) -> tuple[Image.Image, Image.Image, list[str]]:
        picture = imgs.read_image(image, "image")
        warnings = []
        if mask is not None:
            mask_image, warning = imgs.read_mask(mask, picture.size)
        else:
            alpha = imgs.alpha_mask(picture)
            mask_image, warning = imgs.read_mask(
                alpha if alpha is not None else Image.new("L", picture.size, 255), picture.size
            )
            if alpha is None:
                warning = "no mask and no transparency: the whole picture is the character"
        if warning:
            warnings.append(warning)
        return picture, mask_image, warnings

    def _encode(self, picture: Image.Image, mask: Image.Image):
        try:
            with self._gpu.turn():  # the pipeline swaps attention processors while encoding: one at a time
                encoding = self.pipeline.encode_subject(picture, mask)
        except ValueError as err:
            raise StudioError(str(err)) from err
        self.encode_count += 1
        return encoding

    def check_room(self, what: str) -> None:
        """Refuse early (before any model call) when one more `what` would pass a limit."""
        self.limits.check_count(what, self._database.count(what))
        if self.limits.max_bytes is not None:
            self.limits.check_bytes(self._database.own_bytes())

    def add_character(self, name: str, description: str, image, mask=None) -> Character:
        """Check the name, the limits, the picture and mask (all cheap), then encode once and store
        everything in one transaction."""
        self._library.check_name(name)
        self.check_room("characters")
        picture, mask_image, self.notes = self._prepare_picture(image, mask)
        encoding = self._encode(picture, mask_image)
        character = self._library.add_character(
            name,
            description,
            imgs.png_bytes(picture),
            imgs.png_bytes(mask_image),
            imgs.png_bytes(imgs.thumbnail(picture, mask_image)),
            encoding.to_bytes(),
            self.pipeline.encoder_id,
        )
        self._encodings[character.id] = (character.updated, character.encoder_id, encoding)
        return character

    def update_character(self, id_or_name, *, name=None, description=None, image=None, mask=None) -> Character:
        """Rename / re-describe; a new picture or mask is re-encoded at once."""
        character = self._library.get_character(id_or_name)
        self.notes = []
        if name is not None:
            self._library.check_name(name, except_id=character.id)  # before any encoding
        if image is None and mask is None:
            return self._library.update_character(character.id, name=name, description=description)
        picture = image if image is not None else Image.open(character.image_path)
        if mask is None and image is None:
            mask = Image.open(character.mask_path)
        picture, mask_image, self.notes = self._prepare_picture(picture, mask)
        encoding = self._encode(picture, mask_image)
        self._library.update_character(
            character.id,
            name=name,
            description=description,
            image_png=imgs.png_bytes(picture),
            mask_png=imgs.png_bytes(mask_image),
            thumbnail_png=imgs.png_bytes(imgs.thumbnail(picture, mask_image)),
        )
        character = self._library.set_encoding(character.id, encoding.to_bytes(), self.pipeline.encoder_id)
        self._encodings[character.id] = (character.updated, character.encoder_id, encoding)
        return character

    def characters(self, search: str | None = None) -> list[Character]:
        """The cast by name; `search` keeps those whose name or description contains it."""
        return self._library.characters(search)

    def character_names(self) -> list[str]:
        return self._library.names()

    def get_character(self, id_or_name) -> Character:
        """By id, or by name in any case; CharacterNotFound lists the known names."""
        return self._library.get_character(id_or_name)

    def has_own_characters(self) -> bool:
        """Whether the cast holds a character of its own (not one shared, unchanged, from the
        example cast: those files are hard links to the shared copy)."""
        return any(os.stat(c.image_path).st_nlink == 1 for c in self._library.characters())

    def adopt_example_cast(self, template: Studio) -> list[Character]:
        """Give this Studio the characters of another one (the example cast, encoded once), sharing
        their stored files; a name already in this cast is left alone."""
        return self._library.adopt_characters(template._library)

    def add_example_cast(self, folder: str | os.PathLike | None = None) -> list[str]:
        """Add the built-in cast (assets/cast/cast.json); names already in the cast are left alone."""
        folder = Path(folder or EXAMPLE_CAST_DIR)
        entries = json.loads((folder / "cast.json").read_text(encoding="utf-8"))["characters"]
        known = {name_key(name) for name in self._library.names()}
        added = []
        for entry in entries:
            if name_key(entry["name"]) not in known:
                self.add_character(entry["name"], entry["description"], folder / entry["file"])
                added.append(entry["name"])
        return added

    def add_example_story(self, folder: str | os.PathLike | None = None) -> Story | None:
        """Add the built-in example story (assets/cast/cast.json: the cast alone and together) when
        its characters are all in the cast; None when the file has none or one is missing."""
        folder = Path(folder or EXAMPLE_CAST_DIR)
        example = json.loads((folder / "cast.json").read_text(encoding="utf-8")).get("story")
        if not example:
            return None
        known = {name_key(name) for name in self._library.names()}
        if any(name_key(name) not in known for panel in example["panels"] for name in mentioned_names(panel["prompt"])):
            return None
        story = self.create_story(example["title"])
        for panel in example["panels"]:
            self.add_panel(story.id, panel["prompt"], seed=int(panel["seed"]))
        return story

    def panels_using(self, id_or_name) -> list[tuple[Story, Panel]]:
        character = self._library.get_character(id_or_name)
        return [(self._stories.get_story(p.story_id), p) for p in self._stories.panels_using_character(character.id)]

    def delete_character(self, id_or_name, force: bool = False) -> None:
        """Refuses while a generation uses the character, and (unless forced) while panels do."""
        character = self._library.get_character(id_or_name)
        with self._state:
            if character.id in self._busy:
                raise CharacterInUse(f"{character.name} is used by the generation running now; try again when it ends")
            users = self.panels_using(character.id)
            if users and not force:
                where = ", ".join(f"“{story.title}” panel {panel.position + 1}" for story, panel in users)
                raise CharacterInUse(f"{character.name} is used by {where}; delete anyway to remove it from them")
            self._stories.delete_character(character.id)  # with its settings in every panel
            self._encodings.pop(character.id, None)

    def stale_characters(self) -> list[Character]:
        """Characters whose stored encoding was made by other weights than the loaded ones."""
        return [c for c in self._library.characters() if c.encoder_id != self.pipeline.encoder_id or not c.has_encoding]

    def character_encoding(self, id_or_name):
        """The stored encoding (memory cache); stale or missing ones are re-encoded, with a note."""
        from .encoding import SubjectEncoding

        character = self._library.get_character(id_or_name)
        cached = self._encodings.get(character.id)
        if cached and cached[0] == character.updated and cached[1] == self.pipeline.encoder_id:
            return cached[2]
        if character.encoder_id != self.pipeline.encoder_id or not character.has_encoding:
            return self._reencode(character, f"{character.name} was encoded by other weights; encoded again")
        try:
            encoding = SubjectEncoding.from_bytes(self._library.read_encoding(character.id), character.name)
        except (ValueError, OSError):
            return self._reencode(character, f"{character.name}'s stored encoding was unreadable; encoded again")
        self._encodings[character.id] = (character.updated, character.encoder_id, encoding)
        return encoding

    def reencode_character(self, id_or_name) -> Character:
        character = self._library.get_character(id_or_name)
        self._reencode(character, f"{character.name} encoded again")
        return self._library.get_character(character.id)

    def _reencode(self, character: Character, note: str):
        """Encode a stored character again; a failure marks it "failed" (shown; Re-encode retries)."""
        try:
            picture = imgs.read_image(character.image_path)
            mask, _ = imgs.read_mask(Image.open(character.mask_path), picture.size)
            encoding = self._encode(picture, mask)
        except Exception as err:
            self._library.mark_status(character.id, "failed")
            raise StudioError(f"{character.name} could not be encoded: {err}") from err
        character = self._library.set_encoding(character.id, encoding.to_bytes(), self.pipeline.encoder_id)
        self._encodings[character.id] = (character.updated, character.encoder_id, encoding)
        self.notes.append(note)
        return encoding

    def encoding_status(self, character: Character) -> str:
        """ "ready", "stale" (made by other weights than the loaded ones), "missing" or "failed"."""
        if not character.has_encoding:
            return "missing"
        if not self._model.ready:  # whether it is stale is known once the model has loaded
            return character.status
        if character.encoder_id != self.pipeline.encoder_id:
            return "stale"
        return character.status

    def auto_mask(self, image) -> Image.Image:
        """A mask found by automatic matting (optional rembg); ImageInputError says when it is missing."""
        return imgs.auto_mask(imgs.read_image(image, "image"))

    def read_picture(self, image) -> Image.Image:
        """A user's picture decoded as a character's picture would be (ImageInputError says why not)."""
        return imgs.read_image(image, "image")

    def mask_preview(self, image, mask=None) -> tuple[Image.Image, list[str]]:
        picture, mask_image, warnings = self._prepare_picture(image, mask)
        return imgs.mask_preview(picture, mask_image), warnings

    def export_characters(self, path=None, ids: list[int] | None = None) -> Path:
        """The cast (or some of it) as a zip that imports back; a new file in exports/ by default."""
        return self._library.export_characters(path or self.export_path("cast", ".zip"), ids)

    def import_characters(self, path, on_clash: str = "rename") -> list[Character]:
        imported = self._library.import_characters(path, on_clash, check_picture=imgs.check_stored_picture)
        stale = [c.name for c in imported if c.encoder_id != self.pipeline.encoder_id]
        self.notes = (
            [f"encoded by other weights, will be encoded again on first use: {', '.join(stale)}"] if stale else []
        )
        return imported

    # -- stories and panels ----------------------------------------------------------------------

    def stories(self) -> list[Story]:
        """Every story, oldest first."""
        return self._stories.stories()

    def get_story(self, story_id: int) -> Story:
        return self._stories.get_story(story_id)

    def create_story(self, title: str = "Untitled story") -> Story:
        return self._stories.create_story(title)

    def rename_story(self, story_id: int, title: str) -> Story:
        return self._stories.rename_story(story_id, title)

    def delete_story(self, story_id: int) -> None:
        """Delete a story with its panels, versions and their files."""
        self._stories.delete_story(story_id)

    def panels(self, story_id: int) -> list[Panel]:
        """The story's panels in order."""
        return self._stories.panels(story_id)

    def get_panel(self, panel_id: int) -> Panel:
        return self._stories.get_panel(panel_id)

    def panel_cast(self, panel: Panel) -> list[tuple[Character, bool]]:
        """The panel's characters with whether the prompt names them: named ones (known) in prompt
        order, then the ticked ones it does not name."""
        by_key = {name_key(c.name): c for c in self._library.characters()}
        by_id = {c.id: c for c in by_key.values()}
        cast: dict[int, tuple[Character, bool]] = {}
        for name in mentioned_names(panel.prompt):
            character = by_key.get(name_key(name))
            if character is not None:
                cast.setdefault(character.id, (character, True))
        for character_id in panel.characters:
            if character_id in by_id:
                cast.setdefault(character_id, (by_id[character_id], False))
        return list(cast.values())

    def style_choices(self) -> list[tuple[str, str]]:
        """(label, id) of every style preset, for a story or a panel to pick."""
        return [(style.label, style.id) for style in self.styles.values()]

    def set_story_style(self, story_id: int, style: str = "", negative: str = "") -> Story:
        """The story's style preset (an id of `style_choices`, "" for none) and negative prompt;
        every panel follows it unless it picks its own."""
        self._check_style(style)
        return self._stories.set_story_style(story_id, style, negative)

    def _check_style(self, style) -> None:
        if style not in ("", None) and style not in self.styles:
            raise StudioError(f"unknown style {style!r}; the presets are {', '.join(self.styles)}")

    def add_panel(self, story_id: int, prompt: str = "", **settings) -> Panel:
        """A new panel with this Studio's defaults (size, steps, router) unless given."""
        self._check_cast_ids(settings)
        self._check_style(settings.get("style"))
        return self._stories.add_panel(story_id, prompt, **{**self.panel_defaults, **settings})

    def update_panel(self, panel_id: int, **fields) -> Panel:
        self._check_cast_ids(fields)
        self._check_style(fields.get("style"))
        return self._stories.update_panel(panel_id, **fields)

    # -- control pictures (ControlNet) -----------------------------------------------------------

    def set_panel_control(
        self, panel_id: int, picture, kind: str, strength: float = 1.0, *, edges_from_photo: bool = False
    ) -> Panel:
        """Give a panel a control picture: an uploaded pose / depth / edge / scribble picture, or
        (`edges_from_photo`) the edges of an uploaded photo, computed without a model (kind
        "edges"). Kept by content in the data folder; the kind and strength go with the panel's
        settings, so every version keeps the picture it was made with."""
        if edges_from_photo and kind != "edges":
            raise StudioError(f"edges from a photo make an edge picture: choose the kind 'edges', not {kind!r}")
        placeholder = f"controls/{'0' * 64}.png"  # the setting is checked before a file is written
        try:
            check_control({"kind": kind, "strength": strength, "image": placeholder})
        except ValueError as err:
            raise StudioError(str(err)) from err
        self._stories.get_panel(panel_id)  # an unknown panel is refused before anything is stored
        image = imgs.read_image(picture, "control picture")
        if edges_from_photo:
            image = edge_map(image)
        if self.limits.max_bytes is not None:
            self.limits.check_bytes(self._database.own_bytes())
        name = store_control_picture(self.data_dir, image)
        return self._stories.update_panel(panel_id, control={"kind": kind, "strength": strength, "image": name})

    def set_panel_scribble(self, panel_id: int, drawing, strength: float = 1.0) -> Panel:
        """Give a panel a scribble drawn in the editor (dark strokes on a white or transparent
        canvas; a PIL image or an array), kept as a scribble control picture."""
        if isinstance(drawing, np.ndarray):
            drawing = Image.fromarray(drawing)
        if not isinstance(drawing, Image.Image):
            raise StudioError("draw the scribble first")
        if drawing.width * drawing.height > 4096 * 4096:
            raise StudioError(f"the drawing is {drawing.width}x{drawing.height}: too large")
        try:
            scribble = scribble_map(drawing)
        except ValueError as err:
            raise StudioError(str(err)) from err
        return self.set_panel_control(panel_id, scribble, "scribble", strength)

    def set_control_strength(self, panel_id: int, strength: float) -> Panel:
        control = self._stories.get_panel(panel_id).control
        if not control:
            raise StudioError("this panel has no control picture: add one first")
        return self._stories.update_panel(panel_id, control={**control, "strength": strength})

    def clear_panel_control(self, panel_id: int) -> Panel:
        """Generate the panel without a ControlNet again (versions keep their pictures)."""
        return self._stories.update_panel(panel_id, control={})

    def control_picture(self, control: dict) -> Image.Image | None:
        """The picture a panel's (or a version's) `control` setting names, as stored; None for none."""
        if not control:
            return None
        control = check_control(control)
        return control_picture_for(self.data_dir, control, None)

    def controlnet_source(self, kind: str) -> str:
        """The ControlNet a control kind runs: in preview mode a tiny one made offline from the
        pipeline's own UNet (`ControlNetModel.from_unet`), kept under models/; else the hub id of
        `controlnet_sources` (downloaded when first used)."""
        if kind not in CONTROL_KINDS:
            raise StudioError(f"unknown control kind {kind!r}; kinds are {', '.join(CONTROL_KINDS)}")
        if not self.preview:
            return self.controlnet_sources[kind]
        folder = self.data_dir / "models" / "tiny-controlnet"
        if not (folder / "config.json").exists():
            from .files import temp_name_for
            from .tiny_control import tiny_controlnet

            staging = temp_name_for(folder)
            tiny_controlnet(self.pipeline.unet).save_pretrained(staging, safe_serialization=True)
            staging.replace(folder)  # whole or not at all
        return str(folder)

    def _control_arguments(self, panel: Panel) -> dict:
        if not panel.control:
            return {}
        picture = control_picture_for(self.data_dir, panel.control, (panel.width, panel.height))
        return {
            "controlnet": self.controlnet_source(panel.control["kind"]),
            "control_image": picture,
            "controlnet_conditioning_scale": float(panel.control["strength"]),
        }

    # -- LoRA styles -----------------------------------------------------------------------------

    def set_story_lora(self, story_id: int, source, weight: float = 1.0, *, local_paths: bool = True) -> Story:
        """The story's LoRA style: a .safetensors file (e.g. an upload; stored by content in the data
        folder), a local folder holding one, or a hub id (downloaded when first used); None or "":
        none. Every panel follows it unless it has its own. Pickles are refused, nothing stored.
        local_paths=False: a typed source must be a hub id (the UI and the HTTP API upload files)."""
        self._stories.get_story(story_id)  # an unknown story is refused before anything is stored
        return self._stories.set_story_lora(story_id, self._lora_setting(source, weight, False, local_paths))

    def set_panel_lora(self, panel_id: int, source, weight: float = 1.0, *, local_paths: bool = True) -> Panel:
        """The panel's own LoRA (as `set_story_lora`), "none" for none whatever the story has, or
        None / "" to follow the story's again. Part of the generation settings: a change outdates it."""
        self._stories.get_panel(panel_id)
        return self._stories.update_panel(panel_id, lora=self._lora_setting(source, weight, True, local_paths))

    def set_story_lora_weight(self, story_id: int, weight: float) -> Story:
        """A new weight for the story's LoRA (0: as if none)."""
        lora = self._stories.get_story(story_id).lora
        if not lora:
            raise StudioError("this story has no LoRA: upload one first")
        try:
            return self._stories.set_story_lora(story_id, {**lora, "weight": weight})
        except ValueError as err:
            raise StudioError(str(err)) from err

    def set_panel_lora_weight(self, panel_id: int, weight: float) -> Panel:
        """A new weight for the panel's own LoRA (0: as if none)."""
        lora = self._stories.get_panel(panel_id).lora
        if not lora.get("source"):
            raise StudioError("this panel has no LoRA of its own: upload one first")
        try:
            return self._stories.update_panel(panel_id, lora={**lora, "weight": weight})
        except ValueError as err:
            raise StudioError(str(err)) from err

    def _lora_setting(self, source, weight, panel: bool, local_paths: bool) -> dict:
        if self.limits.max_bytes is not None and source not in (None, ""):
            self.limits.check_bytes(self._database.own_bytes())
        try:
            setting = lora_setting(self.data_dir, source, weight, panel=panel, local_paths=local_paths)
        except ValueError as err:
            raise StudioError(str(err)) from err
        self._check_lora_source(setting)
        return setting

    def _check_lora_source(self, lora: dict | None) -> None:
        """On a hosted app a LoRA is an uploaded file: no folder of the server, no hub download."""
        source = (lora or {}).get("source")
        if source and not self.limits.lora_by_name and not is_stored_lora(source):
            raise StudioError(f"this app loads only uploaded LoRA files, not {source!r}: upload the .safetensors file")

    def panel_lora(self, panel: Panel) -> dict | None:
        """The LoRA a panel generates with ({"source", "weight"}, its own or the story's), or None."""
        if panel.lora.get("none"):
            return None
        lora = panel.lora or self._stories.get_story(panel.story_id).lora
        return dict(lora) if lora else None

    def _use_lora(self, lora: dict | None) -> None:
        """Put the panel's LoRA on the pipeline (the caller holds the model turn). A loaded LoRA
        stays loaded, by source, so panels in a row do not read it again; a panel without one sets
        its weight to 0 (exactly the pipeline without it). One LoRA is kept at a time (memory)."""
        pipe = self.pipeline
        loaded = dict(pipe.lora_weights)
        wanted = lora if lora and lora["weight"] != 0 else None
        self._check_lora_source(wanted)  # a project archive may name one
        key = None if wanted is None else lora_cache_key(wanted["source"])
        name = None if key is None else "style_" + hashlib.sha256(key.encode()).hexdigest()[:16]
        for other, weight in loaded.items():
            if other != name and weight != 0:
                pipe.set_lora_weight(other, 0.0)
        if wanted is None:
            return
        if name in loaded:
            if loaded[name] != wanted["weight"]:
                pipe.set_lora_weight(name, wanted["weight"])
            return
        if loaded:
            pipe.unload_lora()
        try:
            pipe.load_lora(lora_load_source(self.data_dir, wanted["source"]), wanted["weight"], adapter_name=name)
        except Exception as err:
            with contextlib.suppress(Exception):  # no half-loaded LoRA stays behind
                pipe.unload_lora()
            if isinstance(err, LoraFileError):
                raise StudioError(str(err)) from err
            raise StudioError(f"the LoRA {wanted['source']} could not be loaded: {err}") from err

    def _check_cast_ids(self, settings: dict) -> None:
        """Refuse a panel's characters / strengths / layout naming a character that does not
        exist (as the HTTP API does): CharacterNotFound lists the known names."""
        known = None
        for key in ("characters", "strengths", "layout"):
            if key not in settings:
                continue
            value = check_setting(key, settings[key])  # ids as ints, or ValueError on bad values
            for character_id in value:
                known = {c.id for c in self._library.characters()} if known is None else known
                if character_id not in known:
                    raise CharacterNotFound(character_id, self._library.names())

    def move_panel(self, panel_id: int, new_position: int) -> list[Panel]:
        """Move a panel to `new_position` (0 = first; clamped); returns the story's panels."""
        return self._stories.move_panel(panel_id, new_position)

    def duplicate_panel(self, panel_id: int) -> Panel:
        """A copy of the panel's settings right after it, with no versions yet."""
        return self._stories.duplicate_panel(panel_id)

    def delete_panel(self, panel_id: int) -> None:
        """Delete a panel with its versions; later panels move up."""
        self._stories.delete_panel(panel_id)

    def versions(self, panel_id: int) -> list[Version]:
        """The panel's kept versions, oldest first."""
        return self._stories.versions(panel_id)

    def get_version(self, version_id: int) -> Version:
        return self._stories.get_version(version_id)

    def delete_version(self, version_id: int) -> Panel:
        """Delete one kept version; if it was active, the newest remaining one becomes active."""
        return self._stories.delete_version(version_id)

    def set_active_version(self, panel_id: int, version_id: int, *, restore_settings: bool = False) -> Panel:
        """Make a kept version the panel's image. With restore_settings the panel also gets back the
        settings that made it (seed, prompt, ...), so "ready" means the settings match the image;
        the cast settings come back only while the version's characters are still the same ones."""
        if restore_settings:
            version = self._stories.get_version(version_id)
            if version.panel_id != panel_id:
                raise StudioError(f"version {version_id} belongs to panel {version.panel_id}, not panel {panel_id}")
            settings = version.settings
            keys = ["seed", "steps", "guidance", "width", "height", "router"]
            names = {c.id: c.name for c in self._library.characters()}
            subjects = settings.get("subjects", [])
            if [names.get(c) for c in subjects] == list(settings.get("subject_names", [])):
                keys += ["prompt", "characters", "strengths", "layout"]
            restored = {key: settings[key] for key in keys if key in settings}
            if restored:
                self._stories.update_panel(panel_id, **restored)
        return self._stories.set_active_version(panel_id, version_id)

    # -- lines and bubbles -----------------------------------------------------------------------

    def panel_lines(self, panel_id: int) -> list[dict]:
        """The panel's lines in order: speaker (a character id or None for narration), its name
        ("" for narration), kind (speech | thought | caption | sfx), text and the nudge offset."""
        names = {c.id: c.name for c in self._library.characters()}
        return [{**line, "name": names.get(line["speaker"], "")} for line in self._stories.get_panel(panel_id).lines]

    def set_panel_lines(self, panel_id: int, lines: list[dict]) -> Panel:
        """Replace the panel's lines. A speaker is a character of the panel's cast, by id or name
        (None or "" is narration, which becomes a caption box); text is checked to be drawable by
        an installed font. Lines never outdate the panel's image: bubbles are a layer over it."""
        panel = self._stories.get_panel(panel_id)
        cast = {c.id: c for c, _ in self.panel_cast(panel)}
        resolved = []
        for number, line in enumerate(lines, start=1):
            if not isinstance(line, dict):
                raise StudioError(f"line {number} must be an object")
            speaker = line.get("speaker")
            if isinstance(speaker, str):
                speaker = speaker.strip().strip("[]")
                speaker = self._library.get_character(speaker).id if speaker else None
            if speaker is not None and speaker not in cast:
                known = ", ".join(c.name for c in cast.values()) or "nobody yet"
                raise StudioError(f"line {number}: the speaker is not in this panel's cast (in it: {known})")
            kind = line.get("kind") or ("speech" if speaker is not None else "caption")
            resolved.append({**line, "speaker": speaker, "kind": kind})
        return self._stories.set_lines(panel_id, resolved, check_text=bub.check_line)

    def add_line(self, panel_id: int, text: str, speaker: int | str | None = None, kind: str | None = None) -> Panel:
        """Append one line: `speaker` a cast member (id or name) or None for narration; `kind`
        defaults to speech for a speaker and caption for narration."""
        current = [{k: v for k, v in line.items() if k != "name"} for line in self.panel_lines(panel_id)]
        return self.set_panel_lines(panel_id, [*current, {"speaker": speaker, "text": text, "kind": kind}])

    def remove_line(self, panel_id: int, index: int) -> Panel:
        lines = self._stories.get_panel(panel_id).lines
        if not 0 <= index < len(lines):
            raise StudioError(f"the panel has {len(lines)} lines; there is no line {index + 1}")
        return self._stories.set_lines(panel_id, lines[:index] + lines[index + 1 :])

    def set_panel_page_fit(self, panel_id: int, fit: str) -> Panel:
        """How this panel meets its cell on every page export and preview: "auto", "crop" (fill the
        cell), "fit" (the whole picture), or "" to follow the export's choice. Never outdates the image."""
        try:
            return self._stories.set_page_fit(panel_id, fit)
        except ValueError as err:
            raise StudioError(str(err)) from None

    def nudge_line(self, panel_id: int, index: int, dx: float, dy: float) -> Panel:
        """Move a line's bubble by (dx, dy), fractions of the image from where it is placed
        automatically; the nudge is kept with the panel and applies to every re-roll."""
        lines = self._stories.get_panel(panel_id).lines
        if not 0 <= index < len(lines):
            raise StudioError(f"the panel has {len(lines)} lines; there is no line {index + 1}")
        lines[index] = {**lines[index], "offset": [float(dx), float(dy)]}
        return self._stories.set_lines(panel_id, lines)

    def panel_bubbles(
        self,
        panel_id: int,
        version_id: int | None = None,
        *,
        rtl: bool = False,
        size: tuple[int, int] | None = None,
        text_size: int | None = None,
        captions: bool = True,
    ) -> list[bub.Bubble]:
        """Where the panel's lines go on a version's image (the active one by default): each
        speaker's bubble by the region the router gave that character in that version. `size`
        places them on the image scaled to that size and `text_size` letters them at that size
        (pages: the size a panel is shown at on its page, the same lettering on every panel).
        `captions=False` leaves narration out (a picture book prints it under the picture)."""
        panel = self._stories.get_panel(panel_id)
        version_id = panel.active_version_id if version_id is None else version_id
        if version_id is None:
            return []
        version = self._stories.get_version(version_id)
        maps = None
        if version.route_map_path is not None:
            maps, _ = render.load_route_maps(version.route_map_path)
        subjects = list(version.settings.get("subjects") or [])
        numbers = [k for k, line in enumerate(panel.lines) if captions or line["kind"] != "caption"]
        specs = [
            bub.LineSpec(
                line["kind"],
                line["text"],
                subjects.index(line["speaker"]) if maps is not None and line["speaker"] in subjects else None,
                tuple(line.get("offset", (0.0, 0.0))),
            )
            for line in (panel.lines[k] for k in numbers)
        ]
        if size is None:
            with Image.open(version.image_path) as image:
                size = image.size
        placed = bub.place_bubbles(maps, size, specs, rtl=rtl, text_size=text_size)
        for bubble in placed:  # each bubble keeps the number of its line in the panel
            bubble.index = numbers[bubble.index]
        return placed

    def line_warnings(self, panel_id: int, version_id: int | None = None, *, rtl: bool = False) -> list[str]:
        """What is wrong with how the panel's lines show on its image, in words ("line 2 does not
        fit panel 3: ..."): a line cut because even the smallest text does not fit, or a bubble
        that had to overlap another one. Empty when every line shows in full and apart."""
        panel = self._stories.get_panel(panel_id)
        return [
            f"line {bubble.index + 1} does not fit panel {panel.position + 1}: {bubble.warning}"
            for bubble in self.panel_bubbles(panel_id, version_id, rtl=rtl)
            if bubble.warning
        ]

    def panel_picture(
        self, panel_id: int, *, bubbles: bool = True, version_id: int | None = None, rtl: bool = False
    ) -> Image.Image | None:
        """A version's image (the active one by default) with the lines' bubbles drawn over a copy;
        `bubbles=False` is the clean image. None when the panel has no image yet."""
        panel = self._stories.get_panel(panel_id)
        version_id = panel.active_version_id if version_id is None else version_id
        if version_id is None:
            return None
        image = self.version_image(version_id)
        if not bubbles or not panel.lines:
            return image
        return bub.draw_bubbles(image, self.panel_bubbles(panel_id, version_id, rtl=rtl))

    def panel_problems(self, panel: Panel) -> list[str]:
        """What stops a panel from being generated, in words, as the cast is now: characters its
        prompt names that are not in the cast, ticked characters that were deleted, too many
        characters. Empty when the panel can be generated."""
        known = {name_key(c.name): c for c in self._library.characters()}
        problems = []
        unknown = list(dict.fromkeys(n for n in mentioned_names(panel.prompt) if name_key(n) not in known))
        for name in unknown:
            problems.append(f"[{name}] is not in the cast")
        ids = {c.id for c in known.values()}
        gone = [c for c in panel.characters if c not in ids]
        if gone:
            problems.append(f"{len(gone)} ticked character(s) were deleted; untick them")
        cast = {known[name_key(n)].id for n in mentioned_names(panel.prompt) if name_key(n) in known}
        cast |= {c for c in panel.characters if c in ids}
        limit = self.pipeline.anystory_config.max_subjects
        if len(cast) > limit:
            problems.append(f"{len(cast)} characters; at most {limit} can share a picture")
        return problems

    def plan_panel(self, panel: Panel) -> PanelPlan:
        """[Name] -> description; ticked-but-unnamed characters are appended to the prompt so each
        subject has words of its own; every subject must still exist."""
        try:
            prompt, mentions = resolve_mentions(panel.prompt, self._library.mention_map())
        except ValueError as err:
            raise StudioError(str(err)) from err
        ids, phrases = [], []
        for mention in mentions:
            if mention.character_id not in ids:
                ids.append(mention.character_id)
                phrases.append(prompt[mention.start : mention.end])
        known = {c.id: c for c in self._library.characters()}
        for character_id in panel.characters:
            if character_id in ids:
                continue
            if character_id not in known:
                raise StudioError(f"a character ticked for this panel (#{character_id}) was deleted; untick it")
            words = known[character_id].description.strip() or known[character_id].name
            prompt = f"{prompt.rstrip().rstrip(',')}, {words}" if prompt.strip() else words
            ids.append(character_id)
            phrases.append(words)
        story = self._stories.get_story(panel.story_id)
        style = self.styles.get(panel.style or story.style)
        if (panel.style or story.style) and style is None:
            raise StudioError(f"unknown style {panel.style or story.style!r}; the presets are {', '.join(self.styles)}")
        plan = PanelPlan(prompt=prompt, character_ids=ids, phrases=phrases)
        if style is not None:
            plan.prompt, plan.style = style.apply(prompt), style.id
        plan.negative = negative_prompt(style.negative if style else "", story.negative, panel.negative)
        prompt = plan.prompt
        limit = self.pipeline.anystory_config.max_subjects
        if len(ids) > limit:
            raise StudioError(f"this panel has {len(ids)} characters; at most {limit} can share a picture")
        # The real text encoders read 77 CLIP tokens. The preview's tiny tokenizer splits words into
        # letters, so its count would tell a writer to cut prompts that fit a real model: no warning.
        tokens = 0 if self.preview else len(self.pipeline.tokenizer(prompt).input_ids)
        window = self.pipeline.tokenizer.model_max_length
        if tokens > window:
            plan.warnings.append(
                f"the prompt is {tokens - 2} tokens; the text encoder reads the first {window - 2}, the rest is ignored"
            )
        return plan

    def _router_arguments(self, panel: Panel, plan: PanelPlan) -> dict:
        router = panel.router
        if router == "learned" and self.pipeline.default_router != "learned":
            router = "prompt"
            plan.warnings.append("these weights have no trained router: the prompt router placed the characters")
        arguments = {"router": router}
        if router == "prompt":
            arguments["subject_phrases"] = plan.phrases
        if router == "layout":
            missing = [self._library.get_character(c).name for c in plan.character_ids if c not in panel.layout]
            if missing:
                raise StudioError(f"router 'layout' needs a box for every character; none for {', '.join(missing)}")
            arguments["layout"] = [panel.layout[c] for c in plan.character_ids]
        return arguments

    def generate_panel(
        self,
        panel_id: int,
        *,
        new_seed: bool = False,
        progress: Callable[[float, str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Version:
        """Generate one panel and keep it as its new active version.

        A failure or a cancel leaves the panel's earlier versions as they were and marks the
        panel failed with the reason.
        """
        if new_seed:
            self._stories.update_panel(panel_id, seed=int(np.random.default_rng().integers(0, 2**31 - 1)))
        panel = self._stories.get_panel(panel_id)
        self.limits.check_job(panel.width, panel.height, panel.steps)
        self.check_room("versions")
        self.wait_for_model(progress, cancel)  # planning reads the model's limits and tokenizer
        self.plan_panel(panel)  # a bad prompt is refused before the job waits for the model
        with self._model_turn(progress, cancel):
            panel = self._stories.get_panel(panel_id)  # as it is now, after the wait
            try:
                # The guard first: a delete checks `_busy` under `_state`, so none slips in
                # between reading the cast (planning, re-encoding) and storing the version.
                with self._state:
                    plan = self.plan_panel(panel)
                    self._busy = set(plan.character_ids)
                return self._generate(panel, plan, progress, cancel)
            except Exception as err:
                failure = self._generation_failed(panel_id, err)
                if failure is err:
                    raise
                raise failure from err
            finally:
                with self._state:
                    self._busy = set()

    def _generation_failed(self, panel_id: int, err: Exception) -> Exception:
        """Mark the panel failed with the reason; returns the error to raise: `err` itself when
        it is already a sentence for the user, else a StudioError saying what failed."""
        if isinstance(err, StudioError | DiskFull | LimitReached):
            failure = err
        else:
            failure = StudioError(_friendly_failure(err))
        try:
            self._stories.mark_failed(panel_id, str(failure))
        except Exception as mark_err:  # noqa: BLE001 - the first error is the one to report
            log.warning("could not mark panel %s failed: %s", panel_id, mark_err)
        return failure

    def _generate(self, panel: Panel, plan: PanelPlan, progress, cancel) -> Version:
        """The steps of one generation after its guard is taken: encodings, the pipeline, the version."""
        import torch

        self.notes = list(plan.warnings)
        subjects = [self.character_encoding(c) for c in plan.character_ids]
        arguments = self._router_arguments(panel, plan)
        arguments.update(self._control_arguments(panel))
        lora = self.panel_lora(panel)
        self._use_lora(lora)
        if plan.character_ids:
            arguments["subject_scales"] = [float(panel.strengths.get(c, 1.0)) for c in plan.character_ids]
            arguments["return_route_record"] = self.keep_route_record

        started = time.monotonic()

        def on_step(pipe, step, timestep, tensors):
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("generation cancelled; the panel keeps its earlier versions")
            if self.limits.job_seconds is not None and time.monotonic() - started > self.limits.job_seconds:
                minutes = self.limits.job_seconds / 60
                raise GenerationCancelled(
                    f"generation stopped: it ran past the {minutes:g}-minute limit of one job; "
                    "the panel keeps its earlier versions (try fewer steps or a smaller size)"
                )
            if progress is not None:
                progress((step + 1) / panel.steps, f"step {step + 1} of {panel.steps}")
            return {}

        output = self.pipeline(
            plan.prompt,
            subjects=subjects,
            num_inference_steps=panel.steps,
            guidance_scale=panel.guidance,
            width=panel.width,
            height=panel.height,
            generator=torch.Generator().manual_seed(panel.seed),
            callback_on_step_end=on_step,
            **({"negative_prompt": plan.negative} if plan.negative else {}),
            **arguments,
        )
        image = output.images[0]
        route_maps = None
        if output.route_maps is not None:
            record = output.route_record
            route_maps = render.route_maps_bytes(output.route_maps[0].numpy(), _record_for_image(record, 0))
        names = [self._library.get_character(c).name for c in plan.character_ids]
        scores = None
        if self.scoring and plan.character_ids and output.route_maps is not None:
            scores = self._score(image, output.route_maps[0].numpy(), plan.character_ids, names)
        settings = {
            **panel.generation_settings(),
            "model_prompt": plan.prompt,
            "model_negative": plan.negative,
            "style_used": plan.style,
            "subjects": plan.character_ids,
            "subject_names": names,
            "router_used": arguments["router"] if plan.character_ids else None,
            "controlnet_used": arguments.get("controlnet"),
            "lora_used": lora,
            "notes": list(self.notes),
        }
        return self._stories.add_version(
            panel.id,
            settings,
            self.model_id,
            imgs.png_bytes(image),
            route_maps,
            route_maps_suffix=".npz",
            scores=scores.to_dict() if scores is not None else None,
        )

    # -- consistency scores ----------------------------------------------------------------------

    def scorer(self):
        """The `consistency.Scorer` on the pipeline's own CLIP image encoder (and DINO if loaded)."""
        from .consistency import Scorer

        encoder = f"{self.pipeline.encoder_id}|clip"
        if self._scorer is None or self._scorer.encoder != encoder:
            self._scorer = Scorer(self.pipeline.image_embeddings, encoder=encoder, dino=self.dino)
        return self._scorer

    def _score(self, image: Image.Image, route_maps, character_ids: list[int], names: list[str]) -> PanelScores | None:
        """Score one panel's characters (the caller holds the model turn); a scoring failure is a
        note, never a lost generation. An absent character gets a note too."""
        references = []
        for character_id in character_ids:
            character = self._library.get_character(character_id)

            def crop(character=character):
                from .consistency import reference_crop

                picture = imgs.read_image(character.image_path)
                mask, _ = imgs.read_mask(Image.open(character.mask_path), picture.size)
                return reference_crop(picture, mask)

            references.append(((character.id, character.updated), crop))
        try:
            scores = self.scorer().score(image, route_maps, names, references)
        except Exception as err:  # noqa: BLE001 - the image is kept; the note says why it has no score
            log.warning("scoring failed: %s", err)
            self.notes.append(f"the consistency score could not be computed: {err}")
            return None
        for name in scores.absent():
            self.notes.append(f"{name} got no region of the picture (the router placed it nowhere): flagged")
        return scores

    def version_scores(self, version_id: int) -> PanelScores | None:
        """A version's consistency scores; None when it was not scored (no characters, made
        before scoring existed, or scoring was off)."""
        version = self._stories.get_version(version_id)
        if version.scores is None:
            return None
        try:
            return PanelScores.from_dict(version.scores)
        except ValueError:
            return None

    def score_version(self, version_id: int) -> PanelScores:
        """Score (again) a kept version from its image and route maps, e.g. one made before
        scoring existed; the characters must still be in the cast."""
        version = self._stories.get_version(version_id)
        if version.route_map_path is None:
            raise StudioError("this version has no characters, so nothing to score")
        ids = list(version.settings.get("subjects", []))
        known = {c.id for c in self._library.characters()}
        gone = [name for i, name in zip(ids, version.settings.get("subject_names", [])) if i not in known]
        if gone:
            raise StudioError(f"cannot score: {', '.join(gone)} left the cast since")
        names = [self._library.get_character(i).name for i in ids]
        route_maps, _ = render.load_route_maps(version.route_map_path)
        image = self.version_image(version_id)
        self.notes = []
        with self._gpu.turn():
            scores = self._score(image, route_maps, ids, names)
        if scores is None:
            raise StudioError("; ".join(self.notes) or "the version could not be scored")
        self._stories.set_version_scores(version_id, scores.to_dict())
        return scores

    def story_scores(self, story_id: int) -> ScoreTable:
        """Characters x panels: the score of each character in each panel's active version."""
        panels = self._stories.panels(story_id)
        names: list[str] = []
        found: list[dict[str, CharacterScore]] = []
        current = {c.id: c.name for c in self._library.characters()}
        for panel in panels:
            cells: dict[str, CharacterScore] = {}
            scores = self.version_scores(panel.active_version_id) if panel.active_version_id else None
            if scores is not None:
                ids = self._stories.get_version(panel.active_version_id).settings.get("subjects", [])
                for entry in scores.characters:
                    identity = ids[entry.index] if entry.index < len(ids) else None
                    name = current.get(identity, entry.name)  # renamed since: the name it has now
                    cells[name] = entry
                    if name not in names:
                        names.append(name)
            found.append(cells)
        return ScoreTable(
            characters=names,
            panels=[p.id for p in panels],
            positions=[p.position for p in panels],
            cells=[[cells.get(name) for cells in found] for name in names],
            low_score=self.low_score,
        )

    def best_of_panel(
        self,
        panel_id: int,
        n: int,
        *,
        progress: Callable[[float, str], None] | None = None,
        cancel: threading.Event | None = None,
        run_panel: Callable[..., Version] | None = None,
    ) -> list[Version]:
        """Draw `n` new seeds for a panel, keep every result as a version, and make the best-scoring
        one active (characters present first, then the mean score), with the settings that made it.
        The writer can still pick another. Each draw is its own model turn (`run_panel`, as in
        `generate_story`). Returns the new versions, best first."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_BEST_OF:
            raise StudioError(f"best of N takes N from 1 to {MAX_BEST_OF}, got {n!r}")
        panel = self._stories.get_panel(panel_id)
        if not self.scoring:
            raise StudioError("best of N needs the consistency scores, which are off in this Studio")
        problems = self.panel_problems(panel)
        if problems:
            raise StudioError("; ".join(problems))
        self.limits.check_count("versions", self._database.count("versions"), n)
        run_panel = run_panel or self.generate_panel
        made: list[Version] = []
        notes: list[str] = []
        for number in range(n):
            if cancel is not None and cancel.is_set():
                break

            def draw_progress(fraction, text, number=number):
                if progress is not None:
                    progress((number + fraction) / n, f"draw {number + 1} of {n}: {text}")

            made.append(run_panel(panel_id, new_seed=True, progress=draw_progress, cancel=cancel))
            notes += [f"draw {number + 1}: {note}" for note in self.notes]
        if not made:
            raise GenerationCancelled("best of N cancelled before its first draw; the panel is as it was")
        ranked = sorted(made, key=self._rank, reverse=True)
        self.set_active_version(panel_id, ranked[0].id, restore_settings=True)
        best = self.version_scores(ranked[0].id)
        mean = best.mean() if best is not None else None
        summary = f"kept {len(made)} versions; the best (seed {ranked[0].settings['seed']}"
        summary += f", score {mean:.3f})" if mean is not None else ")"
        self.notes = [*notes, summary + " is the active one"]
        return [self._stories.get_version(v.id) for v in ranked]

    def _rank(self, version: Version) -> tuple[int, float, int]:
        scores = self.version_scores(version.id)
        present, mean = scores.rank() if scores is not None else (0, -1.0)
        return present, mean, -version.id  # a tie goes to the earlier draw

    @contextlib.contextmanager
    def _model_turn(self, progress, cancel):
        """This job's turn at the model: the visitor sees their place in line and may cancel."""

        def on_wait(ahead: int) -> None:
            if progress is not None:
                progress(0.0, f"waiting for the model: {ahead} job{'s' if ahead != 1 else ''} ahead of yours")

        try:
            with self._gpu.turn(on_wait=on_wait, cancel=cancel):
                yield
        except TurnCancelled as err:
            raise GenerationCancelled("generation cancelled before it started; the panel is as it was") from err

    def outdated_panels(self, story_id: int) -> list[Panel]:
        """The story's panels without an up-to-date image (empty, outdated or failed), in order."""
        return [p for p in self._stories.panels(story_id) if p.status != "ready"]

    def generate_story(
        self,
        story_id: int,
        *,
        only_outdated: bool = True,
        progress: Callable[[float, str], None] | None = None,
        cancel: threading.Event | None = None,
        run_panel: Callable[..., Version] | None = None,
    ) -> list[Version]:
        """Generate every panel that has no up-to-date image (all of them with only_outdated=False).

        `run_panel(panel_id, progress=..., cancel=...)` generates one panel (default
        `generate_panel`; the app passes one that makes each panel its own GPU call).
        """
        run_panel = run_panel or self.generate_panel
        panels = self.outdated_panels(story_id) if only_outdated else self._stories.panels(story_id)
        skipped = []
        for panel in list(panels):  # panels that cannot be generated are left out, and said so
            problems = self.panel_problems(panel)
            if problems:
                panels.remove(panel)
                skipped.append(f"skipped panel {panel.position + 1}: {'; '.join(problems)}")
        versions, notes = [], list(skipped)
        for number, panel in enumerate(panels):
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(f"generation cancelled after {number} of {len(panels)} panels")

            def panel_progress(fraction, text, number=number):
                if progress is not None:
                    progress((number + fraction) / len(panels), f"panel {number + 1} of {len(panels)}: {text}")

            versions.append(run_panel(panel.id, progress=panel_progress, cancel=cancel))
            notes += [f"panel {panel.position + 1}: {note}" for note in self.notes]
        self.notes = notes
        return versions

    def storage_report(self) -> StorageReport:
        """The data folder's bytes by kind (characters, versions, exports, database, other), the
        versions a bulk delete would free, and the free space of its disk."""
        return self._stories.storage_report(self.exports_dir)

    def delete_versions(
        self, story_id: int | None = None, *, keep_active: bool = True, older_than=None
    ) -> DeletedVersions:
        """Delete kept versions in bulk (of one story or all; by default all but each panel's
        active one; `older_than` keeps the newer ones); works on a full disk. Returns what went."""
        return self._stories.delete_versions(story_id, keep_active=keep_active, older_than=older_than)

    def reroll_panel(self, panel_id: int, **kwargs) -> Version:
        """A new seed for one panel; the other panels keep theirs."""
        return self.generate_panel(panel_id, new_seed=True, **kwargs)

    # -- looking at results ----------------------------------------------------------------------

    def version_image(self, version_id: int) -> Image.Image:
        return Image.open(self._stories.get_version(version_id).image_path).convert("RGB")

    def version_overlay(
        self,
        version_id: int,
        opacity: float = 0.45,
        steps: tuple[int, int] | None = None,
        grid: tuple[int, int] | None = None,
        *,
        legend: bool = True,
        show: list[int] | None = None,
    ) -> Image.Image:
        """The routes of a version over its image: each character's region filled and outlined in
        its colour, the background hatched, a legend with names below (`legend=False` where the
        page shows its own); `show` keeps only those characters (indexes into the version's)."""
        version = self._stories.get_version(version_id)
        image = self.version_image(version_id)
        if version.route_map_path is None:
            raise StudioError("this panel has no characters, so no routes to show")
        final, record = render.load_route_maps(version.route_map_path)
        maps = final
        if record is not None and (steps is not None or grid is not None):
            maps = render.select_route_maps(record, steps=steps, grid=grid)
        names = version.settings.get("subject_names", [])
        return render.overlay(image, maps, names, opacity=opacity, legend=legend, show=show, hatch_background=True)

    def version_legend(self, version_id: int) -> list[tuple[str, str]]:
        """(name, "#rrggbb") of each overlay colour: the version's characters, then the background."""
        names = self._stories.get_version(version_id).settings.get("subject_names", [])
        colours = render.palette(len(names)) + [render.BACKGROUND_COLOUR]
        return [(name, "#%02x%02x%02x" % colour) for name, colour in zip([*names, "background"], colours)]

    def route_record_choices(self, version_id: int) -> tuple[list[tuple[int, int]], list[int]]:
        """(grids, steps) kept for a version, for choosing the overlay's resolution and step range."""
        version = self._stories.get_version(version_id)
        if version.route_map_path is None:
            return [], []
        _, record = render.load_route_maps(version.route_map_path)
        if not record:
            return [], []
        return render.record_grids(record), render.record_steps(record)

    # -- exports ---------------------------------------------------------------------------------

    def export_story(
        self,
        story_id: int,
        fmt: str,
        path: str | os.PathLike | None = None,
        *,
        overlay: bool = False,
        captions: bool = True,
        bubbles: bool = True,
        layout: str | None = None,
        title_page: bool = False,
        fit: str = "auto",
    ) -> list[Path]:
        """Export the active versions: "strip" (PNG), "grid" (PNG pages), "pdf", "cbz", or
        "project" (an archive that imports back). Returns the files written.

        With a page `layout` (pages.LAYOUTS: grid, tiers, splash, book, webtoon, manga) the
        pages of "grid" / "pdf" / "cbz" are comic pages: bubbles drawn (right to left for manga),
        an optional title page with the cast, `fit` for every panel: "auto" (fill the cell when the
        shapes are close and no bubble is cut, else a smaller bordered panel centred in the cell),
        "fit" (the whole picture, always) or "crop" (fill the cell, keeping the bubbles where they
        fit in it): see pages.PageItem."""
        if layout is not None and fmt in ("grid", "pdf", "cbz"):
            story = self._stories.get_story(story_id)
            suffix = ".png" if fmt == "grid" else f".{fmt}"
            path = Path(path) if path else self.export_path(f"{story.title} - {layout}", suffix)
            path.parent.mkdir(parents=True, exist_ok=True)
            pages = self.story_pages(story_id, layout, title_page=title_page, fit=fit, bubbles=bubbles)
            if fmt == "pdf":
                return [render.export_pdf(pages, path, resolution=150.0, title=story.title)]
            if fmt == "cbz":
                return [render.export_cbz(pages, path, title=story.title, manga=layout in pg.RTL_LAYOUTS)]
            return [
                render.export_png(page, path.with_name(f"{path.stem}-{i + 1}{path.suffix}"))
                for i, page in enumerate(pages)
            ]
        if fmt not in EXPORT_FORMATS:
            raise StudioError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        story = self._stories.get_story(story_id)
        suffix = {"strip": ".png", "grid": ".png", "pdf": ".pdf", "cbz": ".cbz", "project": ".zip"}[fmt]
        kind = {"strip": "strip", "grid": "pages"}.get(fmt, fmt)
        path = Path(path) if path else self.export_path(f"{story.title} - {kind}", suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "project":
            return [self._stories.export_project(story_id, path)]
        pictures, texts = [], []
        for panel in self._stories.panels(story_id):
            if panel.active_version_id is None:
                continue
            version = panel.active_version_id
            pictures.append(
                self.version_overlay(version)
                if overlay and self._has_routes(version)
                else self.panel_picture(panel.id, bubbles=bubbles)
            )
            texts.append(_caption(panel.prompt))
        if not pictures:
            raise StudioError("no panel of this story has an image yet: generate first")
        captions_or_none = texts if captions else None
        if fmt == "strip":
            return [render.export_png(render.strip(pictures, captions_or_none), path)]
        if fmt == "cbz":
            return [render.export_cbz(pictures, path, title=story.title)]
        pages = render.page_grid(pictures, captions=captions_or_none)
        if fmt == "pdf":
            return [render.export_pdf(pages, path, title=story.title)]
        if len(pages) == 1:
            return [render.export_png(pages[0], path)]
        return [
            render.export_png(page, path.with_name(f"{path.stem}-{i + 1}{path.suffix}")) for i, page in enumerate(pages)
        ]

    def story_pages(
        self, story_id: int, layout: str = "grid", *, title_page: bool = False, fit: str = "auto", bubbles: bool = True
    ) -> list[Image.Image]:
        """The story's pages in a layout (pages.LAYOUTS), as pictures: what every page export
        writes and what the live page preview shows. In a picture book ("book") the narration
        goes under the picture instead of a caption box."""
        if fit not in pg.FITS:
            raise StudioError(f"fit must be one of {', '.join(pg.FITS)}, got {fit!r}")
        if layout not in pg.LAYOUTS:
            raise StudioError(f"unknown layout {layout!r}; choose one of {', '.join(pg.LAYOUTS)}")
        story = self._stories.get_story(story_id)
        rtl = layout in pg.RTL_LAYOUTS
        items, cast = [], {}
        shown = [panel for panel in self._stories.panels(story_id) if panel.active_version_id is not None]
        lettering = pg.LETTERING["webtoon" if layout == "webtoon" else "page"]
        for number, panel in enumerate(shown):
            version = self._stories.get_version(panel.active_version_id)
            image = self.version_image(version.id)
            panel_fit = panel.page_fit or fit  # the panel's own choice wins over the export's
            placed = []
            if bubbles and panel.lines:
                # drawn at the size the page shows the picture: sharp, and lettered alike on every panel
                size = pg.shown_size(image.size, number, len(shown), layout, panel_fit)
                image = image.resize(size, Image.LANCZOS)
                placed = self.panel_bubbles(
                    panel.id, version.id, rtl=rtl, size=size, text_size=lettering, captions=layout != "book"
                )
            caption = ""
            if layout == "book":
                caption = " ".join(b_line["text"] for b_line in panel.lines if b_line["kind"] == "caption")
            keep = None  # a crop keeps the bubbles and where their tails point
            if placed:
                corners = [b.box for b in placed] + [(*b.tail, *b.tail) for b in placed if b.tail is not None]
                keep = tuple(f(c[k] for c in corners) for k, f in enumerate((min, min, max, max)))
            items.append(pg.PageItem(bub.draw_bubbles(image, placed) if placed else image, caption, panel_fit, keep))
            for character_id in version.settings.get("subjects") or []:
                cast.setdefault(character_id, None)
        if not items:
            raise StudioError("no panel of this story has an image yet: generate first")
        title = None
        if title_page:
            members = []
            for character in self._library.characters():
                if character.id in cast:
                    with Image.open(character.thumbnail_path) as picture:
                        members.append((character.name, picture.convert("RGB")))
            title = pg.TitlePage(story.title, members)
        return pg.compose_pages(items, layout, title=title)

    # -- script import -----------------------------------------------------------------------------

    def import_script(
        self,
        text: str,
        fmt: str = "auto",
        *,
        story_id: int | None = None,
        title: str = "",
        aliases: dict[str, str] | None = None,
    ) -> Story:
        """Panels, casts and dialogue from a script (scripts.py: plain text, JSON or Fountain),
        as a new story (or appended to `story_id`). Names and aliases ("the girl" -> Mia)
        resolve to characters of the library; in a prompt they become [Name]. Everything is
        checked first: unknown names are listed and nothing is written; then all panels and
        lines go in one transaction (all or nothing)."""
        try:
            script = scr.parse_script(text, fmt, title)
        except ValueError as err:
            raise StudioError(str(err)) from err
        if script.style:
            self._check_style(script.style)
        by_key = {name_key(c.name): c for c in self._library.characters()}
        terms: dict[str, Character | None] = {key: c for key, c in by_key.items()}
        unknown: dict[str, list[int]] = {}
        for alias, name in {**script.aliases, **(aliases or {})}.items():
            terms[name_key(alias)] = by_key.get(name_key(name))
            if terms[name_key(alias)] is None:
                unknown[f"{name} (for the alias {alias!r})"] = []

        def resolve(name: str, number: int) -> Character | None:
            character = terms.get(name_key(name.strip().strip("[]")))
            if character is None:
                unknown.setdefault(name.strip(), []).append(number)
            return character

        planned = []
        for number, panel in enumerate(script.panels, start=1):
            prompt = self._name_mentions(panel.prompt, terms)
            named = []
            for name in mentioned_names(prompt):
                if (character := resolve(name, number)) is not None:
                    named.append(character.id)
            ticked = [c.id for name in panel.cast if (c := resolve(name, number)) is not None]
            lines = []
            for k, line in enumerate(panel.lines, start=1):
                speaker = resolve(line.speaker, number) if line.speaker else None
                if speaker is not None and speaker.id not in named and speaker.id not in ticked:
                    ticked.append(speaker.id)
                try:
                    text_ = bub.check_line(line.kind, line.text)
                except ValueError as err:
                    raise StudioError(f"panel {number}, line {k}: {err}") from err
                lines.append({"speaker": speaker.id if speaker else None, "kind": line.kind, "text": text_})
            planned.append((prompt, [c for c in dict.fromkeys(ticked) if c not in named], lines))
        if unknown:
            listed = "; ".join(
                f"{name} (panel {', '.join(map(str, numbers[:5]))})" if numbers else name
                for name, numbers in unknown.items()
            )
            raise StudioError(
                f"the script names characters that are not in the cast: {listed}. Add them in the Characters tab, "
                "or map each to a cast member as an alias; nothing was imported"
            )
        with self._database.transaction():
            if story_id is None:
                story = self._stories.create_story(script.title or "Imported script")
            else:
                story = self._stories.get_story(story_id)
            if script.style:
                self._stories.set_story_style(story.id, script.style, story.negative)
            for prompt, ticked, lines in planned:
                panel = self.add_panel(story.id, prompt, characters=ticked)
                if lines:
                    self._stories.set_lines(panel.id, lines)
        return self._stories.get_story(story.id)

    @staticmethod
    def _name_mentions(prompt: str, terms: dict) -> str:
        """Cast names and aliases written plainly in a prompt become [Name] (longest first, whole
        words, any case); [Name] already written stays, an alias in brackets becomes the name."""
        def bracketed(match) -> str:
            character = terms.get(name_key(match.group(1)))
            return f"[{character.name}]" if character is not None else match.group(0)

        prompt = re.sub(r"\[([^\[\]]+)\]", bracketed, prompt)
        known = sorted((k for k, c in terms.items() if c is not None), key=len, reverse=True)
        if not known:
            return prompt
        pattern = re.compile(r"(?<![\w\[])(" + "|".join(re.escape(k) for k in known) + r")(?![\w\]])", re.IGNORECASE)
        return pattern.sub(lambda m: f"[{terms[name_key(m.group(1))].name}]", prompt)

    def export_path(self, name: str, suffix: str) -> Path:
        """A new file in the exports folder: `name - <date time>.suffix`, never an earlier export's."""
        stamp = time.strftime("%Y-%m-%d %H%M%S")
        stem = f"{render.safe_filename(name, max_length=64)} - {stamp}"
        path, n = self.exports_dir / f"{stem}{suffix}", 1
        while path.exists() or path.with_name(f"{path.stem}-1{suffix}").exists():
            n += 1
            path = self.exports_dir / f"{stem} ({n}){suffix}"
        return path

    def exports(self) -> list[Path]:
        """The files in the exports folder, newest first."""
        if not self.exports_dir.is_dir():
            return []
        files = [p for p in self.exports_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
        return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)

    def _has_routes(self, version_id: int) -> bool:
        return self._stories.get_version(version_id).route_map_path is not None

    def import_project(self, path) -> Story:
        story = self._stories.import_project(path, check_picture=imgs.check_stored_picture)
        stale = [c.name for c in self.stale_characters()]
        self.notes = (
            [f"encoded by other weights, will be encoded again on first use: {', '.join(stale)}"] if stale else []
        )
        return story


def load_dino(name: str | None, pipeline=None):
    """The DINOv2 scorer `--dino NAME` asks for (on the pipeline's device), or None."""
    if not name:
        return None
    from .consistency import DinoScorer

    device = pipeline._execution_device if pipeline is not None else "cpu"
    return DinoScorer(name, device=device, local_files_only=bool(os.environ.get("HF_HUB_OFFLINE")))


def panel_defaults_for(pipeline, preview: bool) -> dict:
    """A new panel's size, steps, guidance and router on this pipeline."""
    return dict(PREVIEW_PANEL if preview else REAL_PANEL, router=pipeline.default_router)


def preview_model_folder(folder: str | os.PathLike | None = None) -> Path:
    """The shipped preview model (assets/preview-model: `base/`, a diffusers SDXL folder, and
    `adapter/`, an AnyStory checkpoint; trained by `python -m anystory.training.preview_model`)."""
    folder = Path(folder or PREVIEW_MODEL_DIR)
    missing = [p for p in ("base/model_index.json", "adapter/config.json") if not (folder / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the preview model is incomplete: {folder} lacks {', '.join(missing)} (make it with "
            "`python -m anystory.training.preview_model --export assets/preview-model`)"
        )
    return folder


def load_pipeline(
    data_dir: str | os.PathLike,
    *,
    model: str | None = None,
    adapter: str | None = None,
    preview: bool = False,
    offload: bool = False,
    **pipeline_kwargs,
):
    """The AnyStory pipeline a Studio runs on: the shipped preview model (`preview_model_folder`;
    nothing is built or trained at launch) in preview mode, else `model` (hub id, folder or single
    file) with `adapter` (or public weights)."""
    from .pipeline import DEFAULT_BASE, AnyStoryPipeline

    if preview:
        folder = preview_model_folder()
        pipeline = AnyStoryPipeline.from_pretrained(
            str(folder / "base"), adapter=adapter or str(folder / "adapter"), local_files_only=True, **pipeline_kwargs
        )
    else:
        pipeline = AnyStoryPipeline.from_pretrained(model or DEFAULT_BASE, adapter=adapter, **pipeline_kwargs)
        if offload:
            pipeline.enable_model_cpu_offload()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _record_for_image(record: list[dict] | None, index: int) -> list[dict] | None:
    if record is None:
        return None
    return [{**entry, "gates": entry["gates"][index].numpy()} for entry in record]


def _caption(prompt: str) -> str:
    """The writer's prompt with [Name] shown as Name."""
    caption, cursor = [], 0
    for start, end, name in iter_mentions(prompt):
        caption.append(prompt[cursor:start] + name)
        cursor = end
    caption.append(prompt[cursor:])
    return "".join(caption).strip()


def _friendly_failure(err: Exception) -> str:
    text = str(err) or type(err).__name__
    if "out of memory" in text.lower() or type(err).__name__ == "OutOfMemoryError":
        return "the GPU ran out of memory: try a smaller size, fewer characters, or start the app with --offload"
    return f"generation failed: {text}"
