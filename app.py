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
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link (off unless asked)")
    return parser.parse_args(argv)


def open_studio(args: argparse.Namespace):
    """The Studio for these arguments: the tiny offline model with --preview, else the real one."""
    from anystory.studio import Studio

    if args.preview:
        return Studio.open(args.data_dir, preview=True, adapter=args.adapter)
    return Studio.open(args.data_dir, model=args.model, adapter=args.adapter, offload=args.offload)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from anystory.weights import CheckpointError, ModelLoadError

    try:
        studio = open_studio(args)
    except (ModelLoadError, CheckpointError, OSError, ValueError) as err:  # diffusers raises ValueError for bad paths
        print(f"error: the model could not be loaded: {err}", file=sys.stderr)
        print("hint: run `python app.py --preview` to try the app with the tiny offline model.", file=sys.stderr)
        return 2

    from ui import build_app, launch_options

    if studio.preview and not studio.character_names() and not studio.stories():
        added = studio.add_example_cast()
        print(f"preview mode: added the example cast ({', '.join(added)})")

    demo = build_app(studio)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=bool(args.share),
        **launch_options(studio),
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
