"""Consistency scores seen in a real browser (issue 18): a badge per character of the inspected
version, the story's characters x panels table, and "Best of N" keeping every draw and making the
best-scoring one active.

Preview-mode app on a temporary data folder with the example cast; screenshots go to
test-artifacts/ (gitignored).
"""

from __future__ import annotations

import pytest

from .browser_support import app, browser, open_page, shot
from .ui_support import IGNORE_GRADIO_WARNINGS, gradio_temp, preview_pipe

__all__ = ["app", "browser", "gradio_temp", "preview_pipe"]  # fixtures used by name
pytestmark = [IGNORE_GRADIO_WARNINGS, pytest.mark.browser, pytest.mark.slow]


def test_badges_the_story_table_and_best_of_n(app, browser):
    from playwright.sync_api import expect

    from ui.storyboard.layout import BEST_OF

    studio, url = app
    story = studio.create_story("Scored")
    first = studio.add_panel(story.id, "[Mia] and [Rex] at the beach")
    second = studio.add_panel(story.id, "[Mia] alone")
    for panel in (first, second):
        studio.generate_panel(panel.id)
    page = open_page(browser, url)
    page.locator("button[role=tab]:has-text('Storyboard')").first.click()

    # the inspected version (panel 1's active one) has a badge per character, with its score
    badges = page.locator("#version-score-badges .score-badge")
    expect(badges).to_have_count(2)
    scores = studio.version_scores(studio.get_panel(first.id).active_version_id)
    for entry in scores.characters:
        expect(page.locator("#version-score-badges")).to_contain_text(f"{entry.name}: {entry.clip:.2f}")

    # the story table: one row per character, one column per panel; Rex is not in panel 2
    page.get_by_text("Consistency: each character in each panel").click()
    table = page.locator("#story-score-table")
    expect(table).to_be_visible()
    expect(table.locator("tr")).to_have_count(3)  # header, Mia, Rex
    table_data = studio.story_scores(story.id)
    assert sorted(table_data.characters) == ["Mia", "Rex"]
    for name, row in zip(table_data.characters, table_data.cells):
        shown = table.locator("tr", has_text=name)
        for cell in row:
            if cell is not None and cell.clip is not None:
                expect(shown).to_contain_text(f"{cell.clip:.2f}")
    rex = table_data.cells[table_data.characters.index("Rex")]
    assert rex[1] is None  # Rex is not in panel 2: no score, not a zero
    shot(page, "scores-1-badges-and-table")

    # Best of N: N new versions, all kept, the best-scoring active
    before = {version.id for version in studio.versions(first.id)}
    page.locator("#best-of-panel").click()
    expect(page.locator("#storyboard-status")).to_contain_text(
        f"drew {BEST_OF} seeds for panel 1; the best-scoring is active", timeout=180_000
    )
    made = [version for version in studio.versions(first.id) if version.id not in before]
    assert len(made) == BEST_OF
    assert len({version.settings["seed"] for version in made}) == BEST_OF  # each draw its own seed
    best = max(made, key=lambda version: (*studio.version_scores(version.id).rank(), -version.id))
    assert studio.get_panel(first.id).active_version_id == best.id
    number = [version.id for version in studio.versions(first.id)].index(best.id) + 1
    expect(page.locator("#version-gallery")).to_contain_text(f"✓ v{number} active")
    shot(page, "scores-2-best-of")
