"""Where start-up time goes: `app.py --preview` from launch to a served page, and the real model's load.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/startup.py                        # preview: first start and restart
    HF_HUB_OFFLINE=1 .venv/bin/python bench/startup.py --app-root ../other    # the same for another checkout
    HF_HUB_OFFLINE=1 .venv/bin/python bench/startup.py --no-preview --model path/to/sdxl-folder --ip-adapter F
    HF_HUB_OFFLINE=1 .venv/bin/python bench/startup.py --full work/full-sdxl  # + the full-size model's load, per part

Preview (each in a fresh process):
- end to end: the README's `python app.py --preview` on a free port, first with no preview-model
  cache and a new data folder (first start: the tiny model is built, the example cast encoded),
  then again on both (restart); from the process start to the first HTTP 200 of the page.
- phases: the same `app.main` in a driver that times, from the process start, each phase and the
  thread it ran in: the first import of torch, diffusers, transformers and gradio (each less the
  others of the four it imported), opening the Studio and its database, building/finding and
  loading the tiny model, the example cast, building the Gradio Blocks, the server's start, the
  first page, and when the model was ready.

--model FOLDER: `AnyStoryPipeline.from_pretrained(FOLDER, adapter="public")`, each part timed
(UNet, VAE, both text encoders, the CLIP image encoder, the rest of diffusers' loading, reading the
IP-Adapter file, building the AnyStory parts, the weights' fingerprint). --full FOLDER: the same
on the full-size random SDXL that bench/full_sdxl.py writes there.
"""

from __future__ import annotations

import argparse
import json
import os
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


def end_to_end(data_dir: Path, cache: Path, timeout: float, app_root: Path) -> dict:
    """`python app.py --preview` (the README's command) to its first page, then stopped."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", ANYSTORY_PREVIEW_CACHE=str(cache))
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--preview", "--data-dir", str(data_dir), "--port", str(port)],
        cwd=app_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        return {"page_s": wait_for_page(f"http://127.0.0.1:{port}/", started, timeout, process)}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


DRIVER = r"""
# Runs app.main as `app.py --preview` does, under -X importtime, timing its phases from the
# process start (argv[1], wall clock): each watched package's first import (when it began), and
# every call of the functions below (in whichever thread it ran). Works on old and new layouts of
# the app: a function that does not exist is not timed.
import importlib.abc, json, os, sys, threading, time, urllib.request
T0, ROOT, argv = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
sys.path.insert(0, ROOT)
os.chdir(ROOT)
def now():
    return time.time() - T0
driver_start = now()
spans, imports = [], {}
WATCH = ("torch", "diffusers", "transformers", "gradio")
PATCH = {
    "anystory.storage": ["StudioDatabase.__init__"],
    "anystory.studio": ["Studio.__init__", "Studio.add_example_cast", "load_pipeline"],
    "anystory.preview_model": ["preview_model_files"],
    "anystory.tiny": ["write_tiny_sdxl", "write_tiny_ip_adapter"],
    "anystory.pipeline": ["AnyStoryPipeline.from_pretrained"],
    "ui.app": ["build_app"],
    "gradio.blocks": ["Blocks.launch"],
}
def wrap(owner, attr, label):
    raw = owner.__dict__.get(attr)
    if raw is None:
        return
    is_classmethod = isinstance(raw, classmethod)
    fn = raw.__func__ if is_classmethod else raw
    def timed(*args, **kwargs):
        start = now()
        try:
            return fn(*args, **kwargs)
        finally:
            spans.append((label, threading.current_thread().name, start, now()))
    setattr(owner, attr, classmethod(timed) if is_classmethod else timed)
def patch(module):
    for target in PATCH.get(module.__name__, ()):
        owner_name, _, attr = target.rpartition(".")
        owner = getattr(module, owner_name, None) if owner_name else module
        if owner is not None:
            wrap(owner, attr, target)
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in WATCH and name not in PATCH:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        original = spec.loader.exec_module
        def exec_module(module, _name=name):
            start = now()
            original(module)
            if _name in WATCH:
                imports[_name] = (start, now(), threading.current_thread().name)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Hook())
data_dir = argv[argv.index("--data-dir") + 1]
first_start = not os.path.exists(data_dir)  # an empty data folder gets the example cast
import app
worker = threading.Thread(target=app.main, args=(argv,), name="main", daemon=True)
worker.start()
url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}/"
page = None
deadline = time.time() + 300
while page is None and time.time() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                page = now()
    except OSError:
        time.sleep(0.05)
def ended(label):
    return any(s[0] == label for s in spans)
while time.time() < deadline and not ended("load_pipeline"):
    time.sleep(0.05)
model_ready = max((s[3] for s in spans if s[0] == "load_pipeline"), default=None)
while first_start and time.time() < deadline and not ended("Studio.add_example_cast"):
    time.sleep(0.05)
print(json.dumps({"driver_start": driver_start, "page": page, "model_ready": model_ready, "spans": spans,
                  "imports": imports}), flush=True)
os._exit(0)
"""

SPAN_LABELS = {
    "StudioDatabase.__init__": "Studio / database open (StudioDatabase)",
    "Studio.__init__": "Studio.__init__ (with the database)",
    "load_pipeline": "the tiny model: find or build, then load (load_pipeline)",
    "preview_model_files": "  the preview cache: find or build the tiny model",
    "write_tiny_sdxl": "  build + save the tiny SDXL (write_tiny_sdxl)",
    "write_tiny_ip_adapter": "  build + save the tiny IP-Adapter (write_tiny_ip_adapter)",
    "AnyStoryPipeline.from_pretrained": "  load it (AnyStoryPipeline.from_pretrained)",
    "Studio.add_example_cast": "example cast (encode 3 characters, first start only)",
    "ui.app.build_app": "Gradio Blocks build (build_app)",
    "build_app": "Gradio Blocks build (build_app)",
    "Blocks.launch": "server start (Blocks.launch)",
}


def phases(data_dir: Path, cache: Path, timeout: float, app_root: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", ANYSTORY_PREVIEW_CACHE=str(cache))
    argv = ["--preview", "--data-dir", str(data_dir), "--port", str(free_port())]
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(started), str(app_root), *argv],
        cwd=app_root, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"the timing driver failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def own_import_seconds(imports: dict) -> dict[str, float]:
    """Each watched package's import, less the watched packages it imported itself (torch inside
    diffusers counts as torch): intervals nested in another in the same thread are taken out."""
    own = {}
    for name, (start, end, thread) in imports.items():
        inner = [
            (s, e) for other, (s, e, t) in imports.items()
            if other != name and t == thread and start <= s and e <= end
        ]  # fmt: skip
        outermost = [
            (s, e) for s, e in inner if not any(s2 <= s and e <= e2 and (s2, e2) != (s, e) for s2, e2 in inner)
        ]
        own[name] = (end - start) - sum(e - s for s, e in outermost)
    return own


def print_phases(title: str, result: dict) -> None:
    """One table: when each phase began (s from the process start), how long it took, in which
    thread, and whether it was before the first page."""
    page = result["page"]
    rows = [("python start (interpreter, site)", "main", 0.0, result["driver_start"])]
    own = own_import_seconds(result["imports"])
    for package in ("torch", "diffusers", "transformers", "gradio"):
        if package in result["imports"]:
            start, _, thread = result["imports"][package]
            rows.append((f"import {package} (less the others of these four it imports)", thread, start, own[package]))
    for label, thread, start, end in sorted(result["spans"], key=lambda s: s[2]):
        rows.append((SPAN_LABELS.get(label, label), thread, start, end - start))
    built = [end for label, _, _, end in result["spans"] if label.endswith("build_app")]
    if built:
        rows.append(
            ("server start until the first HTTP 200 (from the end of build_app)", "main", built[0], page - built[0])
        )
    print(f"\n**{title}**: first page (HTTP 200) at **{page:.2f} s**; model ready at "
          f"{result['model_ready']:.2f} s (from the process start)\n")  # fmt: skip
    print("| phase | thread | starts at, s | takes, s | before the page |\n|---|---|---|---|---|")
    for label, thread, start, seconds in rows:
        at = "-" if start is None else f"{start:.2f}"
        before = "-" if start is None else ("yes" if start < page else "no (after)")
        print(f"| {label} | {thread} | {at} | {seconds:.2f} | {before} |")


def timed_parts(folder: str, ip_adapter: str | None = None, dtype=None, device: str = "cpu"):
    """`AnyStoryPipeline.from_pretrained(folder, adapter="public")` with each part's load timed:
    (pipeline, {part: seconds}). Parts: each model component (unet, vae, text_encoder,
    text_encoder_2, image_encoder) by its from_pretrained, the rest of diffusers' loading
    (tokenizers, scheduler, configs), reading the IP-Adapter file, building the AnyStory parts
    from it, the weights' fingerprint, and the whole."""
    import threading

    import torch
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    from anystory import pipeline as pipeline_module

    parts: dict[str, float] = {}
    model_labels: list[str] = []  # the parts timed by a component's from_pretrained
    inside_hub: set[str] = set()  # ... of them, those loaded within diffusers' pipeline loading
    depth = threading.local()
    in_hub = threading.local()

    def part_name(cls, args, kwargs) -> str:
        where = kwargs.get("subfolder") or (Path(str(args[0])).name if args else "")
        return f"{where} ({cls.__name__})" if where else cls.__name__

    def timing_classmethod(owner, attr, name_of):
        raw = owner.__dict__[attr]
        function = raw.__func__

        def timed(cls, *args, **kwargs):
            if getattr(depth, "n", 0):  # inside another timed load: counted there
                return function(cls, *args, **kwargs)
            depth.n = 1
            start = time.perf_counter()
            try:
                return function(cls, *args, **kwargs)
            finally:
                depth.n = 0
                label = name_of(cls, args, kwargs)
                parts[label] = parts.get(label, 0.0) + time.perf_counter() - start
                if label not in model_labels:
                    model_labels.append(label)
                if getattr(in_hub, "on", False):
                    inside_hub.add(label)

        setattr(owner, attr, classmethod(timed))
        return owner, attr, raw

    def timing_function(owner, attr, label):
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            hub = attr == "hub_call"
            if hub:
                in_hub.on = True
            try:
                return original(*args, **kwargs)
            finally:
                if hub:
                    in_hub.on = False
                parts[label] = parts.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, attr, timed)
        return owner, attr, original

    saved = [
        timing_classmethod(ModelMixin, "from_pretrained", part_name),
        timing_classmethod(PreTrainedModel, "from_pretrained", part_name),
        timing_function(pipeline_module, "hub_call", "diffusers' pipeline loading (all components)"),
        timing_function(pipeline_module, "load_state_dict_file", "adapter: read the IP-Adapter file"),
        timing_function(
            pipeline_module.AnyStoryPipeline, "init_public", "adapter: build the AnyStory parts (with the fingerprint)"
        ),
        timing_function(pipeline_module.AnyStoryPipeline, "_fingerprint", "weights' fingerprint (encoder_id)"),
    ]
    start = time.perf_counter()
    try:
        pipe = pipeline_module.AnyStoryPipeline.from_pretrained(
            folder, adapter="public", ip_adapter=ip_adapter, dtype=dtype or torch.float32, device=device,
            local_files_only=True,
        )  # fmt: skip
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)
    parts["whole from_pretrained"] = time.perf_counter() - start
    models = sum(parts.get(label, 0.0) for label in model_labels)
    pipeline_loading = parts.pop("diffusers' pipeline loading (all components)", None)
    if pipeline_loading is not None:
        # The model components diffusers loaded itself (the image encoder too when the folder has one).
        inside = sum(parts[label] for label in model_labels if label in inside_hub)
        parts["diffusers' loading besides the models (tokenizers, scheduler, configs)"] = pipeline_loading - inside
    parts["(the model parts together)"] = models
    return pipe, parts


def print_parts(title: str, parts: dict[str, float]) -> None:
    print(f"\n### {title}\n\n| part | s |\n|---|---|")
    for label, seconds in parts.items():
        print(f"| {label} | {seconds:.2f} |")


def full_load(folder: str) -> None:
    """The full-size public-weights load (random weights, written first), part by part."""
    sys.path.insert(0, str(ROOT))
    import torch

    from bench.full_sdxl import write_full_sdxl, write_release_ip_adapter

    write_full_sdxl(folder)
    ip_file = write_release_ip_adapter(folder)
    _, parts = timed_parts(folder, str(ip_file), dtype=torch.bfloat16)
    print_parts(f"full-size load: AnyStoryPipeline.from_pretrained({folder}, adapter='public'), bf16, CPU", parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs of each kind (median)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--app-root", default=str(ROOT), help="the checkout whose app.py is timed (default: this one)")
    parser.add_argument("--no-preview", action="store_true", help="skip the preview start-up")
    parser.add_argument("--full", metavar="FOLDER", help="also time the full-size model's load from FOLDER")
    parser.add_argument("--model", metavar="FOLDER", help="also time loading this SDXL diffusers folder, per part")
    parser.add_argument("--ip-adapter", metavar="FILE", help="with --model: its IP-Adapter Plus file")
    args = parser.parse_args()
    app_root = Path(args.app_root).resolve()
    print(f"## bench/startup.py, {time.strftime('%Y-%m-%d %H:%M')}, app at {app_root}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")  # fmt: skip
    if not args.no_preview:
        preview(args, app_root)
    if args.full:
        full_load(args.full)
    if args.model:
        import torch

        _, parts = timed_parts(args.model, args.ip_adapter, dtype=torch.float32)
        print_parts(f"load: AnyStoryPipeline.from_pretrained({args.model}, adapter='public'), fp32, CPU", parts)


def preview(args: argparse.Namespace, app_root: Path) -> None:
    """First start (no preview cache, a new data folder) and restart, end to end and by phase."""
    results = {"first start": [], "restart": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as temporary:
            data_dir, cache = Path(temporary) / "data", Path(temporary) / "cache"
            results["first start"].append(end_to_end(data_dir, cache, args.timeout, app_root))
            results["restart"].append(end_to_end(data_dir, cache, args.timeout, app_root))
    print("\n| app.py --preview | launch to first page, s: median (runs) |\n|---|---|")
    for kind, runs in results.items():
        pages = sorted(r["page_s"] for r in runs)
        print(f"| {kind} | {pages[len(pages) // 2]:.2f} ({', '.join(f'{p:.1f}' for p in pages)}) |")

    with tempfile.TemporaryDirectory() as temporary:
        data_dir, cache = Path(temporary) / "data", Path(temporary) / "cache"
        print_phases("phases, first start", phases(data_dir, cache, args.timeout, app_root))
        print_phases("phases, restart", phases(data_dir, cache, args.timeout, app_root))


if __name__ == "__main__":
    main()
