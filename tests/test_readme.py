"""The README's examples are tests: they must run as written."""

import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = python_blocks("Use it from Python")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "panel.png").exists() and (tmp_path / "girl.safetensors").exists()
    assert "torch.Size([3, 8, 8])" in capsys.readouterr().out
