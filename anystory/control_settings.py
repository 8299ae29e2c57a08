"""A panel's `control` setting (storage floor: imports nothing above it): which ControlNet kind,
how strong, and which stored control picture. The pictures themselves: control_pictures.py."""

from __future__ import annotations

import math
import re

CONTROL_KINDS = ("edges", "pose", "depth", "scribble")
CONTROL_FOLDER = "controls"
MAX_CONTROL_STRENGTH = 2.0
_STORED_NAME = re.compile(r"^controls/[0-9a-f]{64}\.png$")


def check_control(value) -> dict:
    """A panel's `control` setting: {} (none) or {"kind", "strength", "image"} with `image` a
    stored control picture (`controls/<sha256>.png`)."""
    if value in (None, {}):
        return {}
    if not isinstance(value, dict):
        raise ValueError("control must be an object {kind, strength, image} or {} for none")
    unknown = set(value) - {"kind", "strength", "image"}
    if unknown:
        raise ValueError(f"control has unknown keys {sorted(unknown)}; it takes kind, strength, image")
    kind = value.get("kind")
    if kind not in CONTROL_KINDS:
        raise ValueError(f"control kind must be one of {', '.join(CONTROL_KINDS)}, got {kind!r}")
    strength = value.get("strength", 1.0)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise ValueError(f"control strength must be a number, got {strength!r}")
    if not 0.0 <= strength <= MAX_CONTROL_STRENGTH:
        raise ValueError(f"control strength must be between 0 and {MAX_CONTROL_STRENGTH:g}, got {strength}")
    image = value.get("image")
    if not isinstance(image, str) or not _STORED_NAME.match(image):
        raise ValueError(f"control image must name a stored control picture (controls/<sha256>.png), got {image!r}")
    return {"kind": kind, "strength": float(strength), "image": image}
