"""Cold start (issue 19): `app.py --preview` serves its page before the model loads.

What is tested is work done, not time: the page path imports no torch/diffusers/transformers,
a start with the preview cache in place builds no model, generation waits for a model still
loading (and says so) and fails cleanly when the load fails, and the page says "model loading…".
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

import app as app_module
from anystory import preview_model, tiny
from anystory.model_loading import ModelLoading
from anystory.studio import GenerationCancelled, Studio, StudioError

from .ui_support import CAST, IGNORE_GRADIO_WARNINGS

ROOT = Path(__file__).resolve().parent.parent


def count_builds(monkeypatch) -> dict[str, int]:
    """Count the calls that build a tiny model (they still run)."""
    calls = {"write_tiny_sdxl": 0, "write_tiny_ip_adapter": 0, "tiny_sdxl_components": 0}
    for name in calls:
        original = getattr(tiny, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(tiny, name, counted)
    return calls


def test_preview_start_builds_no_model_when_the_cache_has_it(tmp_path, monkeypatch):
    monkeypatch.setenv(preview_model.CACHE_ENV, str(tmp_path / "cache"))
    calls = count_builds(monkeypatch)
    folder, ip_file = preview_model.preview_model_files()  # the first start anywhere: built once
    assert calls == {"write_tiny_sdxl": 1, "write_tiny_ip_adapter": 1, "tiny_sdxl_components": 1}
    assert (folder / "model_index.json").is_file() and ip_file.is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.parent.name]  # no temporary left

    for data_dir in ("a", "b"):  # a new data folder and a restart: found, not built
        args = app_module.parse_args(["--preview", "--data-dir", str(tmp_path / data_dir)])
        studio = app_module.open_preview_studio(args)
        pipeline = studio.model_loading.get(timeout=300)
        studio.model_loading.wait(30)  # its callbacks (none here) have run
        assert pipeline.unet is not None and studio.model_state == "ready"
        studio.close()
    assert calls == {"write_tiny_sdxl": 1, "write_tiny_ip_adapter": 1, "tiny_sdxl_components": 1}


def test_preview_cache_key_follows_the_code_that_builds_it(tmp_path, monkeypatch):
    key = preview_model.preview_model_key()
    assert key == preview_model.preview_model_key() and len(key) == 16
    changed = tmp_path / "tiny.py"
    changed.write_bytes(preview_model.TINY_SOURCE.read_bytes() + b"\n# another config\n")
    monkeypatch.setattr(preview_model, "TINY_SOURCE", changed)
    assert preview_model.preview_model_key() != key


def test_an_incomplete_cache_entry_is_built_again(tmp_path, monkeypatch):
    calls = count_builds(monkeypatch)
    folder, _ = preview_model.preview_model_files(tmp_path)
    (folder / "model_index.json").unlink()  # a copy cut short
    folder, ip_file = preview_model.preview_model_files(tmp_path)
    assert calls["write_tiny_sdxl"] == 2 and (folder / "model_index.json").is_file() and ip_file.is_file()


def test_the_page_path_imports_no_model_library(tmp_path):
    """Opening the preview Studio and building the whole UI import neither torch, diffusers nor
    transformers, and build no model: those wait for the background load."""
    script = (
        "import sys, app, ui\n"
        f"args = app.parse_args(['--preview', '--data-dir', {str(tmp_path / 'data')!r}])\n"
        "studio = app.open_preview_studio(args)\n"
        "ui.build_app(studio)\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules), studio.model_state)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[] loading"
    assert not (tmp_path / "data" / "models").exists()


def held_loading(pipe) -> tuple[ModelLoading, threading.Event]:
    """A loading that ends (with `pipe`) when the returned event is set."""
    release = threading.Event()

    def load():
        release.wait(60)
        return pipe

    return ModelLoading(load, default_router="prompt").start(), release


def test_generation_waits_for_the_model_and_says_so(tmp_path, public_pipe):
    loading, release = held_loading(public_pipe)
    studio = Studio(tmp_path / "data", loading, preview=True)
    try:
        assert studio.model_state == "loading"
        assert studio.panel_defaults["router"] == "prompt"  # known without the model
        studio.panel_defaults.update(width=64, height=64, steps=2)
        story = studio.create_story("Waiting")
        panel = studio.add_panel(story.id, "a quiet street")  # no model needed to write panels
        said, result = [], {}

        def generate():
            result["version"] = studio.generate_panel(panel.id, progress=lambda f, text: said.append(text))

        worker = threading.Thread(target=generate)
        worker.start()
        worker.join(1.0)
        assert worker.is_alive() and said == ["model loading…"] and studio.versions(panel.id) == []
        release.set()
        worker.join(300)
        loading.wait(30)
        assert not worker.is_alive() and studio.model_state == "ready"
        assert [v.id for v in studio.versions(panel.id)] == [result["version"].id]
        assert studio.panel_defaults["router"] == public_pipe.default_router
    finally:
        release.set()
        studio.close()


def test_a_cancel_stops_the_wait_for_the_model(tmp_path, public_pipe):
    loading, release = held_loading(public_pipe)
    studio = Studio(tmp_path / "data", loading, preview=True)
    try:
        panel = studio.add_panel(studio.create_story("Cancelled").id, "a street")
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(GenerationCancelled, match="model was loading"):
            studio.generate_panel(panel.id, cancel=cancel)
        assert studio.versions(panel.id) == []
    finally:
        release.set()
        studio.close()


@pytest.mark.hostile
def test_a_failed_load_is_a_clear_error_and_writes_nothing(tmp_path):
    def load():
        raise OSError("no room to build the preview model")

    loading = ModelLoading(load, default_router="prompt", name="the preview model").start()
    reports = []
    loading.then(lambda pipeline: reports.append("loaded"), lambda err: reports.append(str(err)))
    studio = Studio(tmp_path / "data", loading, preview=True)
    try:
        loading.wait(30)
        assert reports == ["no room to build the preview model"]
        assert studio.model_state == "failed: no room to build the preview model"
        panel = studio.add_panel(studio.create_story("Broken").id, "a street")
        with pytest.raises(StudioError, match="the preview model failed to load: no room"):
            studio.generate_panel(panel.id)
        with pytest.raises(StudioError, match="failed to load"):
            studio.add_character("Mia", "a girl", CAST / "mia.png")
        assert studio.versions(panel.id) == [] and studio.character_names() == []
    finally:
        studio.close()


@IGNORE_GRADIO_WARNINGS
def test_the_page_says_model_loading_until_it_has_loaded(tmp_path, public_pipe):
    from ui import build_app
    from ui.app import MODEL_LOADING, model_status_html

    loading, release = held_loading(public_pipe)
    studio = Studio(tmp_path / "data", loading, preview=True)
    try:
        demo = build_app(studio)
        values = [c.get("props", {}).get("value") for c in demo.config["components"]]
        assert any(isinstance(v, str) and MODEL_LOADING in v for v in values)
        timers = [c for c in demo.config["components"] if c.get("type") == "timer"]
        assert timers and all(t["props"]["active"] for t in timers)
        release.set()
        loading.wait(30)
        assert model_status_html(studio.model_state) == ""  # what the next tick shows: nothing
        assert "failed to load: boom" in model_status_html("failed: boom")
        demo.close()
    finally:
        release.set()
        studio.close()


def test_the_startup_bench_times_each_part_of_a_model_folder(tiny_folder, tmp_path):
    """bench/startup.py --model FOLDER: the real model's load per part, here on the tiny model
    saved as a folder (the same loading code); the timing wrappers are removed afterwards."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    from anystory import pipeline as pipeline_module
    from anystory.tiny import write_tiny_ip_adapter
    from bench.startup import timed_parts

    originals = (ModelMixin.__dict__["from_pretrained"], PreTrainedModel.__dict__["from_pretrained"])
    hub_call = pipeline_module.hub_call
    ip_file = write_tiny_ip_adapter(tiny_folder, tmp_path / "ip.safetensors")
    pipe, parts = timed_parts(str(tiny_folder), str(ip_file))
    for part in (
        "unet (UNet2DConditionModel)",
        "vae (AutoencoderKL)",
        "text_encoder (CLIPTextModel)",
        "text_encoder_2 (CLIPTextModelWithProjection)",
        "image_encoder (CLIPVisionModelWithProjection)",
        "diffusers' loading besides the models (tokenizers, scheduler, configs)",
        "adapter: read the IP-Adapter file",
        "adapter: build the AnyStory parts (with the fingerprint)",
        "weights' fingerprint (encoder_id)",
        "whole from_pretrained",
    ):
        assert part in parts, sorted(parts)
    assert all(seconds >= 0 for seconds in parts.values())
    assert parts["whole from_pretrained"] >= parts["(the model parts together)"]
    assert pipe.mode == "public" and pipe.image_encoder is not None
    assert (ModelMixin.__dict__["from_pretrained"], PreTrainedModel.__dict__["from_pretrained"]) == originals
    assert pipeline_module.hub_call is hub_call


def test_the_page_waits_for_what_runs_after_the_load(tmp_path, public_pipe):
    """"ready" comes only once the callbacks run after the load (the example cast) have run, so a
    page that redraws on "ready" shows the cast; a model call inside a callback does not wait on
    itself."""
    loading, release = held_loading(public_pipe)
    studio = Studio(tmp_path / "data", loading, preview=True)
    in_callback = threading.Event()
    go_on = threading.Event()
    states = []

    def add_cast(pipeline):
        studio.add_example_cast()  # encodes: a model call from the loading thread
        states.append(studio.model_state)
        in_callback.set()
        go_on.wait(30)

    loading.then(add_cast)
    try:
        release.set()
        assert in_callback.wait(120)
        assert states == ["loading"] and studio.model_state == "loading" and loading.ready
        go_on.set()
        assert loading.wait(30) and studio.model_state == "ready"
        assert sorted(studio.character_names()) == ["Bolt", "Mia", "Rex"]
    finally:
        release.set()
        go_on.set()
        studio.close()
