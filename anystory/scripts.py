"""Script import (issue 16): a pasted or uploaded script -> panels with their casts and dialogue.

Three formats, parsed here into one plain structure (no database, no model):

- **text**: one panel per paragraph (blank lines between); a line `Name: words` is that
  character's line of dialogue, `Narrator: words` / `Caption: words` a caption, `SFX: words` a
  sound effect; every other line is the panel's prompt.
- **json**: the documented format (README "Script import"): `{"format": "anystory.script",
  "title", "style", "characters": [{"name", "aliases": [...]}], "panels": [{"prompt", "cast":
  [names], "dialogue": [{"speaker", "text", "kind"}]}]}`.
- **fountain**: a basic Fountain screenplay: a scene heading (INT. / EXT. / EST. / I/E, or a
  line forced with '.') starts a panel, action becomes its prompt, a character cue (a line in
  capitals) and the dialogue under it become a bubble; parentheticals and transitions are
  skipped; `Title:` on the title page names the story.

Names are resolved by the caller (Studio.import_script) against the cast and the aliases.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

FORMATS = ("auto", "text", "json", "fountain")
SCRIPT_FORMAT = "anystory.script"
MAX_SCRIPT_CHARS = 500_000
MAX_PANELS = 500
NARRATION = {"narrator", "narration", "caption", "captions"}
SOUND = {"sfx", "sound", "fx"}


@dataclass
class ScriptLine:
    speaker: str | None  # a name as written, None for narration and sound effects
    text: str
    kind: str  # speech | thought | caption | sfx


@dataclass
class ScriptPanel:
    prompt: str
    cast: list[str] = field(default_factory=list)  # names as written, besides those in the prompt
    lines: list[ScriptLine] = field(default_factory=list)


@dataclass
class Script:
    title: str
    panels: list[ScriptPanel]
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> character name
    style: str = ""


def parse_script(text: str, fmt: str = "auto", title: str = "") -> Script:
    """The panels of a script; ValueError says what is wrong (and where)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown script format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the script is empty")
    if len(text) > MAX_SCRIPT_CHARS:
        raise ValueError(f"the script has {len(text)} characters; at most {MAX_SCRIPT_CHARS} are read")
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    if fmt == "auto":
        fmt = detect_format(text)
    script = {"text": _parse_text, "json": _parse_json, "fountain": _parse_fountain}[fmt](text)
    if title.strip():
        script.title = title.strip()
    if not script.panels:
        raise ValueError("the script has no panels")
    if len(script.panels) > MAX_PANELS:
        raise ValueError(f"the script has {len(script.panels)} panels; at most {MAX_PANELS} are imported at once")
    return script


def detect_format(text: str) -> str:
    """json when it looks like JSON, fountain when it has a scene heading, else text."""
    stripped = text.strip()
    if stripped.startswith("{"):
        return "json"
    if any(_SCENE.match(line.strip()) for line in stripped.splitlines()):
        return "fountain"
    return "text"


# -- plain text -------------------------------------------------------------------------------------

_DIALOGUE = re.compile(r"^\s*([^\W\d][\w .'\-]{0,38}?)\s*(\((?:thinks|thought|thinking)\))?\s*:\s*(\S.*)$")


def _line_for(name: str, words: str, thought: bool = False) -> ScriptLine:
    key = name.strip().lower()
    if key in NARRATION:
        return ScriptLine(None, words.strip(), "caption")
    if key in SOUND:
        return ScriptLine(None, words.strip(), "sfx")
    return ScriptLine(name.strip(), words.strip(), "thought" if thought else "speech")


def _parse_text(text: str) -> Script:
    panels = []
    for paragraph in re.split(r"\n\s*\n", text):
        prompt, lines = [], []
        for raw in paragraph.splitlines():
            if not raw.strip():
                continue
            found = _DIALOGUE.match(raw)
            if found and len(found.group(1).split()) <= 3:
                lines.append(_line_for(found.group(1), found.group(3), bool(found.group(2))))
            else:
                prompt.append(raw.strip())
        if prompt or lines:
            panels.append(ScriptPanel(" ".join(prompt), [], lines))
    return Script(title="", panels=panels)


# -- JSON ---------------------------------------------------------------------------------------------


def _parse_json(text: str) -> Script:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"the script is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from err
    if not isinstance(data, dict) or data.get("format", SCRIPT_FORMAT) != SCRIPT_FORMAT:
        raise ValueError(f'a JSON script is an object with "format": "{SCRIPT_FORMAT}"')
    aliases: dict[str, str] = {}
    characters = data.get("characters", [])
    if not isinstance(characters, list):
        raise ValueError('"characters" must be a list of {"name", "aliases"}')
    for number, character in enumerate(characters, start=1):
        if not isinstance(character, dict) or not isinstance(character.get("name"), str):
            raise ValueError(f"character {number} needs a name")
        names = character.get("aliases", [])
        if not isinstance(names, list) or not all(isinstance(a, str) and a.strip() for a in names):
            raise ValueError(f"character {number} ({character['name']}): aliases must be a list of names")
        for alias in names:
            aliases[alias.strip()] = character["name"].strip()
    raw_panels = data.get("panels")
    if not isinstance(raw_panels, list):
        raise ValueError('a JSON script needs "panels": a list')
    panels = []
    for number, raw in enumerate(raw_panels, start=1):
        where = f"panel {number}"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be an object")
        prompt, cast, dialogue = raw.get("prompt", ""), raw.get("cast", []), raw.get("dialogue", [])
        if not isinstance(prompt, str):
            raise ValueError(f"{where}: prompt must be text")
        if not isinstance(cast, list) or not all(isinstance(c, str) for c in cast):
            raise ValueError(f"{where}: cast must be a list of names")
        if not isinstance(dialogue, list):
            raise ValueError(f"{where}: dialogue must be a list")
        lines = []
        for k, line in enumerate(dialogue, start=1):
            if not isinstance(line, dict) or not isinstance(line.get("text"), str):
                raise ValueError(f"{where}, line {k}: needs text")
            speaker = line.get("speaker")
            if speaker is not None and not isinstance(speaker, str):
                raise ValueError(f"{where}, line {k}: speaker must be a name or null")
            kind = line.get("kind") or ("speech" if speaker else "caption")
            lines.append(ScriptLine(speaker.strip() if speaker and speaker.strip() else None, line["text"], kind))
        panels.append(ScriptPanel(prompt.strip(), [c.strip() for c in cast], lines))
    title = data.get("title", "")
    style = data.get("style", "")
    if not isinstance(title, str) or not isinstance(style, str):
        raise ValueError("title and style must be text")
    return Script(title=title.strip(), panels=panels, aliases=aliases, style=style.strip())


# -- Fountain -----------------------------------------------------------------------------------------

_SCENE = re.compile(r"^(?:(?:INT|EXT|EST|INT\./EXT|INT/EXT|I/E)[. ]|\.(?=[^.]))", re.IGNORECASE)
_CUE = re.compile(r"^@?([A-Z][A-Z0-9 .'\-]*?)\s*(\([^)]*\))?\s*\^?$")
_TRANSITION = re.compile(r"^(?:[A-Z ]+ TO:|>.*[^<])$")


def _parse_fountain(text: str) -> Script:
    lines = text.split("\n")
    title, start = "", 0
    if lines and re.match(r"^\s*Title\s*:", lines[0], re.IGNORECASE):  # the title page runs to a blank line
        while start < len(lines) and lines[start].strip():
            key, _, value = lines[start].partition(":")
            if key.strip().lower() == "title":
                title = value.strip()
            start += 1
    panels: list[ScriptPanel] = []
    action: list[str] = []
    current: ScriptPanel | None = None

    def close_action() -> None:
        if action and current is not None:
            current.prompt = " ".join(filter(None, [current.prompt, *action]))
        action.clear()

    i = start
    while i < len(lines):
        line = lines[i].strip()
        before_blank = i == 0 or not lines[i - 1].strip()
        if not line:
            i += 1
            continue
        if _SCENE.match(line) and before_blank:
            close_action()
            current = ScriptPanel("")
            panels.append(current)
            i += 1
            continue
        if current is None:  # action before the first scene heading: a panel of its own
            current = ScriptPanel("")
            panels.append(current)
        cue = _CUE.match(line)
        has_dialogue = i + 1 < len(lines) and lines[i + 1].strip()
        if cue and before_blank and has_dialogue and not _TRANSITION.match(line) and any(c.isalpha() for c in line):
            close_action()
            name, extension = cue.group(1).strip(), (cue.group(2) or "").upper()
            words = []
            i += 1
            while i < len(lines) and lines[i].strip():
                spoken = lines[i].strip()
                if not (spoken.startswith("(") and spoken.endswith(")")):  # parentheticals are stage directions
                    words.append(spoken)
                i += 1
            if words:
                line_ = _line_for(name, " ".join(words))
                if "V.O" in extension and line_.kind == "speech":
                    line_.kind = "caption"  # a voice-over reads as a caption box
                    line_.speaker = None
                current.lines.append(line_)
            continue
        if _TRANSITION.match(line) or line.startswith(("[[", "/*", "=", "#")):
            i += 1
            continue
        action.append(line.lstrip("!"))
        i += 1
    close_action()
    return Script(title=title, panels=[p for p in panels if p.prompt or p.lines])
