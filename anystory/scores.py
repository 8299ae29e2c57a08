"""Consistency score records: per character of a version, where the router put it and how much it
looks like its reference (computed by consistency.py). Plain data, stored as JSON with the
version and in project archives; `PanelScores.from_dict` reads one back and refuses anything
malformed. Part of the storage floor: imports nothing of the app.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SCORES_FORMAT = 1
LOW_SCORE = 0.75  # a CLIP region score under this is flagged "low" (CLIP ViT-H: same character ~0.8-0.95)
MAX_CHARACTERS = 16  # what a stored record may list (a panel holds at most max_subjects, 4 by default)


@dataclass
class CharacterScore:
    """One character of one panel: where the router put it and how much it looks like itself."""

    index: int  # position in the version's subjects (its settings' "subjects" / "subject_names")
    name: str
    present: bool  # False: the router gave it no region (flagged, not scored)
    area: float  # share of the image routed to it, 0..1
    box: list[float] | None  # its region's bounding box (x0, y0, x1, y1), fractions of the image
    clip: float | None  # cosine of CLIP image embeddings, reference vs region; None when absent
    dino: float | None = None  # the same with DINOv2, when a DINO model is loaded

    def low(self, threshold: float = LOW_SCORE) -> bool:
        """Absent, or scored under `threshold`: what the app flags."""
        return not self.present or (self.clip is not None and self.clip < threshold)


@dataclass
class PanelScores:
    characters: list[CharacterScore]
    encoder: str = ""  # identity of the CLIP weights that scored (scores of other weights differ)
    dino_model: str | None = None
    seconds: float = 0.0  # wall time the scoring took (crops + model calls)
    model_seconds: float = 0.0  # of which the model calls (the part that holds the model)
    format: int = SCORES_FORMAT

    def mean(self) -> float | None:
        """The mean CLIP score of the present characters; None when none is present."""
        values = [c.clip for c in self.characters if c.clip is not None]
        return sum(values) / len(values) if values else None

    def rank(self) -> tuple[int, float]:
        """Sort key for best-of-N (higher is better): characters present first, then their mean score."""
        present = sum(c.present for c in self.characters)
        return present, self.mean() if self.mean() is not None else -1.0

    def absent(self) -> list[str]:
        return [c.name for c in self.characters if not c.present]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, where: str = "scores") -> PanelScores:
        """Read a stored record back; ValueError says what is wrong with a malformed one."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object")
        if not isinstance(data.get("format"), int) or data["format"] > SCORES_FORMAT:
            raise ValueError(f"{where} has format {data.get('format')!r}; this app reads up to {SCORES_FORMAT}")
        raw = data.get("characters")
        if not isinstance(raw, list) or len(raw) > MAX_CHARACTERS:
            raise ValueError(f"{where}: characters must be a list of at most {MAX_CHARACTERS}")
        characters = [_character(entry, f"{where} character {i + 1}") for i, entry in enumerate(raw)]
        dino_model = data.get("dino_model")
        return cls(
            characters=characters,
            encoder=_text(data.get("encoder", ""), f"{where}: encoder"),
            dino_model=None if dino_model is None else _text(dino_model, f"{where}: dino_model"),
            seconds=_number(data.get("seconds", 0.0), f"{where}: seconds", 0.0, 1e6),
            model_seconds=_number(data.get("model_seconds", 0.0), f"{where}: model_seconds", 0.0, 1e6),
        )


def _text(value: object, where: str, limit: int = 200) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{where} must be text of at most {limit} characters")
    return value


def _number(value: object, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a number")
    if not low <= value <= high:
        raise ValueError(f"{where} must be between {low} and {high}")
    return float(value)


def _character(entry: object, where: str) -> CharacterScore:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object")
    index = entry.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_CHARACTERS:
        raise ValueError(f"{where}: index must be a whole number under {MAX_CHARACTERS}")
    present = entry.get("present")
    if not isinstance(present, bool):
        raise ValueError(f"{where}: present must be true or false")
    box = entry.get("box")
    if box is not None:
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError(f"{where}: box must be four fractions")
        box = [_number(v, f"{where}: box", 0.0, 1.0) for v in box]
    scores = {}
    for key in ("clip", "dino"):
        value = entry.get(key)
        scores[key] = None if value is None else _number(value, f"{where}: {key}", -1.0, 1.0)
    if not present and scores["clip"] is not None:
        raise ValueError(f"{where}: an absent character has no score")
    return CharacterScore(
        index=index,
        name=_text(entry.get("name", ""), f"{where}: name"),
        present=present,
        area=_number(entry.get("area", 0.0), f"{where}: area", 0.0, 1.0),
        box=box,
        clip=scores["clip"],
        dino=scores["dino"],
    )
