"""Shared by the UI tests: a preview Studio on the tiny pipeline, and the app launched in-process."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from anystory import AnyStoryPipeline  # noqa: E402
from anystory.studio import Studio  # noqa: E402
from anystory.tiny import write_tiny_ip_adapter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CAST = ROOT / "assets" / "cast"
ARTIFACTS = ROOT / "test-artifacts"
# gradio's queue trips pandas 3 deprecation warnings; they are not ours.
IGNORE_GRADIO_WARNINGS = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore:.*(no_silent_downcasting|copy keyword).*"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gradio_temp(tmp_path_factory):
    """GRADIO_TEMP_DIR in a temporary folder while the module's apps run."""
    old = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    yield
    if old is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = old


@pytest.fixture(scope="session")
def preview_pipe(tiny_folder, tmp_path_factory):
    """The tiny SDXL in public-weights mode, loaded through the real loading path."""
    ip_file = write_tiny_ip_adapter(tiny_folder, tmp_path_factory.mktemp("ip") / "ip.safetensors")
    pipe = AnyStoryPipeline.from_pretrained(
        str(tiny_folder), adapter="public", ip_adapter=str(ip_file), local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def preview_studio(data_dir: Path, pipe, side: int = 128) -> Studio:
    """A preview Studio with small, fast panels (side x side, 3 steps)."""
    studio = Studio(data_dir, pipe, preview=True)
    studio.panel_defaults.update(width=side, height=side, steps=3)
    return studio


def launch(studio):
    """Build the app around `studio` (a Studio, or WorkspaceSessions) and start it on a free port;
    returns (demo, url)."""
    from ui import build_app, launch_options

    demo = build_app(studio)
    port = free_port()
    demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options(studio)
    )
    return demo, f"http://127.0.0.1:{port}/"


class HeldAtFirstStep:
    """The Studio's pipeline, held at its first step until the generation is cancelled: the test
    waits on that event (the step was reached), never on a race with a fast generation."""

    def __init__(self, pipe):
        self._pipe = pipe
        self.reached = threading.Event()

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, *args, callback_on_step_end, **kwargs):
        def held(pipe, step, timestep, tensors):
            self.reached.set()
            for _ in range(600):  # the Studio's callback raises GenerationCancelled once Cancel is clicked
                callback_on_step_end(pipe, step, timestep, tensors)
                time.sleep(0.1)
            raise AssertionError("the generation was never cancelled")

        return self._pipe(*args, callback_on_step_end=held, **kwargs)
