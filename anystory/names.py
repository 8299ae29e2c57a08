"""Character names: what a valid name is, and when two names are "the same".

The bottom floor of the storage side: it imports nothing of the project, so the database
schema, the library and the prompt mentions share one definition.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_LENGTH = 100
_ZWJ = "\u200d"


def validate_name(name: str) -> str:
    """A character name as stored: stripped, NFC-normalised, non-empty.

    Quotes, slashes and emoji are fine (files are named by id). Square brackets are refused
    because prompts mention characters as `[Name]`; control characters and invisible format
    characters (Unicode Cf: zero-width spaces, direction overrides...) are refused, as they make
    names that look like another one. The zero-width joiner inside an emoji sequence is kept.
    """
    if not isinstance(name, str):
        raise TypeError(f"a character name must be text, got {type(name).__name__}")
    name = unicodedata.normalize("NFC", name.strip())
    if not name:
        raise ValueError("a character name cannot be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"a character name has at most {MAX_NAME_LENGTH} characters ({len(name)} given)")
    if "[" in name or "]" in name:
        raise ValueError(f"a character name cannot contain [ or ] (prompts write [Name]): {name!r}")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError(f"a character name cannot contain control characters: {name!r}")
    hidden = invisible_characters(name)
    if hidden:
        listed = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'format character')}" for c in dict.fromkeys(hidden))
        raise ValueError(f"a character name cannot contain invisible characters ({listed}): {name!r}")
    return name


def invisible_characters(name: str) -> list[str]:
    """The invisible format characters (Unicode Cf) of `name`, but a joiner between two emoji."""
    found = []
    for i, c in enumerate(name):
        if unicodedata.category(c) != "Cf":
            continue
        if c == _ZWJ and 0 < i < len(name) - 1 and _is_emoji_part(name[i - 1]) and _is_emoji_part(name[i + 1]):
            continue  # 👩‍🚀: one emoji drawn from two
        found.append(c)
    return found


def _is_emoji_part(c: str) -> bool:
    # So: the pictographs; Sk: skin-tone modifiers; Mn: the emoji variation selector U+FE0F.
    return unicodedata.category(c) in ("So", "Sk", "Mn")


def visible_name(name: str) -> str:
    """`name` without its invisible format characters (what a reader sees), stripped."""
    hidden = set(invisible_characters(name))
    return "".join(c for c in name if c not in hidden).strip()


def name_key(name: str) -> str:
    """What makes two names "the same": the same letters as a reader sees them.

    Format characters (Cf) are dropped, then NFKC + Unicode case folding (NFKC again, as
    folding can undo it) and runs of white space become one space: "Éva" == "éVA", "Mia" ==
    "Mia\\u200b" == "ｍｉａ" == "Mia" with a non-breaking space after it.
    """
    text = "".join(c for c in name if unicodedata.category(c) != "Cf")
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split())


def numbered_name(name: str, number: int) -> str:
    """`name (number)`, shortened to fit MAX_NAME_LENGTH: the free name for a clash."""
    suffix = f" ({number})"
    return name[: MAX_NAME_LENGTH - len(suffix)].rstrip() + suffix
