"""LoRA styles in a real browser: upload a story's LoRA, generate, the version records it; a
panel says "No LoRA"; a pickle is refused with a message. And the /set_story_lora and
/set_panel_lora endpoints on the same app (preview mode, a tiny LoRA built offline)."""

from __future__ import annotations

import pytest
import torch

from anystory import AnyStoryPipeline
from anystory.tiny import write_tiny_ip_adapter
from anystory.tiny_control import write_tiny_lora

from .browser_support import browser, open_page, shot
from .ui_support import IGNORE_GRADIO_WARNINGS, gradio_temp, launch, preview_studio

__all__ = ["browser", "gradio_temp"]  # fixtures used by name
pytestmark = [IGNORE_GRADIO_WARNINGS, pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def app(browser, gradio_temp, tiny_folder, tmp_path):
    """Its own pipeline: a LoRA loaded into it must not reach the other tests' pipelines."""
    ip_file = write_tiny_ip_adapter(tiny_folder, tmp_path / "ip.safetensors")
    pipe = AnyStoryPipeline.from_pretrained(
        str(tiny_folder), adapter="public", ip_adapter=str(ip_file), local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    studio = preview_studio(tmp_path / "data", pipe)
    studio.add_example_cast()
    demo, url = launch(studio)
    try:
        yield studio, url
    finally:
        demo.close()


def test_a_story_lora_uploaded_in_the_browser_styles_the_panel_and_its_version(app, browser, tiny_folder, tmp_path):
    from playwright.sync_api import expect

    studio, url = app
    story = studio.create_story("Inked")
    panel = studio.add_panel(story.id, "[Mia] in the rain")
    lora = write_tiny_lora(tiny_folder, tmp_path / "ink.safetensors")
    pickled = tmp_path / "ink-copy.safetensors"  # a pickle under a safetensors name
    torch.save({"lora.down.weight": torch.zeros(2)}, pickled)
    page = open_page(browser, url)
    page.locator("button[role=tab]:has-text('Storyboard')").first.click()
    page.locator("#style-part").get_by_text("Style and negative prompt").click()
    expect(page.locator("#story-lora-summary")).to_contain_text("The story has no LoRA")
    page.locator("#story-lora-file input[type=file]").set_input_files(str(lora))
    expect(page.locator("#story-lora-file")).to_contain_text("ink.safetensors")
    page.locator("#story-lora-save").click()
    expect(page.locator("#storyboard-status")).to_contain_text("use this LoRA")
    expect(page.locator("#story-lora-summary")).to_contain_text("weight 1")
    expect(page.locator("#panel-lora-summary")).to_contain_text("generates with")
    story_lora = studio.get_story(story.id).lora
    assert story_lora["source"].startswith("loras/") and story_lora["weight"] == 1.0
    page.locator("#generate-panel").click()
    expect(page.locator("#panel-status")).to_contain_text("LoRA: the uploaded file", timeout=120_000)
    shot(page, "lora-generated")
    (version,) = studio.versions(panel.id)
    assert version.settings["lora_used"] == story_lora and version.settings["lora"] == {}
    files = sorted((studio.data_dir / "loras").iterdir())
    page.locator("#panel-lora-choice").get_by_text("Its own LoRA").click()
    page.locator("#panel-lora-file input[type=file]").set_input_files(str(pickled))
    expect(page.locator("#panel-lora-file")).to_contain_text("ink-copy")
    page.locator("#panel-lora-save").click()
    expect(page.locator("#storyboard-status")).to_contain_text("is a pickle")
    assert studio.get_panel(panel.id).lora == {} and sorted((studio.data_dir / "loras").iterdir()) == files
    page.locator("#panel-lora-choice").get_by_text("No LoRA").click()
    page.locator("#panel-lora-save").click()
    expect(page.locator("#panel-lora-summary")).to_contain_text("without a LoRA")
    assert studio.get_panel(panel.id).lora == {"none": True} and studio.get_panel(panel.id).status == "outdated"


def test_the_lora_endpoints_take_an_upload_or_a_hub_id_never_a_server_path(app, tiny_folder, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    studio, url = app
    client = Client(url, verbose=False)
    story = client.predict("Via the API", api_name="/create_story")
    panel = client.predict(story["id"], "a lighthouse", "{}", api_name="/add_panel")
    lora = write_tiny_lora(tiny_folder, tmp_path / "ink.safetensors")
    styled = client.predict(story["id"], handle_file(str(lora)), "", 0.7, api_name="/set_story_lora")
    assert styled["lora"]["weight"] == 0.7 and styled["lora"] == studio.get_story(story["id"]).lora
    with pytest.raises(AppError, match="not a hub id"):
        client.predict(panel["id"], None, str(lora.parent), 1.0, api_name="/set_panel_lora")
    pickled = tmp_path / "style.safetensors"
    torch.save({"lora.down.weight": torch.zeros(2)}, pickled)
    with pytest.raises(AppError, match="is a pickle"):
        client.predict(panel["id"], handle_file(str(pickled)), "", 1.0, api_name="/set_panel_lora")
    hub = client.predict(panel["id"], None, "someone/sdxl-style", 0.5, api_name="/set_panel_lora")
    assert hub["lora"] == {"source": "someone/sdxl-style", "weight": 0.5}
    assert client.predict(panel["id"], None, "none", 1.0, api_name="/set_panel_lora")["lora"] == {"none": True}
    _, version = client.predict(panel["id"], False, api_name="/generate_panel")
    assert studio.get_version(version["id"]).settings["lora_used"] is None
    assert client.predict(panel["id"], None, "", 1.0, api_name="/set_panel_lora")["lora"] == {}  # the story's
    assert client.predict(story["id"], None, "", 1.0, api_name="/set_story_lora")["lora"] == {}
