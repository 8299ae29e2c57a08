"""The app's named API endpoints, driven by gradio_client against the app launched in-process.

Preview-mode Studio (tiny SDXL, public-weights mode) on a temporary data folder, 64 px panels
with 3 steps. Also: the UI never imports torch, the preview banner, app.py's model-load errors.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from .ui_support import CAST, IGNORE_GRADIO_WARNINGS, ROOT, gradio_temp, launch, preview_pipe, preview_studio

__all__ = ["gradio_temp", "preview_pipe"]  # fixtures used by name
pytestmark = [IGNORE_GRADIO_WARNINGS, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(gradio_temp, preview_pipe, tmp_path_factory):
    studio = preview_studio(tmp_path_factory.mktemp("api") / "data", preview_pipe, side=64)
    demo, url = launch(studio)
    try:
        yield studio, Client(url, verbose=False), demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def cast(app):
    """Mia and Rex, added through the API."""
    _, client, _ = app
    mia = client.predict(
        "Mia", "a young girl with a red scarf", handle_file(str(CAST / "mia.png")), None, api_name="/add_character"
    )
    rex = client.predict(
        "Rex", "a small brown dog", handle_file(str(CAST / "rex.png")), None, api_name="/add_character"
    )
    return mia, rex


def test_add_and_list_characters(app, cast):
    studio, client, _ = app
    mia, rex = cast
    assert mia["name"] == "Mia" and mia["status"] == "ready" and rex["status"] == "ready"
    listed = client.predict("", api_name="/list_characters")
    assert [c["name"] for c in listed] == ["Mia", "Rex"]
    assert [c["name"] for c in client.predict("dog", api_name="/list_characters")] == ["Rex"]
    assert studio.encode_count >= 2


def test_story_with_two_panels_generate_versions_and_export(app, cast, tmp_path):
    studio, client, _ = app
    story = client.predict("The walk", api_name="/create_story")
    assert story["title"] == "The walk" and story["panels"] == []
    first = client.predict(story["id"], "[Mia] walks [Rex] in the park", "{}", api_name="/add_panel")
    second = client.predict(story["id"], "[Rex] sleeps", '{"characters": ["Mia"], "seed": 7}', api_name="/add_panel")
    assert second["characters"] == ["Mia"] and second["seed"] == 7 and second["width"] == 64

    made = client.predict(story["id"], False, api_name="/generate_story")
    assert [v["panel_id"] for v in made] == [first["id"], second["id"]]
    assert made[0]["characters"] == ["Mia", "Rex"] and made[0]["router_used"] == "prompt"
    assert made[1]["model_prompt"] == "a small brown dog sleeps, a young girl with a red scarf"
    assert client.predict(story["id"], False, api_name="/generate_story") == []  # all up to date
    panels = client.predict(story["id"], api_name="/get_story")["panels"]
    assert [p["status"] for p in panels] == ["ready", "ready"]

    # re-roll panel 2 (image back as a file), then make its first version active again
    image_path, rerolled = client.predict(second["id"], True, api_name="/generate_panel")
    assert Image.open(image_path).size == (64, 64) and rerolled["seed"] != 7
    panel = client.predict(second["id"], made[1]["id"], api_name="/set_active_version")
    assert panel["active_version_id"] == made[1]["id"] and panel["seed"] == 7 and panel["status"] == "ready"
    assert panel["version_ids"] == [made[1]["id"], rerolled["id"]]
    assert studio.get_panel(first["id"]).active_version_id == made[0]["id"]  # the other panel kept

    overlay_path, legend = client.predict(made[0]["id"], 0.5, api_name="/version_overlay")
    assert [name for name, _ in legend] == ["Mia", "Rex", "background"]
    assert Image.open(overlay_path).height > 64  # image + legend strip

    (pdf,) = client.predict(story["id"], "pdf", False, True, api_name="/export_story")
    assert pdf.endswith(".pdf") and open(pdf, "rb").read(5) == b"%PDF-"
    client.predict(first["id"], "Look, a squirrel!", "Mia", "", api_name="/add_line")
    assert client.predict(first["id"], api_name="/line_warnings") == []
    pages = client.predict(story["id"], "grid", "manga", False, "fit", api_name="/export_pages")
    assert len(pages) == 1 and Image.open(pages[0]).size == (1240, 1754)  # two panels on one manga page
    (archive,) = client.predict(story["id"], "project", False, True, api_name="/export_story")
    with zipfile.ZipFile(archive) as zipped:
        assert "project.json" in zipped.namelist()
    imported = client.predict(handle_file(archive), api_name="/import_project")
    assert imported["title"] == "The walk" and imported["id"] != story["id"]
    assert [p["prompt"] for p in imported["panels"]] == [first["prompt"], second["prompt"]]
    assert len(client.predict(api_name="/list_stories")) == 2


def test_panel_editing_and_order(app, cast):
    _, client, _ = app
    story = client.predict("Edits", api_name="/create_story")
    a = client.predict(story["id"], "[Mia] reads", "{}", api_name="/add_panel")
    b = client.predict(story["id"], "[Rex] runs", "{}", api_name="/add_panel")
    changed = client.predict(
        a["id"],
        '{"router": "layout", "layout": {"Mia": [0, 0, 0.5, 1]}, "strengths": {"mia": 0.5}, "guidance": 3}',
        api_name="/update_panel",
    )
    assert changed["layout"] == {"Mia": [0.0, 0.0, 0.5, 1.0]} and changed["strengths"] == {"Mia": 0.5}
    order = client.predict(b["id"], 0, api_name="/move_panel")
    assert [p["id"] for p in order] == [b["id"], a["id"]]
    assert client.predict(b["id"], api_name="/delete_panel").startswith("deleted")
    assert [p["id"] for p in client.predict(story["id"], api_name="/get_story")["panels"]] == [a["id"]]


@pytest.mark.hostile
def test_errors_come_back_as_clear_messages(app, cast, tmp_path):
    _, client, _ = app
    not_a_picture = tmp_path / "notes.png"
    not_a_picture.write_text("this is not a picture")
    with pytest.raises(AppError, match="not a readable picture"):
        client.predict("Zed", "", handle_file(str(not_a_picture)), None, api_name="/add_character")
    with pytest.raises(AppError, match="already exists"):
        client.predict("mia", "", handle_file(str(CAST / "bolt.png")), None, api_name="/add_character")
    with pytest.raises(AppError, match="cannot be empty"):
        client.predict("  ", "", handle_file(str(CAST / "bolt.png")), None, api_name="/add_character")
    assert "Zed" not in [c["name"] for c in client.predict("", api_name="/list_characters")]  # nothing half-written

    story = client.predict("Errors", api_name="/create_story")
    panel = client.predict(story["id"], "[Zed] waves at [Mia]", "{}", api_name="/add_panel")
    with pytest.raises(AppError, match=r"\[Zed\], which is not a character; known characters: Mia, Rex"):
        client.predict(panel["id"], False, api_name="/generate_panel")
    with pytest.raises(AppError, match="steps must be between 1 and 1000"):
        client.predict(panel["id"], '{"steps": 0}', api_name="/update_panel")
    with pytest.raises(AppError, match="unknown panel settings colour"):
        client.predict(panel["id"], '{"colour": "red"}', api_name="/update_panel")
    with pytest.raises(AppError, match="no character with name 'Nobody'; known characters: Mia, Rex"):
        client.predict(panel["id"], '{"characters": ["Nobody"]}', api_name="/update_panel")
    with pytest.raises(AppError, match="no panel with id 99999"):
        client.predict(99999, False, api_name="/generate_panel")
    with pytest.raises(AppError, match="unknown export format"):
        client.predict(story["id"], "gif", False, True, api_name="/export_story")
    with pytest.raises(AppError, match="no panel of this story has an image yet"):
        client.predict(story["id"], "pdf", False, True, api_name="/export_story")


def test_scores_best_of_n_and_the_story_table(app, cast):
    studio, client, _ = app
    story = client.predict("Scores", api_name="/create_story")
    panel = client.predict(story["id"], "[Mia] and [Rex] at the beach", '{"router": "prompt"}', api_name="/add_panel")
    made = client.predict(panel["id"], 2, api_name="/best_of_panel")
    assert len(made) == 2 and all([c["name"] for c in v["scores"]["characters"]] == ["Mia", "Rex"] for v in made)
    assert studio.get_panel(panel["id"]).active_version_id == made[0]["id"]  # best first, and active
    table = client.predict(story["id"], api_name="/story_scores")
    assert table["characters"] == ["Mia", "Rex"] and table["panels"] == [1]
    assert [row[0]["clip"] for row in table["cells"]] == [c["clip"] for c in made[0]["scores"]["characters"]]
    with pytest.raises(AppError, match="best of N takes N from 1 to 8"):
        client.predict(panel["id"], 20, api_name="/best_of_panel")


@pytest.mark.hostile
def test_delete_character_names_the_panels_that_use_it(app, cast, tmp_path):
    studio, client, _ = app
    bolt = client.predict(
        "Bolt", "a friendly silver robot", handle_file(str(CAST / "bolt.png")), None, api_name="/add_character"
    )
    story = client.predict("Robots", api_name="/create_story")
    client.predict(story["id"], "[Bolt] beeps", "{}", api_name="/add_panel")
    with pytest.raises(AppError, match="Bolt is used by “Robots” panel 1; delete anyway"):
        client.predict("bolt", False, api_name="/delete_character")
    assert client.predict(str(bolt["id"]), True, api_name="/delete_character") == "deleted Bolt"
    with pytest.raises(AppError, match="no character with name 'Bolt'"):
        client.predict("Bolt", False, api_name="/delete_character")


def test_cast_archive_round_trip(app, cast):
    _, client, _ = app
    archive = client.predict(api_name="/export_characters")
    skipped = client.predict(handle_file(archive), "skip", api_name="/import_characters")
    assert skipped == []
    renamed = client.predict(handle_file(archive), "rename", api_name="/import_characters")
    assert {c["name"] for c in renamed} >= {"Mia (2)", "Rex (2)"}
    for character in renamed:
        client.predict(character["name"], True, api_name="/delete_character")


def test_generation_endpoints_share_one_queue(app):
    """Every event that calls the model is in the "model" group; the group lets them all in, and
    they take turns in the Studio's one model slot (tests/test_workspaces.py drives the line)."""
    studio, _, demo = app
    by_name = {fn.api_name: fn for fn in demo.fns.values()}
    for name in ("generate_panel", "generate_story", "add_character", "reencode_character"):
        assert by_name[name].concurrency_id == "model"
    ui_generation = [fn for fn in demo.fns.values() if fn.name in ("generate_one", "reroll_one", "generate_every")]
    assert len(ui_generation) == 3 and all(fn.concurrency_id == "model" for fn in ui_generation)
    assert all(fn.concurrency_limit is None for fn in demo.fns.values() if fn.concurrency_id == "model")
    assert studio._gpu.max_waiting is None  # a local launch: no cap on the line


def test_preview_banner_only_in_preview_mode(preview_pipe, tmp_path, gradio_temp):
    from anystory.studio import Studio
    from ui import build_app
    from ui.app import PREVIEW_BANNER

    def texts(demo) -> str:
        return " ".join(str(getattr(block, "value", "")) for block in demo.blocks.values())

    assert PREVIEW_BANNER in texts(build_app(preview_studio(tmp_path / "a", preview_pipe)))
    assert PREVIEW_BANNER not in texts(build_app(Studio(tmp_path / "b", preview_pipe, preview=False)))


def test_example_cast(preview_pipe, tmp_path):
    studio = preview_studio(tmp_path / "data", preview_pipe)
    assert studio.add_example_cast() == ["Mia", "Rex", "Bolt"]
    assert studio.add_example_cast() == []  # already there
    assert all(studio.encoding_status(c) == "ready" for c in studio.characters())


def test_painted_mask_is_the_union_of_the_layers():
    from ui.characters import painted_mask

    background = Image.new("RGB", (40, 30), "white")
    layer = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    layer.paste((255, 0, 0, 255), (5, 5, 15, 15))
    other = Image.new("RGBA", (80, 60), (0, 0, 0, 0))  # a canvas twice the size is scaled down
    other.paste((255, 0, 0, 255), (60, 40, 80, 60))
    mask = painted_mask({"background": background, "layers": [layer, other], "composite": None})
    assert mask.size == (40, 30) and mask.getpixel((10, 10)) == 255 and mask.getpixel((35, 25)) == 255
    assert mask.getpixel((20, 5)) == 0
    assert painted_mask(None) is None


def test_ui_never_imports_torch():
    code = "import sys, ui, ui.app, ui.characters, ui.storyboard, ui.api; bad = {'torch', 'diffusers', 'anystory.pipeline'} & set(sys.modules); print(sorted(bad)); sys.exit(1 if bad else 0)"  # noqa: E501
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.hostile
def test_app_model_load_error_exits_with_a_hint(capsys, tmp_path):
    sys.path.insert(0, str(ROOT))
    import app as app_module

    args = app_module.parse_args([])
    assert (args.host, args.port, args.share, args.preview) == ("127.0.0.1", 7860, False, False)
    code = app_module.main(["--model", str(tmp_path / "missing-model"), "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2 and "could not be loaded" in err and "--preview" in err


def test_start_up_says_one_clear_line_per_thing(tmp_path):
    """Plain `app.py` with no network: one error line with what to do, nothing of the libraries'
    advice; `app.py --preview`: where it runs, nothing else (no warnings, no progress bars, no tips)."""
    import os
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [sys.executable, "app.py", "--data-dir", str(tmp_path / "a")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, lines
    assert "not in the local Hugging Face cache" in lines[0] and "--preview" in lines[0]
    for noise in ("local_files_only", "stacktrace", "Couldn't connect", "torchvision"):
        assert noise not in lines[0]

    from .ui_support import free_port

    port = free_port()
    app = subprocess.Popen(
        [sys.executable, "app.py", "--preview", "--data-dir", str(tmp_path / "b"), "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lines, deadline = [], time.time() + 300
        while time.time() < deadline:
            line = app.stdout.readline()
            if line.strip():
                lines.append(line.rstrip())
            if "example cast" in line or app.poll() is not None:
                break
    finally:
        app.terminate()
        app.wait(30)
    assert lines == [  # the page first; the model loads afterwards, then the example cast is encoded
        f"AnyStory Studio is running at http://127.0.0.1:{port}/",
        "Press Ctrl+C to stop.",
        "preview mode: added the example cast (Mia, Rex, Bolt)",
    ], lines


def test_a_control_picture_through_the_api(app, cast, tmp_path):
    from anystory.tiny_control import edge_picture

    studio, client, _ = app
    story = client.predict("Posed", api_name="/create_story")
    panel = client.predict(story["id"], "[Mia] raises her arm", "{}", api_name="/add_panel")
    picture = tmp_path / "pose.png"
    edge_picture(64, seed=5).save(picture)
    posed = client.predict(panel["id"], handle_file(str(picture)), "pose", 0.9, False, api_name="/set_panel_control")
    assert posed["control"]["kind"] == "pose" and posed["control"]["strength"] == 0.9
    _, version = client.predict(panel["id"], False, api_name="/generate_panel")
    assert studio.get_version(version["id"]).settings["control"] == posed["control"]
    with pytest.raises(AppError, match="control kind must be one of"):
        client.predict(panel["id"], handle_file(str(picture)), "normal", 1.0, False, api_name="/set_panel_control")
    cleared = client.predict(panel["id"], None, "edges", 1.0, False, api_name="/set_panel_control")
    assert cleared["control"] == {}
