"""Limits on what one Studio (one workspace) may hold and what one job may ask of the model.

A local launch gets `Limits.local()`: no caps on how much a writer keeps, and a job budget that
only stops the absurd (an 8192 x 8192 panel holding the one model slot for minutes). A hosted
launch (`--workspaces`, or on a Hugging Face Space) gets `Limits.hosted()`: strangers share one
GPU and one disk. Every limit is checked before any work and says, when hit, what it is.

    Limits.hosted(max_characters=20).check_count("characters", 20)   # LimitReached
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class LimitReached(ValueError):
    """A limit of this workspace or of one job was reached; nothing was changed."""


def _size(count: float) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def _megapixels(pixels: float) -> str:
    return f"{pixels / 1e6:.2f} megapixels"


@dataclass(frozen=True)
class Limits:
    max_characters: int | None = None  # per workspace
    max_stories: int | None = None
    max_panels: int | None = None  # all stories of the workspace together
    max_versions: int | None = None  # kept versions, all panels together
    max_bytes: int | None = None  # the workspace's data folder on disk
    max_side: int = 8192  # px, width or height of one panel
    max_steps: int = 1000
    # width x height x steps of one job: the work it asks of the model. 2048 x 2048 x 150 by default.
    job_budget: int = 2048 * 2048 * 150
    job_seconds: float | None = 30 * 60  # a running job is stopped after this long
    max_queue: int | None = None  # jobs waiting in the queue (gradio's max_size)
    expiry_days: float | None = None  # workspaces idle this long are deleted (hosted only)
    # LoRAs named by a folder of this machine or a hub id (hosted: uploaded files only, so a
    # stranger neither reads the server's folders nor fills its disk with downloads)
    lora_by_name: bool = True

    @classmethod
    def local(cls, **overrides) -> Limits:
        """One writer on their own machine: keep everything, refuse only absurd jobs."""
        return cls(**overrides)

    @classmethod
    def hosted(cls, **overrides) -> Limits:
        """A public Space: strangers share one GPU, one queue and one disk."""
        values = dict(
            max_characters=20,
            max_stories=10,
            max_panels=60,
            max_versions=300,
            max_bytes=1024**3,
            max_side=1536,
            max_steps=50,
            job_budget=1024 * 1024 * 50,
            job_seconds=5 * 60,
            max_queue=20,
            expiry_days=7,
            lora_by_name=False,
        )
        return cls(**{**values, **overrides})

    def replace(self, **changes) -> Limits:
        return dataclasses.replace(self, **changes)

    # -- checks (each raises LimitReached with a sentence for the user) --

    def check_count(self, what: str, current: int, adding: int = 1) -> None:
        """Refuse to add `adding` more `what` ("characters", "stories", "panels", "versions")."""
        limit = getattr(self, f"max_{what}")
        if limit is not None and current + adding > limit:
            raise LimitReached(f"this workspace holds at most {limit} {what} ({current} now); delete some to add more")

    def check_bytes(self, used: int, adding: int = 0) -> None:
        if self.max_bytes is not None and used + adding > self.max_bytes:
            raise LimitReached(
                f"this workspace is full: {_size(used)} of its {_size(self.max_bytes)} are used; "
                "delete old versions or characters to make room"
            )

    def check_job(self, width: int, height: int, steps: int) -> None:
        """One generation: its sides, its steps, and its work (width x height x steps) within budget."""
        if max(width, height) > self.max_side:
            raise LimitReached(f"panels are at most {self.max_side} px a side here ({width}x{height} asked)")
        if steps > self.max_steps:
            raise LimitReached(f"a panel takes at most {self.max_steps} steps here ({steps} asked)")
        work = width * height * steps
        if work > self.job_budget:
            allowed = self.job_budget // (width * height)
            raise LimitReached(
                f"{width}x{height} at {steps} steps is more than one job may ask here "
                f"({_megapixels(work)} x steps; the budget is {_megapixels(self.job_budget)} x steps): "
                f"use at most {allowed} steps at this size, or a smaller size"
            )

    def describe(self) -> list[str]:
        """The limits as short sentences, for the UI and the README."""
        lines = []
        counts = [(w, getattr(self, f"max_{w}")) for w in ("characters", "stories", "panels", "versions")]
        held = [f"{n} {w}" for w, n in counts if n is not None]
        if held:
            lines.append("at most " + ", ".join(held))
        if self.max_bytes is not None:
            lines.append(f"{_size(self.max_bytes)} of disk")
        lines.append(f"panels up to {self.max_side} px a side and {self.max_steps} steps")
        if self.job_seconds is not None:
            lines.append(f"a generation stops after {self.job_seconds / 60:.0f} minutes")
        if self.expiry_days is not None:
            lines.append(f"a workspace unused for {self.expiry_days:g} days is deleted with everything in it")
        return lines
