"""Generation as GPU jobs: on Hugging Face ZeroGPU every panel is its own GPU call, sized by what it
asks (steps x size), so a long "Generate all" is never killed at a fixed 60 s.

ZeroGPU runs a job in a worker process and passes its arguments by pickling, so a job names its
Studio by data folder and panel id (plain values) and the worker finds the Studio through the
app (`serve`). Elsewhere the Studio is called directly, with progress and Cancel at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .common import gpu, on_zero_gpu

SECONDS_PER_MEGAPIXEL_STEP = 0.25  # SDXL on a ZeroGPU share, with margin (1024 x 1024 x 25 steps ~ 7 s)
FIXED_SECONDS = 20.0  # moving weights, encoding a changed character, decoding, storing

_app: Any = None  # the Sessions this process serves (set once by `serve`)


def serve(sessions: Any) -> None:
    """Register the app whose Studios the GPU jobs act on."""
    global _app
    _app = sessions


def panel_seconds(width: int, height: int, steps: int, limit: float | None = None) -> float:
    """The GPU time to ask for one panel."""
    seconds = FIXED_SECONDS + SECONDS_PER_MEGAPIXEL_STEP * steps * width * height / 1e6
    return min(seconds, limit) if limit else seconds


def _job_seconds(data_dir: str, panel_id: int, new_seed: bool = False) -> float:
    studio = _app.studio_at(data_dir)
    panel = studio.get_panel(panel_id)
    return panel_seconds(panel.width, panel.height, panel.steps, studio.limits.job_seconds)


@gpu(duration=_job_seconds)
def generate_panel_job(data_dir: str, panel_id: int, new_seed: bool = False):
    """One panel on the GPU (a ZeroGPU call): returns the new version."""
    return _app.studio_at(data_dir).generate_panel(panel_id, new_seed=new_seed)


def panel_runner(studio: Any) -> Callable[..., Any]:
    """`run(panel_id, new_seed=False, progress=None, cancel=None) -> Version` for this Studio."""
    if not on_zero_gpu():
        return studio.generate_panel

    def run(panel_id: int, new_seed: bool = False, progress=None, cancel=None):
        # In the worker, steps report nothing back and Cancel is seen between panels.
        return generate_panel_job(str(studio.data_dir), int(panel_id), bool(new_seed))

    return run
