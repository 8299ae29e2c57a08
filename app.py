"""AnyStory Studio: command line -> one Studio -> the Gradio UI -> launch.

    python app.py --preview            # tiny offline model, for trying the app and its tests
    python app.py                      # SDXL base in public-weights mode (downloads on first run)
    python app.py --model path/to/RealVisXL_V4.0.safetensors --adapter models/my-anystory --offload

Listens on 127.0.0.1:7860 unless told otherwise; a public link only with --share.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

try:  # Hugging Face ZeroGPU: `spaces` must be imported before torch touches CUDA.
    import spaces  # type: ignore[import-not-found]  # noqa: F401
except ImportError:
    pass

DEFAULT_DATA_DIR = "./data"
LIMIT_NAMES = (
    "max_characters",
    "max_stories",
    "max_panels",
    "max_versions",
    "max_bytes",
    "max_side",
    "max_steps",
    "job_budget",
    "job_seconds",
    "max_queue",
    "expiry_days",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="AnyStory Studio: draw the same characters across a story.")
    parser.add_argument(
        "--preview",
        action="store_true",
        help="use the tiny offline random model (no download, no GPU; images are not meaningful)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("ANYSTORY_DATA", DEFAULT_DATA_DIR),
        help="folder for the cast, stories, versions and exports (default: $ANYSTORY_DATA or ./data)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),  # Hugging Face Spaces sets 0.0.0.0 there
        help="address to listen on (default 127.0.0.1, or $GRADIO_SERVER_NAME)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument(
        "--model",
        default=None,
        help="SDXL base: a hub id, a diffusers folder or one .safetensors file "
        "(default stabilityai/stable-diffusion-xl-base-1.0)",
    )
    parser.add_argument(
        "--adapter", default=None, help="an AnyStory checkpoint folder (default: public IP-Adapter weights)"
    )
    parser.add_argument(
        "--offload", action="store_true", help="move model parts to the GPU only while used (less memory)"
    )
    parser.add_argument(
        "--dino", default=None, metavar="MODEL",
        help="also score consistency with a DINOv2 model (hub id or folder, e.g. facebook/dinov2-base)",
    )
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (off unless asked)")
    parser.add_argument(
        "--mcp",
        action="store_true",
        help="also serve the app as an MCP server for LLM agents, at /gradio_api/mcp/ (needs: pip install mcp)",
    )
    parser.add_argument(
        "--workspaces",
        action="store_true",
        default=bool(os.environ.get("SPACE_ID")),  # on a Hugging Face Space: strangers share the app
        help="give every browser (and API client) its own private workspace, with hosting limits "
        "(on by default when $SPACE_ID is set)",
    )
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change one limit, e.g. --limit max_characters=50 --limit expiry_days=14 (none: no limit); "
        "names: " + ", ".join(LIMIT_NAMES),
    )
    args = parser.parse_args(argv)
    try:
        args.limits = parse_limits(args.limit, hosted=args.workspaces)
    except ValueError as err:
        parser.error(str(err))
    return args


def mcp_available() -> bool:
    """Whether the MCP SDK that Gradio's MCP server needs is installed."""
    import importlib.util

    return importlib.util.find_spec("mcp") is not None


def parse_limits(items: list[str], *, hosted: bool):
    """`Limits` for the command line: the hosted defaults with --workspaces, else the local ones,
    changed by NAME=VALUE items."""
    from anystory.limits import Limits

    changes = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in LIMIT_NAMES or not value.strip():
            raise ValueError(f"--limit {item!r}: use NAME=VALUE with NAME one of {', '.join(LIMIT_NAMES)}")
        value = value.strip().lower()
        if value == "none":
            if name in ("max_side", "max_steps", "job_budget"):
                raise ValueError(f"--limit {name} needs a number (it has no 'none')")
            changes[name] = None
            continue
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--limit {item!r}: {value!r} is not a number") from None
        if number < 0:
            raise ValueError(f"--limit {item!r}: a limit cannot be negative")
        changes[name] = number if name in ("job_seconds", "expiry_days") else int(number)
    return Limits.hosted(**changes) if hosted else Limits.local(**changes)


def open_studio(args: argparse.Namespace):
    """What the UI is built around: one Studio on this data folder, or, with --workspaces, a
    private workspace per visitor, all on one pipeline."""
    from anystory.studio import Studio, load_dino, load_pipeline

    model = dict(preview=True) if args.preview else dict(model=args.model, offload=args.offload)
    dino = getattr(args, "dino", None)
    if not args.workspaces:
        return Studio.open(args.data_dir, adapter=args.adapter, limits=args.limits, dino=dino, **model)
    from anystory.workspaces import Workspaces
    from ui.session import WorkspaceSessions

    pipeline = load_pipeline(args.data_dir, adapter=args.adapter, **model)
    workspaces = Workspaces(args.data_dir, pipeline, preview=args.preview, limits=args.limits)
    workspaces.dino = load_dino(dino, pipeline)
    return WorkspaceSessions(workspaces, login=bool(os.environ.get("OAUTH_CLIENT_ID")))


def quiet_libraries(*, model_libraries: bool = True) -> None:
    """One clear line per problem and nothing else: the libraries' progress bars and advice a user
    cannot act on (optional torchvision, dtype notes, hub retries) stay out of the terminal.
    model_libraries=False leaves diffusers and transformers unimported (`quiet_model_libraries`
    does their part when the model loads)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import logging

    for name in ("diffusers", "transformers", "huggingface_hub", "accelerate", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if model_libraries:
        quiet_model_libraries()


def quiet_model_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def loads_in_background(args: argparse.Namespace) -> bool:
    """Preview mode serves its page first and loads the tiny model afterwards (a cold start within
    seconds); a real model loads before the page, so that a bad path stops the app with a message."""
    return bool(args.preview and not args.workspaces)


def open_preview_studio(args: argparse.Namespace):
    """The Studio of a preview start, its model not loaded yet: `start_preview_model` loads it."""
    from anystory.model_loading import ModelLoading
    from anystory.studio import Studio, load_pipeline

    def load():
        quiet_model_libraries()
        return load_pipeline(args.data_dir, preview=True, adapter=args.adapter)

    # Public-weights mode (no --adapter) has no learned router: new panels use the prompt router.
    loading = ModelLoading(load, default_router=None if args.adapter else "prompt", name="the preview model")
    return Studio(args.data_dir, loading, preview=True, limits=args.limits)


def start_preview_model(studio, args: argparse.Namespace) -> None:
    """Load the preview model in the background; then the --dino scorer and, in an empty data
    folder, the example cast (it needs the model to be encoded)."""
    from anystory.studio import load_dino

    def loaded(pipeline) -> None:
        try:
            studio.dino = load_dino(getattr(args, "dino", None), pipeline)
            if not studio.character_names() and not studio.stories():
                added = studio.add_example_cast()
                print(f"preview mode: added the example cast ({', '.join(added)})", flush=True)
        except Exception as err:  # the app keeps serving; the page shows the characters as they are
            print(f"error: the example cast could not be added: {err}", file=sys.stderr, flush=True)

    def failed(error: BaseException) -> None:
        print(f"error: the model could not be loaded: {error}", file=sys.stderr, flush=True)

    studio.model_loading.then(loaded, failed)
    studio.model_loading.start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    background = loads_in_background(args)
    quiet_libraries(model_libraries=not background)
    if background:
        return serve(args, open_preview_studio(args))
    from anystory.weights import CheckpointError, ModelLoadError

    try:
        studio = open_studio(args)
    except (ModelLoadError, CheckpointError, OSError, ValueError) as err:  # diffusers raises ValueError for bad paths
        print(f"error: the model could not be loaded: {err}", file=sys.stderr)
        if "--preview" not in str(err):
            print("hint: run `python app.py --preview` to try the app with the tiny offline model.", file=sys.stderr)
        return 2

    return serve(args, studio)  # (a preview without workspaces loads in the background: start_preview_model)


def serve(args: argparse.Namespace, studio) -> int:
    """Build the UI around the Studio and serve it until Ctrl+C; a preview Studio's model starts
    loading once the page is served."""
    from ui import build_app, launch_options

    if args.mcp and not mcp_available():
        print("error: --mcp needs the MCP SDK: pip install 'mcp>=1.21,<2'", file=sys.stderr)
        return 2
    demo = build_app(studio)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=bool(args.share),
        quiet=True,
        prevent_thread_lock=True,
        mcp_server=bool(args.mcp),
        **launch_options(studio),
    )
    print(f"AnyStory Studio is running at {demo.local_url}" + (f" and {demo.share_url}" if demo.share_url else ""))
    print("Press Ctrl+C to stop.", flush=True)
    if loads_in_background(args):
        start_preview_model(studio, args)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
