"""Where start-up time goes: `app.py --preview` from launch to a served page, and the real model's load.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/startup.py                       # preview: first start and restart
    HF_HUB_OFFLINE=1 .venv/bin/python bench/startup.py --full work/full-sdxl # + the full-size model's load, per part

Preview (each in a fresh process, nothing of it imported before):
- end to end: `python -X importtime app.py --preview` is started on a free port and a fresh data
  folder (first start: the tiny model is built and saved, the example cast encoded) and again on
  the same folder (restart); the time is from the process start to the first HTTP 200 of the
  page. `-X importtime` gives each top-level package's import time.
- phases: the same `app.main` in a driver that times its steps: the imports (torch, diffusers and
  transformers through anystory.pipeline, gradio through ui), `open_studio`, the example cast,
  `build_app`, `launch` and the first page.

--full FOLDER: `AnyStoryPipeline.from_pretrained(FOLDER, adapter="public")` of the full-size
random SDXL (bench/full_sdxl.py writes it there, with the release-layout IP-Adapter file), each
part timed: diffusers' component loading, the CLIP image encoder, reading the IP-Adapter file,
building the AnyStory parts, the weight fingerprint.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "gradio",
    "anystory",
    "ui",
    "numpy",
    "PIL",
    "sqlite_utils",
    "safetensors",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_page(url: str, started: float, timeout: float, process: subprocess.Popen | None = None) -> float:
    """Seconds from `started` to the first HTTP 200 of `url`."""
    while time.perf_counter() - started < timeout:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode} before serving a page")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"no page at {url} within {timeout:.0f} s")


def import_times(stderr: str) -> dict[str, float]:
    """Cumulative seconds of each top-level package's first import, from `-X importtime` lines."""
    times: dict[str, float] = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if match and not match.group(2):  # not indented: imported at top level, not by another module
            package = match.group(3).split(".")[0]
            times[package] = times.get(package, 0.0) + int(match.group(1)) / 1e6
    return times


def end_to_end(data_dir: Path, timeout: float) -> dict:
    """`python -X importtime app.py --preview` to its first page, then stopped."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    # stderr goes to a file: -X importtime writes more than a pipe holds, and an unread pipe
    # would stop the app mid-import.
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-X", "importtime", "app.py", "--preview", "--data-dir", str(data_dir),
             "--port", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True,
        )  # fmt: skip
        try:
            seconds = wait_for_page(f"http://127.0.0.1:{port}/", started, timeout, process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.seek(0)
        stderr = log.read()
    return {"page_s": seconds, "imports_s": import_times(stderr)}


DRIVER = r"""
import json, sys, time
started = time.perf_counter()
marks = []
def mark(name):
    marks.append((name, time.perf_counter() - started))
sys.path.insert(0, ".")
import torch; mark("import torch")
import anystory.pipeline; mark("import diffusers + transformers (anystory.pipeline)")
import gradio; mark("import gradio")
import ui, ui.characters; mark("import ui")
import app
import gradio as gr
demos = []
def timed(module, name, label):
    original = getattr(module, name)
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        mark(label)
        if label == "build_app":
            demos.append(result)
        return result
    setattr(module, name, wrapper)
timed(app, "open_studio", "open_studio (tiny model: build/save if missing, load)")
timed(ui.characters, "add_example_cast", "example cast (encode the characters)")
timed(ui, "build_app", "build_app")
launch = gr.Blocks.launch
def quick_launch(self, *args, **kwargs):
    kwargs["prevent_thread_lock"] = True
    return launch(self, *args, **kwargs)
gr.Blocks.launch = quick_launch
app.main(sys.argv[1:]); mark("launch")
import urllib.request
url = f"http://127.0.0.1:{sys.argv[sys.argv.index('--port') + 1]}/"
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        time.sleep(0.05)
mark("first page served")
print(json.dumps(marks))
demos[0].close()
"""


def phases(data_dir: Path, timeout: float) -> list[tuple[str, float]]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    argv = ["--preview", "--data-dir", str(data_dir), "--port", str(free_port())]
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode:
        raise RuntimeError(f"the timing driver failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_phases(title: str, marks: list[tuple[str, float]]) -> None:
    print(f"\n| {title} | s (cumulative) | s (this step) |\n|---|---|---|")
    previous = 0.0
    for name, at in marks:
        print(f"| {name} | {at:.2f} | {at - previous:.2f} |")
        previous = at


def full_load(folder: str) -> None:
    """The full-size public-weights load, part by part."""
    sys.path.insert(0, str(ROOT))
    import torch

    from anystory import pipeline, weights
    from bench.full_sdxl import write_full_sdxl, write_release_ip_adapter

    write_full_sdxl(folder)
    ip_file = write_release_ip_adapter(folder)
    parts: dict[str, float] = {}

    def timed(owner, name, label):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                parts[label] = parts.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, wrapper)
        return owner, name, original

    saved = [
        timed(pipeline, "hub_call", "diffusers components + CLIP image encoder (from_pretrained calls)"),
        timed(pipeline, "load_state_dict_file", "read the IP-Adapter file"),
        timed(pipeline, "build_processors", "build the AnyStory processors"),
        timed(pipeline.AnyStoryPipeline, "_fingerprint", "weight fingerprint (encoder_id)"),
        timed(pipeline.AnyStoryPipeline, "init_public", "init_public (all of the AnyStory parts)"),
    ]
    start = time.perf_counter()
    pipe = pipeline.AnyStoryPipeline.from_pretrained(
        folder, adapter="public", ip_adapter=str(ip_file), dtype=torch.bfloat16, device="cpu"
    )
    total = time.perf_counter() - start
    for owner, name, original in saved:
        setattr(owner, name, original)
    print(f"\n### full-size load: AnyStoryPipeline.from_pretrained({folder}, adapter='public'), bf16, CPU\n")
    print("| part | s |\n|---|---|")
    for label, seconds in parts.items():
        print(f"| {label} | {seconds:.2f} |")
    print(f"| **whole from_pretrained** | **{total:.2f}** |")
    del pipe, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs of each kind (median)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--full", metavar="FOLDER", help="also time the full-size model's load from FOLDER")
    args = parser.parse_args()
    print(f"## bench/startup.py, {time.strftime('%Y-%m-%d %H:%M')}; load average {os.getloadavg()[0]:.2f}")

    results = {"first start": [], "restart": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as temporary:
            data_dir = Path(temporary) / "data"
            results["first start"].append(end_to_end(data_dir, args.timeout))
            results["restart"].append(end_to_end(data_dir, args.timeout))
    print(
        "\n| app.py --preview | launch to first page, s (runs) "
        "| torch | diffusers | transformers | gradio | anystory | ui |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, runs in results.items():
        runs.sort(key=lambda r: r["page_s"])
        middle = runs[len(runs) // 2]
        cells = [
            f"{middle['imports_s'].get(p, 0.0):.2f}"
            for p in ("torch", "diffusers", "transformers", "gradio", "anystory", "ui")
        ]
        each = ", ".join(f"{r['page_s']:.1f}" for r in runs)
        print(f"| {kind} | {middle['page_s']:.2f} ({each}) | " + " | ".join(cells) + " |")
    print("(import columns: cumulative seconds of each package's first import from top level, from -X importtime; "
          "a package first imported by another counts in that one's column)")  # fmt: skip

    with tempfile.TemporaryDirectory() as temporary:
        data_dir = Path(temporary) / "data"
        print_phases("phases, first start", phases(data_dir, args.timeout))
        print_phases("phases, restart", phases(data_dir, args.timeout))

    if args.full:
        full_load(args.full)


if __name__ == "__main__":
    main()
