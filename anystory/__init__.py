"""AnyStory on SDXL: encode each subject once, route it to its place, inject it there.

The model classes import torch and diffusers; they load on first use, so that the storage
modules (`anystory.storage`, `.library`, `.story`) import without them.
"""

from importlib import import_module

_EXPORTS = {
    "AnyStoryConfig": ".pipeline",
    "AnyStoryPipeline": ".pipeline",
    "AnyStoryPipelineOutput": ".pipeline",
    "ReferenceNet": ".encoder",
    "SubjectEncoder": ".encoder",
    "SubjectEncoding": ".encoding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
