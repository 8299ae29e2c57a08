"""Character names: what a valid name is, and when two names are "the same".

The bottom floor of the storage side: it imports nothing of the project, so the database
schema, the library and the prompt mentions share one definition.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_LENGTH = 100


def validate_name(name: str) -> str:
    """A character name as stored: stripped, NFC-normalised, non-empty.

    Quotes, slashes and emoji are fine (files are named by id). Square brackets are refused
    because prompts mention characters as `[Name]`; control characters are refused as invisible.
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
    return name


def name_key(name: str) -> str:
    """What makes two names "the same": Unicode case folding of the NFC form ("Éva" == "éVA")."""
    return unicodedata.normalize("NFC", name.strip()).casefold()
