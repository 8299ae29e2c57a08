"""A model that loads in a background thread, so that the app serves its page first.

    loading = ModelLoading(lambda: load_pipeline(data_dir, preview=True), default_router="prompt")
    loading.start()
    studio = Studio(data_dir, loading, preview=True)   # studio.pipeline waits for it
    loading.then(lambda pipeline: print("loaded"))

Imports nothing heavy: it only runs the function it is given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class ModelNotLoaded(RuntimeError):
    """The model failed to load (the message says why), or is still loading after a timeout."""


class ModelLoading:
    """One call of `load()` in a daemon thread; `get()` waits for its result.

    default_router: the router the model will default to, when known before it is loaded (the
    UI builds the panel form from it while the model loads).
    """

    def __init__(self, load: Callable[[], Any], *, default_router: str | None = None, name: str = "the model"):
        self._load = load
        self.default_router = default_router
        self.name = name
        self._done = threading.Event()
        self._settled = threading.Event()  # done, and the callbacks waiting for it have run
        self._value: Any = None
        self._error: BaseException | None = None
        self._after: list[tuple[Callable[[Any], None], Callable[[BaseException], None] | None]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def loaded(cls, value: Any) -> ModelLoading:
        """An already loaded model (a pipeline passed directly)."""
        loading = cls(lambda: value)
        loading._value = value
        loading._done.set()
        loading._settled.set()
        return loading

    def start(self) -> ModelLoading:
        with self._lock:
            if self._thread is None and not self._done.is_set():
                self._thread = threading.Thread(target=self._run, name="model-loading", daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._value = self._load()
        except BaseException as err:  # kept and raised to every caller of get(): the thread must not die silently
            self._error = err
        with self._lock:
            self._done.set()
            after, self._after = self._after, []
        try:
            for on_loaded, on_error in after:
                self._call(on_loaded, on_error)
        finally:
            self._settled.set()

    def _call(self, on_loaded, on_error) -> None:
        if self._error is None:
            on_loaded(self._value)
        elif on_error is not None:
            on_error(self._error)

    def then(
        self, on_loaded: Callable[[Any], None], on_error: Callable[[BaseException], None] | None = None
    ) -> None:
        """Call `on_loaded(model)` once it has loaded, or `on_error(error)` when the load failed
        (in the loading thread; now when the load has ended already)."""
        with self._lock:
            if not self._done.is_set():
                self._after.append((on_loaded, on_error))
                return
        self._call(on_loaded, on_error)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def settled(self) -> bool:
        """Done, and what `then` asked to run after it (e.g. encoding the example cast) has run:
        what a page that waits for the model should wait for."""
        return self._settled.is_set()

    @property
    def ready(self) -> bool:
        return self._done.is_set() and self._error is None

    @property
    def error(self) -> BaseException | None:
        return self._error if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the load to end (loaded or failed) and its callbacks
        to run; whether they have."""
        return self._settled.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The loaded model, waiting up to `timeout` seconds (None: as long as it takes)."""
        if self._thread is None and not self._done.is_set():
            self.start()
        if not self._done.wait(timeout):
            raise ModelNotLoaded(f"{self.name} is still loading")
        if self._error is not None:
            raise ModelNotLoaded(f"{self.name} failed to load: {self._error}") from self._error
        return self._value


__all__ = ["ModelLoading", "ModelNotLoaded"]
