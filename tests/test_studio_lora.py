"""LoRA styles in the Studio: a story's LoRA and a panel's own (or "none"), with a weight, loaded
for the panel's turn, recorded in its version, carried by project archives; pickles refused. On a
random tiny LoRA built offline (tiny_control.write_tiny_lora)."""

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from anystory import AnyStoryPipeline
from anystory.lora_files import check_safetensors
from anystory.studio import Studio, StudioError
from anystory.tiny import synthetic_subject, write_tiny_ip_adapter
from anystory.tiny_control import write_tiny_lora


@pytest.fixture(scope="module")
def styled_pipe(tiny_folder, tmp_path_factory):
    """Its own public-weights pipeline: loading LoRAs changes it (the session ones stay clean)."""
    ip_file = write_tiny_ip_adapter(tiny_folder, tmp_path_factory.mktemp("ip") / "ip.safetensors")
    pipe = AnyStoryPipeline.from_pretrained(
        str(tiny_folder), adapter="public", ip_adapter=str(ip_file), local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def loras(tiny_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return {
        "ink": write_tiny_lora(tiny_folder, folder / "ink.safetensors", seed=0),
        "neon": write_tiny_lora(tiny_folder, folder / "neon" / "neon.safetensors", seed=1),
    }


@pytest.fixture
def studio(styled_pipe, tmp_path):
    studio = Studio(tmp_path / "data", styled_pipe, preview=True)
    studio.panel_defaults.update(width=64, height=64, steps=2)
    return studio


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def pixels(version) -> np.ndarray:
    with Image.open(version.image_path) as image:
        return np.asarray(image.convert("RGB"))


def test_a_story_lora_styles_its_panels_and_a_panel_override_wins(studio, loras):
    studio.add_character("Mia", "a young woman with a red scarf", png(synthetic_subject(1)))
    story = studio.create_story("Styled")
    panel = studio.add_panel(story.id, "[Mia] walks in the rain")
    plain = studio.generate_panel(panel.id)
    story = studio.set_story_lora(story.id, loras["ink"], 0.8)
    assert story.lora["source"].startswith("loras/") and story.lora["weight"] == 0.8
    assert (studio.data_dir / story.lora["source"]).read_bytes() == loras["ink"].read_bytes()  # stored by content
    assert studio.get_panel(panel.id).status == "outdated"  # it follows the story's LoRA
    inked = studio.generate_panel(panel.id)
    assert np.abs(pixels(inked).astype(int) - pixels(plain)).max() > 0
    assert inked.settings["lora"] == {} and inked.settings["lora_used"] == story.lora
    assert plain.settings["lora_used"] is None
    # A panel's own LoRA wins over the story's; the same LoRA from the story gives the same image.
    own = studio.set_panel_lora(panel.id, loras["neon"].parent, 1.0)  # a local folder holding one
    assert own.lora == {"source": str(loras["neon"].parent.resolve()), "weight": 1.0}
    neon = studio.generate_panel(panel.id)
    assert neon.settings["lora_used"] == own.lora and np.abs(pixels(neon).astype(int) - pixels(inked)).max() > 0
    other = studio.add_panel(story.id, "[Mia] walks in the rain")
    studio.set_story_lora(story.id, loras["neon"].parent, 1.0)
    assert studio.get_panel(panel.id).status == "ready"  # a panel with its own LoRA keeps its image
    assert np.array_equal(pixels(studio.generate_panel(other.id)), pixels(neon))
    # "none" on the panel: exactly no LoRA, whatever the story has (the loaded one at weight 0).
    studio.set_panel_lora(panel.id, "none")
    unstyled = studio.generate_panel(panel.id)
    assert unstyled.settings["lora"] == {"none": True} and unstyled.settings["lora_used"] is None
    assert np.array_equal(pixels(unstyled), pixels(plain))
    assert studio.set_panel_lora(panel.id, None).lora == {}  # follows the story again


def test_weight_zero_is_exactly_no_lora(studio, loras):
    story = studio.create_story("Zero")
    panel = studio.add_panel(story.id, "a quiet street at night")
    studio.set_panel_lora(panel.id, "none")
    without = studio.generate_panel(panel.id)
    studio.set_panel_lora(panel.id, loras["ink"], 0.0)
    zero = studio.generate_panel(panel.id)  # not loaded at all
    assert zero.settings["lora_used"]["weight"] == 0.0 and np.array_equal(pixels(zero), pixels(without))
    studio.set_panel_lora(panel.id, loras["ink"], 1.5)
    assert np.abs(pixels(studio.generate_panel(panel.id)).astype(int) - pixels(without)).max() > 0
    assert studio.pipeline.lora_weights  # loaded now, by source: the next panels do not read it again
    studio.set_panel_lora(panel.id, loras["ink"], 0.0)
    assert np.array_equal(pixels(studio.generate_panel(panel.id)), pixels(without))  # loaded, at weight 0


def test_the_loaded_lora_is_kept_between_panels(studio, loras, monkeypatch):
    story = studio.create_story("Cached")
    studio.set_story_lora(story.id, loras["ink"], 0.5)
    first, second = (studio.add_panel(story.id, f"panel {n}") for n in (1, 2))
    studio.generate_panel(first.id)
    loads = []
    real = studio.pipeline.load_lora
    monkeypatch.setattr(studio.pipeline, "load_lora", lambda *a, **k: loads.append(a) or real(*a, **k))
    studio.generate_panel(second.id)
    studio.set_story_lora(story.id, loras["ink"], 0.9)  # a new weight: no new read either
    studio.generate_panel(first.id)
    assert loads == [] and list(studio.pipeline.lora_weights.values()) == [0.9]


def test_project_archives_carry_the_loras(studio, styled_pipe, loras, tmp_path):
    story = studio.create_story("Carried")
    studio.set_story_lora(story.id, loras["ink"], 0.7)
    panel = studio.add_panel(story.id, "a lighthouse")
    own = studio.add_panel(story.id, "a harbour")
    studio.set_panel_lora(own.id, loras["neon"], 1.2)
    made = [studio.generate_panel(p.id) for p in (panel, own)]
    (archive,) = studio.export_story(story.id, "project")
    other = Studio(tmp_path / "other", styled_pipe, preview=True)
    imported = other.import_project(archive)
    assert imported.lora == studio.get_story(story.id).lora
    panels = other.panels(imported.id)
    assert [p.lora for p in panels] == [{}, studio.get_panel(own.id).lora]
    for source in (imported.lora["source"], panels[1].lora["source"]):
        check_safetensors(other.data_dir / source)
    versions = [other.versions(p.id)[0] for p in panels]
    assert [v.settings["lora_used"] for v in versions] == [m.settings["lora_used"] for m in made]
    again = [other.generate_panel(p.id) for p in panels]
    assert all(np.array_equal(pixels(a), pixels(m)) for a, m in zip(again, made))


def test_an_archive_with_a_pickle_for_a_lora_is_refused(studio, loras, tmp_path):
    story = studio.create_story("Tampered")
    studio.set_story_lora(story.id, loras["ink"], 1.0)
    (archive,) = studio.export_story(story.id, "project")
    member = studio.get_story(story.id).lora["source"]
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(tampered, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == member:
                buffer = io.BytesIO()
                torch.save({"lora.down.weight": torch.zeros(2)}, buffer)
                data = buffer.getvalue()
            target.writestr(info, data)
    other = Studio(tmp_path / "other", studio.pipeline, preview=True)
    with pytest.raises(ValueError, match="pickle"):
        other.import_project(tampered)
    assert other.stories() == [] and not (other.data_dir / "loras").exists()


def test_a_pickle_is_refused_with_a_clear_message_and_nothing_changes(studio, loras, tmp_path):
    story = studio.create_story("Safe")
    studio.set_story_lora(story.id, loras["ink"], 0.6)
    panel = studio.add_panel(story.id, "a street")
    studio.generate_panel(panel.id)
    before = (studio.get_story(story.id), studio.get_panel(panel.id), sorted((studio.data_dir / "loras").iterdir()))
    pickled = tmp_path / "style.bin"
    torch.save({"lora.down.weight": torch.zeros(4)}, pickled)
    with pytest.raises(StudioError, match="only .safetensors LoRA files .*a pickle could run code"):
        studio.set_story_lora(story.id, pickled, 1.0)
    renamed = tmp_path / "renamed.safetensors"  # a pickle under a safetensors name: refused by content
    renamed.write_bytes(pickled.read_bytes())
    with pytest.raises(StudioError, match="is a pickle .* only .safetensors LoRAs are loaded"):
        studio.set_panel_lora(panel.id, renamed, 1.0)
    not_lora = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.zeros(2)}, str(not_lora))
    with pytest.raises(StudioError, match="holds no LoRA weights"):
        studio.set_panel_lora(panel.id, not_lora, 1.0)
    with pytest.raises(StudioError, match="between -2 and 2"):
        studio.set_panel_lora(panel.id, loras["neon"], 3.0)
    with pytest.raises(StudioError, match="does not exist"):
        studio.set_panel_lora(panel.id, str(tmp_path / "missing.safetensors"), 1.0)
    with pytest.raises(StudioError, match='"none" is for a panel'):
        studio.set_story_lora(story.id, "none")
    after = (studio.get_story(story.id), studio.get_panel(panel.id), sorted((studio.data_dir / "loras").iterdir()))
    assert after == before and after[1].status == "ready"


def test_a_hub_lora_that_cannot_be_fetched_fails_the_panel_with_a_message(studio):
    story = studio.create_story("Offline")
    panel = studio.add_panel(story.id, "a forest")
    assert studio.set_panel_lora(panel.id, "someone/sdxl-ink-style", 0.9).lora["source"] == "someone/sdxl-ink-style"
    with pytest.raises(StudioError, match="the LoRA someone/sdxl-ink-style could not be loaded"):
        studio.generate_panel(panel.id)
    panel = studio.get_panel(panel.id)
    assert panel.status == "failed" and "could not be loaded" in panel.error
    assert studio.pipeline.lora_weights == {} or all(w == 0 for w in studio.pipeline.lora_weights.values())


def test_a_hosted_app_takes_uploaded_lora_files_only(styled_pipe, loras, tmp_path):
    from anystory.limits import Limits

    hosted = Studio(tmp_path / "hosted", styled_pipe, preview=True, limits=Limits.hosted())
    hosted.panel_defaults.update(width=64, height=64, steps=2)
    story = hosted.create_story("Shared")
    for source in ("someone/sdxl-ink-style", loras["neon"].parent):  # a download, a folder of the server
        with pytest.raises(StudioError, match="only uploaded LoRA files"):
            hosted.set_story_lora(story.id, source, 1.0)
    assert hosted.get_story(story.id).lora == {}
    assert hosted.set_story_lora(story.id, loras["ink"], 1.0).lora["source"].startswith("loras/")
    panel = hosted.add_panel(story.id, "a bridge")
    hosted.update_panel(panel.id, lora={"source": "someone/sdxl-ink-style", "weight": 1.0})  # as an archive may
    with pytest.raises(StudioError, match="only uploaded LoRA files"):
        hosted.generate_panel(panel.id)


def test_a_folder_lora_changed_in_place_is_read_again(studio, tiny_folder, tmp_path, monkeypatch):
    folder = tmp_path / "style"
    write_tiny_lora(tiny_folder, folder / "style.safetensors", seed=2)
    story = studio.create_story("Edited")
    panel = studio.add_panel(story.id, "a hill")
    studio.set_panel_lora(panel.id, folder, 1.0)
    first = studio.generate_panel(panel.id)
    loads = []
    real = studio.pipeline.load_lora
    monkeypatch.setattr(studio.pipeline, "load_lora", lambda *a, **k: loads.append(a) or real(*a, **k))
    assert np.array_equal(pixels(studio.generate_panel(panel.id)), pixels(first)) and loads == []
    write_tiny_lora(tiny_folder, folder / "style.safetensors", seed=3)  # the writer retrains it
    again = studio.generate_panel(panel.id)
    assert len(loads) == 1 and np.abs(pixels(again).astype(int) - pixels(first)).max() > 0
