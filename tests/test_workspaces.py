"""Workspaces for a shared app: one private Studio per visitor on one pipeline; hosting limits.

The Python side (keys, the example cast shared without copies, expiry, every limit once) and the
HTTP side (two gradio_client sessions on one app launched with workspaces: each acts only in its
own workspace; another workspace's files are refused by URL).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from anystory.limits import LimitReached, Limits
from anystory.studio import GenerationCancelled, Studio
from anystory.tiny import synthetic_subject
from anystory.workspaces import WorkspaceNotFound, Workspaces, key_hash

from .ui_support import CAST, IGNORE_GRADIO_WARNINGS, HeldAtFirstStep, free_port, gradio_temp, preview_pipe

__all__ = ["gradio_temp", "preview_pipe"]  # fixtures used by name
pytestmark = IGNORE_GRADIO_WARNINGS

SMALL = dict(width=64, height=64, steps=2)


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    synthetic_subject(seed).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def workspaces(preview_pipe, tmp_path):
    return Workspaces(tmp_path / "root", preview_pipe, preview=True, limits=Limits.hosted())


# -- keys and workspaces -----------------------------------------------------------------------------


def test_a_key_opens_its_workspace_and_nothing_else(workspaces):
    key_a, a = workspaces.create()
    key_b, b = workspaces.create()
    assert key_a != key_b and len(key_a) >= 32
    assert workspaces.open(key_a) is a and workspaces.open(key_b) is b
    assert a.data_dir != b.data_dir and key_a not in str(a.data_dir)  # folders are named by random ids, not keys
    for wrong in ("", "x" * 40, key_a[:-1] + ("A" if key_a[-1] != "A" else "B"), "../" + key_a, None):
        with pytest.raises(WorkspaceNotFound):
            workspaces.open(wrong)
    index = (workspaces.root / "workspaces.db").read_bytes()
    assert key_a.encode() not in index and key_hash(key_a).encode() in index  # only the hash is kept


def test_each_workspace_starts_with_the_example_cast_encoded_once(workspaces):
    (_, a), (_, b) = workspaces.create(), workspaces.create()
    assert [c.name for c in a.characters()] == ["Bolt", "Mia", "Rex"] == [c.name for c in b.characters()]
    assert all(a.encoding_status(c) == "ready" for c in a.characters())
    assert a.encode_count == b.encode_count == 0 and workspaces._example_cast().encode_count == 3
    mia_a, mia_b = a.get_character("Mia"), b.get_character("Mia")
    assert os.stat(mia_a.encoding_path).st_ino == os.stat(mia_b.encoding_path).st_ino  # shared, not copied
    a.update_character("Mia", image=png(5))  # a change is a new file of a's own
    assert b.get_character("Mia").image_path.read_bytes() == mia_b.image_path.read_bytes()
    assert a.get_character("Mia").encoding_path != mia_a.encoding_path
    a.delete_character("Rex")
    assert [c.name for c in b.characters()] == ["Bolt", "Mia", "Rex"]


def test_account_workspace_follows_the_account(workspaces):
    studio = workspaces.for_account("hf:mia")
    studio.create_story("Mine")
    assert [s.title for s in workspaces.for_account("hf:mia").stories()] == ["Mine"]
    assert workspaces.for_account("hf:rex").stories() == []


def test_delete_removes_only_that_workspace(workspaces):
    (key_a, a), (key_b, b) = workspaces.create(), workspaces.create()
    b.create_story("Kept")
    workspaces.delete(workspaces.id_of(a))
    assert not a.data_dir.exists()
    with pytest.raises(WorkspaceNotFound):
        workspaces.open(key_a)
    assert [s.title for s in workspaces.open(key_b).stories()] == ["Kept"]


def test_idle_workspaces_expire_with_everything_in_them(workspaces):
    (key_old, old), (key_new, new) = workspaces.create(), workspaces.create()
    today = dt.datetime.now(dt.timezone.utc)
    index = workspaces._index()
    with index.conn:
        for studio, days in ((old, 8), (new, 6)):  # the hosted rule: 7 days idle
            seen = (today - dt.timedelta(days=days)).isoformat(timespec="microseconds")
            index.execute("UPDATE workspaces SET last_seen = ? WHERE id = ?", [seen, workspaces.id_of(studio)])
    assert workspaces.expire(today) == [workspaces.id_of(old)]
    assert not old.data_dir.exists() and new.data_dir.exists()
    with pytest.raises(WorkspaceNotFound):
        workspaces.open(key_old)
    assert workspaces.open(key_new) is new


# -- limits: each one hit once, with its message, nothing saved lost ---------------------------------------


def limited(pipe, tmp_path, **overrides) -> Studio:
    studio = Studio(tmp_path / "data", pipe, preview=True, limits=Limits.hosted(**overrides))
    studio.panel_defaults.update(SMALL)
    return studio


def test_count_limits(preview_pipe, tmp_path):
    studio = limited(preview_pipe, tmp_path, max_characters=2, max_stories=1, max_panels=2, max_versions=1)
    studio.add_character("A", "", png(1))
    studio.add_character("B", "", png(2))
    encodes = studio.encode_count
    with pytest.raises(LimitReached, match=r"at most 2 characters \(2 now\); delete some"):
        studio.add_character("C", "", png(3))
    assert studio.encode_count == encodes  # refused before the encoder ran
    story = studio.create_story("One")
    with pytest.raises(LimitReached, match="at most 1 stories"):
        studio.create_story("Two")
    first = studio.add_panel(story.id, "[A] waves")
    studio.add_panel(story.id, "[B] waves")
    with pytest.raises(LimitReached, match="at most 2 panels"):
        studio.add_panel(story.id, "[A] again")
    with pytest.raises(LimitReached, match="at most 2 panels"):
        studio.duplicate_panel(first.id)
    studio.generate_panel(first.id)
    with pytest.raises(LimitReached, match="at most 1 versions"):
        studio.generate_panel(first.id, new_seed=True)
    assert [c.name for c in studio.characters()] == ["A", "B"] and [s.title for s in studio.stories()] == ["One"]
    assert len(studio.panels(story.id)) == 2 and len(studio.versions(first.id)) == 1


def test_an_import_past_a_limit_changes_nothing(preview_pipe, tmp_path):
    source = limited(preview_pipe, tmp_path / "source")
    for n, name in enumerate("ABC"):
        source.add_character(name, "", png(n))
    archive = source.export_characters(tmp_path / "cast.zip")
    studio = limited(preview_pipe, tmp_path, max_characters=4)
    studio.add_character("Z", "", png(9))
    studio.import_characters(archive)  # 1 + 3 = 4: fits
    with pytest.raises(LimitReached, match="at most 4 characters"):
        studio.import_characters(archive, "rename")
    assert sorted(c.name for c in studio.characters()) == ["A", "B", "C", "Z"]
    assert len(list((studio.data_dir / "characters").iterdir())) == 4  # no files of the refused import


def test_disk_limit(preview_pipe, tmp_path):
    studio = limited(preview_pipe, tmp_path, max_bytes=400_000)
    studio.add_character("A", "", png(1))
    while True:  # fill the workspace with panels' versions until the disk limit refuses one
        story = studio.stories()[0] if studio.stories() else studio.create_story("Full")
        panel = studio.add_panel(story.id, "[A] again", **SMALL)
        try:
            studio.generate_panel(panel.id)
        except LimitReached as err:
            assert "this workspace is full" in str(err) and "delete old versions" in str(err)
            break
    kept = [studio.get_version(p.active_version_id) for p in studio.panels(story.id) if p.active_version_id]
    assert kept and all(v.image_path.is_file() for v in kept)


def test_job_limits(preview_pipe, tmp_path):
    studio = limited(preview_pipe, tmp_path, max_side=512, max_steps=20, job_budget=256 * 256 * 10)
    story = studio.create_story("Jobs")
    cases = [
        (dict(width=1024, height=512, steps=5), r"at most 512 px a side here \(1024x512 asked\)"),
        (dict(width=256, height=256, steps=30), r"at most 20 steps here \(30 asked\)"),
        (dict(width=512, height=512, steps=12), r"use at most 2 steps at this size, or a smaller size"),
    ]
    for settings, message in cases:
        panel = studio.add_panel(story.id, "a lighthouse", **settings)
        with pytest.raises(LimitReached, match=message):
            studio.generate_panel(panel.id)
        assert studio.get_panel(panel.id).status == "empty"  # refused before it started: nothing to mark


def test_a_job_past_its_time_limit_stops_and_keeps_earlier_versions(preview_pipe, tmp_path):
    studio = limited(preview_pipe, tmp_path, job_seconds=0.0)
    story = studio.create_story("Slow")
    panel = studio.add_panel(story.id, "a lighthouse", **SMALL)
    with pytest.raises(GenerationCancelled, match="ran past the 0-minute limit of one job"):
        studio.generate_panel(panel.id)
    assert studio.get_panel(panel.id).status == "failed" and studio.versions(panel.id) == []


def test_local_limits_keep_everything_and_stop_only_absurd_jobs(preview_pipe, tmp_path):
    studio = Studio(tmp_path / "data", preview_pipe, preview=True)
    assert studio.limits == Limits.local() and studio.limits.max_characters is None
    story = studio.create_story("Huge")
    panel = studio.add_panel(story.id, "a lighthouse", width=8192, height=8192, steps=25)
    with pytest.raises(LimitReached, match="more than one job may ask here"):
        studio.generate_panel(panel.id)


# -- over HTTP: two clients, one app -----------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_app(gradio_temp, preview_pipe, tmp_path_factory):
    from ui import build_app, launch_options
    from ui.session import WorkspaceSessions

    root = tmp_path_factory.mktemp("shared") / "data"
    workspaces = Workspaces(root, preview_pipe, preview=True, limits=Limits.hosted(max_side=128))
    workspaces.panel_defaults.update(SMALL)
    sessions = WorkspaceSessions(workspaces)
    demo = build_app(sessions)
    port = free_port()
    demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options(sessions)
    )
    try:
        yield workspaces, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def fetch(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_two_clients_each_act_only_in_their_own_workspace(shared_app, tmp_path):
    workspaces, url = shared_app
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    a.predict("Zed", "a tall man", handle_file(str(CAST / "bolt.png")), None, api_name="/add_character")
    story = a.predict("A's story", api_name="/create_story")
    panel = a.predict(story["id"], "[Zed] waves", "{}", api_name="/add_panel")
    a.predict(story["id"], False, api_name="/generate_story")
    assert [c["name"] for c in a.predict("", api_name="/list_characters")] == ["Bolt", "Mia", "Rex", "Zed"]
    assert [c["name"] for c in b.predict("", api_name="/list_characters")] == ["Bolt", "Mia", "Rex"]
    assert b.predict(api_name="/list_stories") == []
    for call in (
        lambda: b.predict(story["id"], api_name="/get_story"),
        lambda: b.predict(panel["id"], False, api_name="/generate_panel"),
        lambda: b.predict(panel["id"], '{"seed": 1}', api_name="/update_panel"),
        lambda: b.predict(panel["id"], api_name="/delete_panel"),
        lambda: b.predict("Zed", True, api_name="/delete_character"),
        lambda: b.predict(story["id"], "pdf", False, True, api_name="/export_story"),
    ):
        with pytest.raises(AppError, match="no (story|panel|character)"):
            call()
    assert [p["status"] for p in a.predict(story["id"], api_name="/get_story")["panels"]] == ["ready"]

    # a script keeps its workspace by its key (checked), never by an id
    key = a.predict(api_name="/workspace")["key"]
    with pytest.raises(AppError, match="no workspace has this key"):
        b.predict("not-a-key-" + "x" * 30, api_name="/open_workspace")
    c = Client(url, verbose=False)
    c.predict(key, api_name="/open_workspace")
    assert [s["title"] for s in c.predict(api_name="/list_stories")] == ["A's story"]


def test_another_workspaces_files_are_refused_by_url(shared_app):
    workspaces, url = shared_app
    a = Client(url, verbose=False)
    story = a.predict("Exported", api_name="/create_story")
    a.predict(story["id"], "[Mia] reads", "{}", api_name="/add_panel")
    a.predict(story["id"], False, api_name="/generate_story")
    (handed,) = a.predict(story["id"], "pdf", False, True, api_name="/export_story")
    studio = workspaces.open(a.predict(api_name="/workspace")["key"])
    (stored,) = studio.exports_dir.glob("Exported - pdf - *.pdf")
    assert stored.is_file() and open(handed, "rb").read(5) == b"%PDF-"
    version = studio.get_version(studio.panels(story["id"])[0].active_version_id)
    file_route = url + "gradio_api/file="
    (served,) = list(Path(os.environ["GRADIO_TEMP_DIR"]).rglob(stored.name))  # the copy gradio hands out
    assert fetch(file_route + urllib.parse.quote(str(served))) == 200  # the route works: the refusals below mean it
    for target in (
        str(stored),
        str(version.image_path),
        str(studio.data_dir / "anystory.db"),
        str(workspaces.root / "workspaces.db"),
        str(workspaces.root / "browser-state.secret"),
        os.environ["GRADIO_TEMP_DIR"] + "/" + "../" * 12 + str(stored).lstrip("/"),
        str(workspaces.root / "workspaces" / ".." / "workspaces" / studio.data_dir.name / "anystory.db"),
    ):
        assert fetch(file_route + urllib.parse.quote(target)) in (403, 404), target


def test_a_full_queue_says_so_and_cancel_stops_only_your_own_job(gradio_temp, preview_pipe, tmp_path):
    """One generation runs (held at its first step), one waits in line: a third is refused with "the
    queue is full"; /cancel from another client touches nothing, from the owner it stops the run,
    and the waiting one runs."""
    from ui import build_app, launch_options
    from ui.session import WorkspaceSessions

    held = HeldAtFirstStep(preview_pipe)
    workspaces = Workspaces(tmp_path / "root", held, preview=True, limits=Limits.hosted(max_queue=1))
    workspaces.panel_defaults.update(SMALL)
    sessions = WorkspaceSessions(workspaces)
    demo = build_app(sessions)
    port = free_port()
    demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options(sessions)
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        clients = [Client(url, verbose=False) for _ in range(3)]
        panels = []
        for client in clients:
            story = client.predict("Queue", api_name="/create_story")
            panels.append(client.predict(story["id"], "[Mia] waits", "{}", api_name="/add_panel"))
        running = clients[0].submit(panels[0]["id"], False, api_name="/generate_panel")
        assert held.reached.wait(timeout=60)
        waiting = clients[1].submit(panels[1]["id"], False, api_name="/generate_panel")
        deadline = time.time() + 60
        while workspaces.model_slot.waiting < 1 and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(AppError, match="the queue is full: 1 generations are waiting for the model; try again"):
            clients[2].predict(panels[2]["id"], False, api_name="/generate_panel")
        assert clients[2].predict(api_name="/cancel") == "nothing of yours is generating"
        assert not running.done()
        assert clients[0].predict(api_name="/cancel").startswith("cancelling")
        with pytest.raises(AppError, match="generation cancelled"):
            running.result(timeout=60)
        held.reached.clear()
        assert held.reached.wait(timeout=60)  # the waiting job runs now
        clients[1].predict(api_name="/cancel")
        with pytest.raises(AppError, match="generation cancelled"):
            waiting.result(timeout=60)
    finally:
        demo.close()


def test_on_zero_gpu_each_panel_is_its_own_gpu_call_sized_by_its_work(preview_pipe, tmp_path, monkeypatch):
    import ui.gpu_jobs as jobs
    from ui.session import Sessions

    studio = limited(preview_pipe, tmp_path)
    jobs.serve(Sessions(studio))
    story = studio.create_story("Three")
    for n in range(3):
        studio.add_panel(story.id, f"a lighthouse, scene {n}", **SMALL)
    calls = []
    real_job = jobs.generate_panel_job

    def job(data_dir, panel_id, new_seed=False):
        calls.append((data_dir, panel_id, jobs._job_seconds(data_dir, panel_id)))
        return real_job(data_dir, panel_id, new_seed)

    monkeypatch.setattr(jobs, "on_zero_gpu", lambda: True)
    monkeypatch.setattr(jobs, "generate_panel_job", job)
    made = studio.generate_story(story.id, run_panel=jobs.panel_runner(studio))
    assert [c[1] for c in calls] == [p.id for p in studio.panels(story.id)] == [v.panel_id for v in made]
    assert all(isinstance(c[0], str) for c in calls)  # plain values: ZeroGPU pickles a job's arguments
    assert jobs.panel_seconds(1024, 1024, 25) < jobs.panel_seconds(1024, 1024, 50) < jobs.panel_seconds(2048, 2048, 50)
    assert jobs.panel_seconds(2048, 2048, 1000, limit=300) == 300  # never past the job time limit
    assert calls[0][2] == jobs.panel_seconds(64, 64, 2, studio.limits.job_seconds)


def test_command_line_turns_workspaces_and_limits_on(monkeypatch, capsys):
    import sys

    from .ui_support import ROOT

    sys.path.insert(0, str(ROOT))
    import app as app_module

    monkeypatch.delenv("SPACE_ID", raising=False)
    local = app_module.parse_args([])
    assert local.workspaces is False and local.limits == Limits.local()
    monkeypatch.setenv("SPACE_ID", "someone/anystory")
    hosted = app_module.parse_args(["--limit", "max_characters=50", "--limit", "expiry_days=none"])
    assert hosted.workspaces is True
    assert hosted.limits == Limits.hosted(max_characters=50, expiry_days=None)
    for bad in ("colour=3", "max_characters", "max_side=none", "max_steps=-1", "job_seconds=soon"):
        with pytest.raises(SystemExit):
            app_module.parse_args(["--limit", bad])
        assert "--limit" in capsys.readouterr().err
