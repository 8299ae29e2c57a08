"""Small helpers shared by the tabs: user-facing error messages, cancel events, GPU wrapper.

Every handler runs through `shows_errors` (UI) or `api_errors` (named API endpoints), so a
refused input or a failed generation reaches the user as one clear sentence — a warning toast
plus an error line in the tab, or a `gr.Error` for API clients — never as a stack trace.
"""

from __future__ import annotations

import functools
import html
import logging
import threading
from collections.abc import Callable
from typing import Any

import gradio as gr

log = logging.getLogger("anystory.ui")

# Events that call the model: all enter at once and wait in line in the Studio's model slot
# (anystory/model_slot.py), which shows each its place, lets it cancel, and refuses past the limit.
MODEL: dict[str, Any] = {"concurrency_id": "model", "concurrency_limit": None}

# What a user can cause: refused pictures (ImageInputError), refused actions (StudioError,
# CharacterInUse, GenerationCancelled), bad settings (ValueError), a full disk (DiskFull),
# unknown ids or names (CharacterNotFound, KeyError), wrong types from API callers (TypeError).
USER_ERRORS = (ValueError, KeyError, TypeError)


def error_message(err: BaseException) -> str:
    """The sentence to show for an exception (KeyError's message without its quotes)."""
    if isinstance(err, gr.Error):
        return str(err.message)
    if isinstance(err, KeyError) and err.args and type(err).__str__ is KeyError.__str__:
        return str(err.args[0])
    text = str(err).strip()
    if not isinstance(err, USER_ERRORS):
        log.exception("unexpected error in a UI handler")
        return (
            f"unexpected error ({type(err).__name__}): {text}" if text else f"unexpected error ({type(err).__name__})"
        )
    return text or type(err).__name__


def error_markdown(message: str) -> str:
    return f"**⚠ Error:** {escape(message)}"


def escape(text: str) -> str:
    """Text shown inside Markdown: HTML-escaped, and [ ] * _ ` kept literal."""
    text = html.escape(str(text), quote=False)
    for char in "\\`*_[]":
        text = text.replace(char, "\\" + char)
    return text


def notes_markdown(notes: list[str], done: str = "") -> str:
    """A short status: what was done, then the Studio's notes for the user."""
    lines = [f"✓ {escape(done)}"] if done else []
    lines += [f"Note: {escape(note)}" for note in notes]
    return "\n\n".join(lines)


def shows_errors(status: gr.components.Component) -> Callable:
    """Decorate a UI handler that returns {component: value}: on an error, warn and show the
    message in `status`, leaving every other output as it was."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - every error becomes a message
                message = error_message(err)
                gr.Warning(html.escape(message))
                return {status: error_markdown(message)}

        return wrapper

    return decorate


def api_errors(handler: Callable) -> Callable:
    """Decorate a named API endpoint: errors reach the client as gr.Error with the message."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:  # noqa: BLE001
            raise gr.Error(error_message(err), print_exception=False) from err

    return wrapper


def session_key(request: gr.Request | None) -> str:
    """The caller's browser session or API client ("api" for a direct Python call)."""
    return getattr(request, "session_hash", None) or "api"


class CancelEvents:
    """One threading.Event per browser session (or API caller): Cancel stops only your own run."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, request: gr.Request | None) -> threading.Event:
        """A fresh (unset) event for a generation that starts now."""
        with self._lock:
            event = self._events[session_key(request)] = threading.Event()
            return event

    def finish(self, request: gr.Request | None) -> None:
        """The run ended: a later Cancel has nothing to stop."""
        with self._lock:
            self._events.pop(session_key(request), None)

    def cancel(self, request: gr.Request | None) -> bool:
        """Stop this session's running generation; False when none runs."""
        with self._lock:
            event = self._events.get(session_key(request))
        if event is None:
            return False
        event.set()
        return True


def on_zero_gpu() -> bool:
    """Whether the app runs on Hugging Face ZeroGPU (the `spaces` package, on a ZeroGPU Space)."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return False
    return bool(getattr(getattr(spaces, "config", None), "Config", None) and spaces.config.Config.zero_gpu)


def gpu(handler: Callable | None = None, *, duration: Callable[..., float] | float | None = None) -> Callable:
    """`spaces.GPU` (ZeroGPU on Hugging Face Spaces) when the package is there, with an optional
    duration (seconds, or a function of the handler's arguments); unchanged otherwise."""
    if handler is None:
        return functools.partial(gpu, duration=duration)
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return handler
    return spaces.GPU(handler, duration=duration) if duration is not None else spaces.GPU(handler)


def progress_reporter(progress: gr.Progress | None) -> Callable[[float, str], None] | None:
    """The Studio's progress(fraction, text) callback, drawn by a gr.Progress bar."""
    if progress is None:
        return None
    return lambda fraction, text: progress(fraction, desc=text)
