"""Generate one panel, re-roll it, generate the whole story, cancel: queued in the "model"
concurrency group (one generation at a time), with progress, and Cancel for your own run only."""

from __future__ import annotations

import html

import gradio as gr

from ..common import MODEL, error_markdown, error_message, notes_markdown, progress_reporter
from ..gpu_jobs import panel_runner
from ..session import Sessions
from .form import FormValues, save_form
from .layout import BEST_OF, StoryboardLayout
from .panels import PRIVATE
from .view import StoryboardView


def generate_panel_work(studio, story_id, panel_id, report, event) -> str:
    version = panel_runner(studio)(panel_id, progress=report, cancel=event)
    return f"generated panel {studio.get_panel(panel_id).position + 1} (seed {version.settings['seed']})"


def reroll_panel_work(studio, story_id, panel_id, report, event) -> str:
    version = panel_runner(studio)(panel_id, new_seed=True, progress=report, cancel=event)
    return f"re-rolled panel {studio.get_panel(panel_id).position + 1} with seed {version.settings['seed']}"


def best_of_work(studio, story_id, panel_id, report, event) -> str:
    made = studio.best_of_panel(panel_id, BEST_OF, progress=report, cancel=event, run_panel=panel_runner(studio))
    return f"drew {len(made)} seeds for panel {studio.get_panel(panel_id).position + 1}; the best-scoring is active"


def generate_story_work(studio, story_id, panel_id, report, event) -> str:
    made = studio.generate_story(story_id, progress=report, cancel=event, run_panel=panel_runner(studio))
    skipped = sum(note.startswith("skipped panel") for note in studio.notes)
    if made:
        return f"generated {len(made)} panel(s); up-to-date panels were kept"
    return f"nothing generated: {skipped} panel(s) need attention" if skipped else "every panel is up to date"


class Generation:
    """The three generation buttons and Cancel, wired to the Studio."""

    def __init__(self, tab: StoryboardLayout, view: StoryboardView, sessions: Sessions):
        self.tab, self.view, self.sessions = tab, view, sessions
        self.cancels = sessions.cancels

    def run(self, studio, story_id, panel_id, form: FormValues, request, progress, work, needs_panel: bool) -> dict:
        """Save the form, run `work`, show the result; a failure is shown with the panel's failed state."""
        status = self.tab.status
        try:
            if story_id is None:
                raise ValueError("create a story first")
            if panel_id is not None or needs_panel:
                save_form(studio, panel_id, form)
            event = self.cancels.start(request)
            try:
                done = work(studio, story_id, panel_id, progress_reporter(progress), event)
            finally:
                self.cancels.finish(request)
            return {**self.view.render(studio, story_id, panel_id), status: notes_markdown(studio.notes, done)}
        except Exception as err:  # noqa: BLE001 - shown, and the panel shows its failed state
            message = error_message(err)
            gr.Warning(html.escape(message))
            try:
                refreshed = self.view.render(studio, story_id, panel_id)
            except Exception:  # noqa: BLE001
                refreshed = {}
            return {**refreshed, status: error_markdown(message)}

    def handler(self, name: str, work, *, needs_panel: bool = True):
        """A queued handler over the panel form (the model work in it is a GPU job: gpu_jobs.py). Its
        parameters are spelled out: gradio hands gr.Request and gr.Progress only to named parameters."""

        def handler(
            story_id,
            panel_id,
            prompt,
            ticked,
            seed,
            steps,
            guidance,
            width,
            height,
            router,
            rows,
            request: gr.Request,
            progress=gr.Progress(),
        ):
            form = FormValues(prompt, ticked, seed, steps, guidance, width, height, router, rows)
            studio = self.sessions.studio(request)
            yield {self.tab.status: self.starting(studio, panel_id, needs_panel)}  # no stale line meanwhile
            yield self.run(studio, story_id, panel_id, form, request, progress, work, needs_panel)

        handler.__name__ = handler.__qualname__ = name
        return handler

    @staticmethod
    def starting(studio, panel_id, needs_panel: bool) -> str:
        """The status line while a generation runs (its progress is drawn on the part it changes)."""
        if not needs_panel:
            return "Generating the panels that need it: progress on the strip…"
        try:
            return f"Generating panel {studio.get_panel(panel_id).position + 1}…"
        except (KeyError, TypeError):
            return "Generating…"

    def stop(self, request: gr.Request) -> None:
        """Set this session's cancel event, and say so in a toast: the status line is the
        generation's own, whose answer ("cancelled") may come back before this one does."""
        if self.cancels.cancel(request):
            gr.Info("Cancelling: the generation stops after the current step.")
        else:
            gr.Info("Nothing of yours is generating.")

    def wire(self) -> None:
        tab, buttons = self.tab, self.tab.buttons
        one = {**MODEL, "show_progress_on": [tab.inspector.active_image], **PRIVATE}
        story = {**MODEL, "show_progress_on": [tab.strip.strip], **PRIVATE}  # "panel 2 of 5: step 3 of 8"
        inputs, outputs = tab.form_inputs, tab.view_outputs
        buttons.generate.click(self.handler("generate_one", generate_panel_work), inputs, outputs, **one)
        buttons.reroll.click(self.handler("reroll_one", reroll_panel_work), inputs, outputs, **one)
        buttons.best_of.click(self.handler("best_of", best_of_work), inputs, outputs, **one)
        every = self.handler("generate_every", generate_story_work, needs_panel=False)
        buttons.generate_all.click(every, inputs, outputs, **story)
        buttons.cancel.click(self.stop, None, None, **PRIVATE)  # queued (toasts need it), not in the "model" group
