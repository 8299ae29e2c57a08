"""The house's rules, checked on the source: one-way imports, the UI through the Studio only,
small functions in ui/ (docs/METHOD.md and the README's "How the code is laid out")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_UI_FUNCTION_LINES = 120


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (function-level imports count)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
    return found


def anystory_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / "anystory").rglob("*.py")}
    return {name: {m for m in imported_modules(path) if m in files and m != name} for name, path in files.items()}


def test_no_import_cycle_among_anystory_modules():
    graph = anystory_graph()
    # A module imports its package's __init__ implicitly; the lazy __init__ imports nothing at load.
    graph = {name: {m for m in deps if m not in ("anystory", "anystory.training")} for name, deps in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, path + [node]):
                return True
        state[node] = 2
        return False

    for name in sorted(graph):
        if state.get(name) is None and visit(name, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_storage_floor_imports_nothing_above_it():
    graph = anystory_graph()
    floor = {"anystory.files", "anystory.names", "anystory.archive", "anystory.mentions", "anystory.storage"}
    floor |= {"anystory.scores", "anystory.control_settings", "anystory.lora_settings", "anystory.lora_files"}
    for name in floor:
        assert graph[name] <= floor, f"{name} imports {sorted(graph[name] - floor)}"
    assert graph["anystory.library"] <= floor
    assert graph["anystory.story"] <= floor | {"anystory.library"}


def test_the_ui_calls_the_studio_and_nothing_below_it():
    leaks = []
    for path in sorted((ROOT / "ui").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(r"\bstudio\.(_\w+|stories\.|library\b|database\b|pipeline\b)", line):
                leaks.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
        below = {m for m in imported_modules(path) if m.startswith("anystory")}
        if below:
            leaks.append(f"{path.relative_to(ROOT)} imports {sorted(below)}")
    assert not leaks, "\n".join(leaks)


def test_ui_functions_are_small():
    long = []
    for path in sorted((ROOT / "ui").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_UI_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)
