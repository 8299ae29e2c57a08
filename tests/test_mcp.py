"""`app.py --mcp` (issue 16): the app as an MCP server; its tools are listed over HTTP with
docstrings an agent can act on. Needs the MCP SDK (`pip install mcp`); skipped without it."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from .ui_support import IGNORE_GRADIO_WARNINGS, free_port, gradio_temp, preview_pipe, preview_studio

__all__ = ["gradio_temp", "preview_pipe"]
pytestmark = [IGNORE_GRADIO_WARNINGS, pytest.mark.slow]
mcp = pytest.importorskip("mcp")

WANTED = {
    "list_characters", "create_story", "import_script", "add_line", "line_warnings", "generate_story", "export_pages",
}  # fmt: skip


@pytest.fixture
def served(gradio_temp, preview_pipe, tmp_path):
    from ui import build_app, launch_options

    studio = preview_studio(tmp_path / "data", preview_pipe)
    studio.add_example_cast()
    demo = build_app(studio)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, mcp_server=True,
                **launch_options(studio))  # fmt: skip
    try:
        yield studio, f"http://127.0.0.1:{port}"
    finally:
        demo.close()


def test_the_mcp_endpoint_lists_its_tools_over_http(served):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    studio, url = served

    async def tools() -> tuple[dict, str]:
        async with streamablehttp_client(f"{url}/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
                script = "Mia throws a ball.\nMia: Fetch!\n\nNarrator: Later."
                called = await session.call_tool("import_script", {"script": script, "fmt": "text", "aliases": "{}"})
                return {tool.name: tool for tool in listed.tools}, json.dumps([c.model_dump() for c in called.content])

    found, called = asyncio.run(tools())
    [story] = studio.stories()  # the agent's call imported the script
    assert [p.prompt for p in studio.panels(story.id)] == ["[Mia] throws a ball.", ""] and "Imported script" in called
    assert WANTED <= set(found), sorted(found)
    script = found["import_script"]
    assert script.description.startswith("Import a script as a new story")
    schema = json.dumps(script.inputSchema)
    assert "Fountain" in script.description and "the girl" in schema  # the Args: docs reach the agent
    assert "speech bubble" in found["add_line"].description
    with urllib.request.urlopen(f"{url}/gradio_api/mcp/schema") as response:  # the plain-HTTP schema too
        assert any(entry["name"].endswith("export_pages") for entry in json.loads(response.read()))
