"""`anystory.render_story` (issue 21): a project archive drawn outside the app, panels split
across processes, gives the app's images for the same seeds and imports back."""

import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from anystory.render_story import main
from anystory.studio import Studio
from anystory.tiny import synthetic_subject

pytestmark = pytest.mark.slow

PANEL = {"width": 64, "height": 64, "steps": 3}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The app in preview mode (Studio.open, as app.py --preview builds it): two characters, a
    story of three panels with their own seeds, none drawn yet, exported as a project."""
    root = tmp_path_factory.mktemp("render")
    app = Studio.open(root / "app", preview=True)
    app.add_character("Mia", "a young woman with a red scarf", png(synthetic_subject(1)))
    app.add_character("Rex", "a small brown dog", png(synthetic_subject(2)))
    story = app.create_story("The walk")
    prompts = [f"[Mia] and [Rex] in the park, scene {i}" for i in range(3)]
    panels = [app.add_panel(story.id, prompt, seed=10 + i, **PANEL) for i, prompt in enumerate(prompts)]
    (archive,) = app.export_story(story.id, "project", root / "story.zip")
    return root, app, story, panels, archive


def drawn_images(archive, folder) -> list[np.ndarray]:
    """Import `archive` as the app's Import does; the active image of every panel, in order."""
    studio = Studio.open(folder, preview=True)
    story = studio.import_project(archive)
    panels = studio.panels(story.id)
    assert all(p.status == "ready" and p.active_version_id is not None for p in panels)
    return [np.asarray(studio.version_image(p.active_version_id)) for p in panels]


def app_images(app, panels) -> list[np.ndarray]:
    return [np.asarray(app.version_image(app.generate_panel(p.id).id)) for p in panels]


def test_one_process_draws_the_apps_images(project, tmp_path, capsys):
    root, app, story, panels, archive = project
    out = tmp_path / "drawn.zip"
    assert main([str(archive), "--out", str(out), "--preview"]) == 0
    assert "drew the panels into" in capsys.readouterr().out
    drawn = drawn_images(out, tmp_path / "imported")
    expected = app_images(app, panels)
    assert len(drawn) == len(expected) == 3
    for a, b in zip(drawn, expected):
        assert a.shape == b.shape and np.array_equal(a, b)
    assert not np.array_equal(drawn[0], drawn[1])  # other seeds, other pictures

    # a second run into the same work folder refuses rather than mixing two runs
    assert main([str(archive), "--out", str(out), "--preview"]) == 2
    assert "--overwrite-work" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_the_panels_and_draw_the_same(project, tmp_path):
    root, app, story, panels, archive = project
    out = tmp_path / "drawn.zip"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
        "-m", "anystory.render_story", str(archive), "--out", str(out), "--preview",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("drew the panels into") == 1  # the main process exports, once
    assert "process 0: drew 2 panels" in done.stdout and "process 1: drew 1 panels" in done.stdout
    plan = json.loads((tmp_path / "drawn.work" / "render-story.json").read_text())
    assert len(plan["panels"]) == 3
    drawn = drawn_images(out, tmp_path / "imported")
    expected = app_images(app, panels)
    for a, b in zip(drawn, expected):
        assert np.array_equal(a, b)
