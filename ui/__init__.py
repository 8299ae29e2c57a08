"""The Gradio UI of AnyStory Studio: tabs and handlers around one Studio (never torch here)."""

from .app import build_app, launch_options

__all__ = ["build_app", "launch_options"]
