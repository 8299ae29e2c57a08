"""LoRA styles: the story's LoRA (an uploaded .safetensors file or a hub id, with a weight), and a
panel's choice: the story's, its own, or none. The Studio checks and stores the file (never a
pickle) and loads the LoRA when the panel is generated."""

from __future__ import annotations

import gradio as gr

from ..common import notes_markdown, shows_errors
from ..session import Sessions
from .layout import StoryboardLayout
from .panels import PRIVATE
from .view import StoryboardView


def wire_lora(tab: StoryboardLayout, view: StoryboardView, sessions: Sessions) -> None:
    status, part = tab.status, tab.style.lora
    story_pick, panel_pick = tab.bar.story_pick, tab.strip.panel_pick

    @shows_errors(status)
    def save_story(story_id, panel_id, upload, source, weight, request: gr.Request) -> dict:
        if story_id is None:
            raise ValueError("pick a story first")
        studio = sessions.studio(request)
        if upload or (source or "").strip():  # a typed source is a hub id, never a path of the server
            studio.set_story_lora(story_id, upload or source.strip(), float(weight), local_paths=bool(upload))
            done = "the story's panels use this LoRA from their next generation (panels with their own keep it)"
        else:  # nothing new: the weight of the LoRA the story has
            studio.set_story_lora_weight(story_id, float(weight))
            done = f"the story's LoRA weight is {float(weight):g}"
        cleared = {part.story_file: None, part.story_source: ""}
        return {**view.render(studio, story_id, panel_id), status: notes_markdown([], done), **cleared}

    @shows_errors(status)
    def remove_story(story_id, panel_id, request: gr.Request) -> dict:
        if story_id is None:
            raise ValueError("pick a story first")
        studio = sessions.studio(request)
        studio.set_story_lora(story_id, None)
        done = "removed the story's LoRA; versions made with it keep it in their settings"
        return {**view.render(studio, story_id, panel_id), status: notes_markdown([], done)}

    @shows_errors(status)
    def save_panel(story_id, panel_id, choice, upload, source, weight, request: gr.Request) -> dict:
        if panel_id is None:
            raise ValueError("pick a panel first")
        studio = sessions.studio(request)
        if choice == "story":
            studio.set_panel_lora(panel_id, None)
            done = "the panel follows the story's LoRA"
        elif choice == "none":
            studio.set_panel_lora(panel_id, "none")
            done = "the panel is generated without a LoRA"
        elif upload or (source or "").strip():
            studio.set_panel_lora(panel_id, upload or source.strip(), float(weight), local_paths=bool(upload))
            done = "the panel uses its own LoRA from its next generation"
        else:
            studio.set_panel_lora_weight(panel_id, float(weight))
            done = f"the panel's LoRA weight is {float(weight):g}"
        cleared = {part.panel_file: None, part.panel_source: ""}
        return {**view.render(studio, story_id, panel_id), status: notes_markdown([], done), **cleared}

    story_inputs = [story_pick, panel_pick, part.story_file, part.story_source, part.story_weight]
    story_outputs = [*tab.view_outputs, part.story_file, part.story_source]
    part.story_save.click(save_story, story_inputs, story_outputs, **PRIVATE)
    part.story_remove.click(remove_story, [story_pick, panel_pick], tab.view_outputs, **PRIVATE)
    panel_inputs = [story_pick, panel_pick, part.panel_choice, part.panel_file, part.panel_source, part.panel_weight]
    part.panel_save.click(save_panel, panel_inputs, [*tab.view_outputs, part.panel_file, part.panel_source], **PRIVATE)
