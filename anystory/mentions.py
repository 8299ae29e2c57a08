"""Mentions: a panel prompt names characters as `[Name]`.

`resolve_mentions` turns a writer's prompt into the prompt the model sees (each name replaced by
the character's description) and the spans of those descriptions, which the prompt router uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .names import name_key

# `[Name]`, not preceded by another `[` (so `[[...]]` stays text); no brackets or newlines inside.
_MENTION = re.compile(r"(?<!\[)\[([^\[\]\n]+)\]")


@dataclass
class Mention:
    """A character named in a prompt: the span [start, end) of its description in the MODEL prompt."""

    name: str
    character_id: int
    start: int
    end: int


def iter_mentions(prompt: str) -> list[tuple[int, int, str]]:
    """`(start, end, name)` of every `[Name]` in a panel prompt (spans in that prompt)."""
    found = []
    for match in _MENTION.finditer(prompt):
        name = match.group(1).strip()
        if name:
            found.append((match.start(), match.end(), name))
    return found


def mentioned_names(prompt: str) -> list[str]:
    """The names a prompt mentions, in order, as written."""
    return [name for _, _, name in iter_mentions(prompt)]


def resolve_mentions(prompt: str, characters: dict[str, tuple[int, str]]) -> tuple[str, list[Mention]]:
    """Replace each `[Name]` (any case) by that character's description.

    `characters` maps name -> (id, description). Returns the model prompt and one Mention per
    `[Name]` with the span of the description in it. A character with an empty description is
    replaced by its name. `[[`, empty or unmatched brackets are left as text. An unknown name
    raises ValueError listing the known names.
    """
    known = {name_key(name): (name, cid, description) for name, (cid, description) in characters.items()}
    parts: list[str] = []
    mentions: list[Mention] = []
    length = 0
    cursor = 0
    for start, end, written in iter_mentions(prompt):
        entry = known.get(name_key(written))
        if entry is None:
            listed = ", ".join(sorted(characters, key=name_key)) or "none yet"
            raise ValueError(f"the prompt names [{written}], which is not a character; known characters: {listed}")
        name, cid, description = entry
        text = prompt[cursor:start]
        parts.append(text)
        length += len(text)
        replacement = description.strip() or name
        parts.append(replacement)
        mentions.append(Mention(name=name, character_id=cid, start=length, end=length + len(replacement)))
        length += len(replacement)
        cursor = end
    parts.append(prompt[cursor:])
    return "".join(parts), mentions


def rename_mentions(prompt: str, renames: dict[str, str], key: Callable[[str], str] = name_key) -> str:
    """Rewrite each `[old]` (any case) as `[new]` in one pass, leaving everything else as written.

    `key` says when a written name is `old` (a migration passes the rule of its time)."""
    by_key = {key(old): new for old, new in renames.items()}
    out, cursor = [], 0
    for start, end, written in iter_mentions(prompt):
        new = by_key.get(key(written))
        if new is not None:
            out.append(prompt[cursor:start])
            out.append(f"[{new}]")
            cursor = end
    out.append(prompt[cursor:])
    return "".join(out)
