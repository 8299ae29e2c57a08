"""AnyStory on SDXL: encode each subject once, route it to its place, inject it there."""

from .encoder import ReferenceNet, SubjectEncoder
from .encoding import SubjectEncoding
from .pipeline import AnyStoryConfig, AnyStoryPipeline, AnyStoryPipelineOutput

__all__ = [
    "AnyStoryConfig",
    "AnyStoryPipeline",
    "AnyStoryPipelineOutput",
    "ReferenceNet",
    "SubjectEncoder",
    "SubjectEncoding",
]
