"""Draw a whole story across processes (GPUs): an exported project archive in, the same archive
with every outdated panel drawn out, ready for the app's Import.

    python -m anystory.render_story PROJECT.zip --out DRAWN.zip [--model M --adapter A | --preview]
    accelerate launch --multi_gpu --num_processes 8 -m anystory.render_story PROJECT.zip --out DRAWN.zip

The main process imports the project into a work folder (a Studio data folder, `--work`, on a disk
every process sees) and encodes its characters once; then each process opens a Studio on that
folder with the model on its own device and draws its share of the panels
(`PartialState.split_between_processes`) through `Studio.generate_panel`, the app's own path, so
a panel drawn here is the one the app draws for the same seed and settings. The versions land in
the folder's database (SQLite, WAL: the processes' writes take turns); the main process then
exports the story as a project archive.

Not `anystory.render`: that module is the torch-free export layer under the Studio, and a command
there would import the Studio above it (tests/test_structure.py forbids the circle).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .processes import cpu_processes
from .studio import Studio, StudioError, load_pipeline

STORY_FILE = "render-story.json"  # the imported story's id, for the other processes


@dataclass
class RenderResult:
    archive: Path | None  # the exported project (main process only)
    process: int  # this process's index
    drawn: list[int]  # panel ids this process drew
    skipped: list[str]  # panels that cannot be drawn, and why (main process)


def _open_studio(work: Path, args: argparse.Namespace, device) -> Studio:
    kwargs = {} if args.preview else {"device": str(device)}
    pipeline = load_pipeline(work, model=args.model, adapter=args.adapter, preview=args.preview, **kwargs)
    if args.preview and device is not None:
        pipeline.to(device)
    studio = Studio(work, pipeline, preview=args.preview)
    return studio


def render(args: argparse.Namespace) -> RenderResult:
    from accelerate import PartialState

    state = PartialState(cpu=cpu_processes())
    work = Path(args.work)
    if state.is_main_process:
        if work.exists() and any(work.iterdir()):
            if not args.overwrite_work:
                raise StudioError(f"{work} is not empty: pass --overwrite-work to start it again")
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    studio = None
    skipped: list[str] = []
    if state.is_main_process:
        studio = _open_studio(work, args, state.device)
        story = studio.import_project(args.project)
        for character in studio.stale_characters():  # encode once here, not in every process
            studio.character_encoding(character.id)
        panels = studio.panels(story.id) if args.all else studio.outdated_panels(story.id)
        todo = []
        for panel in panels:
            problems = studio.panel_problems(panel)
            if problems:
                skipped.append(f"panel {panel.position + 1}: {'; '.join(problems)}")
            else:
                todo.append(panel.id)
        (work / STORY_FILE).write_text(json.dumps({"story": story.id, "panels": todo}))
    state.wait_for_everyone()
    plan = json.loads((work / STORY_FILE).read_text())
    if studio is None:
        studio = _open_studio(work, args, state.device)
    drawn = []
    with state.split_between_processes(plan["panels"]) as mine:
        for panel_id in mine:
            studio.generate_panel(panel_id)
            drawn.append(panel_id)
    state.wait_for_everyone()
    archive = None
    if state.is_main_process:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        (archive,) = studio.export_story(plan["story"], "project", out)
    studio.close()
    return RenderResult(archive, state.process_index, drawn, skipped)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m anystory.render_story", description=__doc__.split("\n\n")[0])
    parser.add_argument("project", help="a project archive exported by the app (Export -> project)")
    parser.add_argument("--out", required=True, help="the archive to write, with the drawn panels")
    parser.add_argument("--work", help="the work folder (default: OUT without .zip, plus .work)")
    parser.add_argument("--overwrite-work", action="store_true", help="empty a work folder left by an earlier run")
    parser.add_argument("--all", action="store_true", help="draw every panel, not only the outdated ones")
    parser.add_argument("--model", help="hub id, diffusers folder or .safetensors file (default: SDXL base)")
    parser.add_argument("--adapter", help="an AnyStory checkpoint folder (default: public weights)")
    parser.add_argument("--preview", action="store_true", help="the tiny offline model (tests; images mean nothing)")
    args = parser.parse_args(argv)
    if args.work is None:
        args.work = str(Path(args.out).with_suffix("")) + ".work"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = render(args)
    except StudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"process {result.process}: drew {len(result.drawn)} panels")
    for line in result.skipped:
        print(f"skipped {line}")
    if result.archive is not None:
        print(f"drew the panels into {result.archive}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
