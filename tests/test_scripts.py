"""Script import (issue 16): each format to the expected panels and lines; a bad script changes nothing."""

import io
import json

import pytest
from PIL import Image

from anystory.scripts import detect_format, parse_script
from anystory.studio import Studio, StudioError
from anystory.tiny import synthetic_subject


@pytest.fixture
def studio(public_pipe, tmp_path):
    studio = Studio(tmp_path / "data", public_pipe, preview=True)
    for n, (name, description) in enumerate((("Mia", "a girl with a red scarf"), ("Rex", "a small brown dog")), 1):
        buffer = io.BytesIO()
        synthetic_subject(n).save(buffer, "PNG")
        studio.add_character(name, description, buffer.getvalue())
    return studio


def shape(studio, story) -> list[tuple]:
    """(prompt, ticked names, [(speaker, kind, text)]) per panel."""
    names = {c.id: c.name for c in studio.characters()}
    return [
        (p.prompt, [names[c] for c in p.characters],
         [(line["name"] or None, line["kind"], line["text"]) for line in studio.panel_lines(p.id)])
        for p in studio.panels(story.id)
    ]  # fmt: skip


PLAIN = """Mia walks Rex through the park at dawn.
Mia: Come on, Rex!
Rex: Woof.

The girl finds a ball under a bench.
Narrator: It was the red ball she had lost.
Mia (thinks): Finally.
SFX: Squeak!
"""

JSON = {
    "format": "anystory.script",
    "title": "The ball",
    "style": "comic",
    "characters": [{"name": "Mia", "aliases": ["the girl"]}, {"name": "Rex", "aliases": ["the dog"]}],
    "panels": [
        {"prompt": "the girl throws a ball", "cast": ["the dog"], "dialogue": [{"speaker": "Mia", "text": "Fetch!"}]},
        {"prompt": "the dog runs", "dialogue": [{"text": "He never came back... with the ball.", "kind": "caption"}]},
    ],
}

FOUNTAIN = """Title: The Walk
Author: Someone

INT. KITCHEN - MORNING

MIA pours cereal. REX waits by the door.

MIA
(yawning)
Walk time?

REX
Woof!

CUT TO:

EXT. PARK - DAY

The girl and the dog run across the grass.

NARRATOR (V.O.)
They ran until noon.
"""


def test_plain_text_one_panel_per_paragraph(studio):
    assert detect_format(PLAIN) == "text"
    story = studio.import_script(PLAIN, aliases={"the girl": "Mia"})
    assert shape(studio, story) == [
        ("[Mia] walks [Rex] through the park at dawn.", [], [("Mia", "speech", "Come on, Rex!"), ("Rex", "speech", "Woof.")]),
        ("[Mia] finds a ball under a bench.", [],
         [(None, "caption", "It was the red ball she had lost."), ("Mia", "thought", "Finally."), (None, "sfx", "Squeak!")]),
    ]  # fmt: skip


def test_json_with_aliases_and_style(studio):
    story = studio.import_script(json.dumps(JSON))
    assert story.title == "The ball" and story.style == "comic"
    assert shape(studio, story) == [
        ("[Mia] throws a ball", ["Rex"], [("Mia", "speech", "Fetch!")]),
        ("[Rex] runs", [], [(None, "caption", "He never came back... with the ball.")]),
    ]


def test_fountain_scenes_action_and_cues(studio):
    assert detect_format(FOUNTAIN) == "fountain"
    story = studio.import_script(FOUNTAIN, aliases={"the girl": "Mia", "the dog": "Rex"})
    assert story.title == "The Walk"
    assert shape(studio, story) == [
        ("[Mia] pours cereal. [Rex] waits by the door.", [], [("Mia", "speech", "Walk time?"), ("Rex", "speech", "Woof!")]),
        ("[Mia] and [Rex] run across the grass.", [], [(None, "caption", "They ran until noon.")]),
    ]  # fmt: skip


@pytest.mark.hostile
@pytest.mark.parametrize("script, fmt, message", [
    ("Mia meets Bob.\nBob: Hello.", "text", r"not in the cast: Bob \(panel 1\)"),
    ('{"format": "anystory.script", "panels": [', "json", "not valid JSON"),
    (json.dumps({**JSON, "characters": [{"name": "Zed", "aliases": ["the girl"]}]}), "json", r"Zed \(for the alias .the girl.\)"),
    (json.dumps({**JSON, "style": "oil"}), "json", "unknown style"),
    ("[Ghost] floats.", "text", "Ghost"),
    ("Mia: party \U0001f389", "text", "no installed font"),
    ("   ", "auto", "empty"),
])  # fmt: skip
def test_a_bad_script_changes_nothing(studio, script, fmt, message):
    before = (len(studio.stories()), studio.characters())
    with pytest.raises(StudioError, match=message):
        studio.import_script(script, fmt)
    assert (len(studio.stories()), studio.characters()) == before


def test_a_failure_while_writing_rolls_every_panel_back(studio, monkeypatch):
    story = studio.create_story("Keep")
    calls = []
    real = studio._stories.set_lines

    def failing(panel_id, lines, *args, **kwargs):
        calls.append(panel_id)
        if len(calls) == 2:
            raise OSError("disk trouble")
        return real(panel_id, lines, *args, **kwargs)

    monkeypatch.setattr(studio._stories, "set_lines", failing)
    with pytest.raises(OSError):
        studio.import_script(PLAIN, story_id=story.id, aliases={"the girl": "Mia"})
    assert studio.panels(story.id) == [] and len(studio.stories()) == 1


def test_parse_errors_name_the_place():
    with pytest.raises(ValueError, match="panel 2: cast must be a list"):
        parse_script(json.dumps({"format": "anystory.script", "panels": [{}, {"cast": "Mia"}]}))
    with pytest.raises(ValueError, match="unknown script format"):
        parse_script("x", "docx")
    assert Image  # the fixture's pictures


def test_the_readme_json_example_imports(studio):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Script import**") :]
    example = re.search(r"```json\n(.*?)```", section, re.DOTALL).group(1)
    story = studio.import_script(example)
    assert story.title == "The ball" and story.style == "comic"
    assert shape(studio, story)[0] == ("[Mia] throws a ball", ["Rex"], [("Mia", "speech", "Fetch!")])
