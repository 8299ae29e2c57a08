import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from anystory import AnyStoryPipeline
from anystory.tiny import write_tiny_sdxl


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return write_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def pipe(tiny_folder):
    pipe = AnyStoryPipeline.from_pretrained(str(tiny_folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def plain(tiny_folder):
    plain = StableDiffusionXLPipeline.from_pretrained(str(tiny_folder), local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    return plain


def make_subject_image(seed: int, size=(72, 56), alpha: bool = False) -> Image.Image:
    """A random textured picture with an elliptical subject in it (alpha marks the subject)."""
    rng = np.random.RandomState(seed)
    w, h = size
    pixels = (rng.rand(h, w, 3) * 255).astype(np.uint8)
    if not alpha:
        return Image.fromarray(pixels, "RGB")
    yy, xx = np.mgrid[:h, :w]
    inside = ((yy - h / 2) / (h * 0.4)) ** 2 + ((xx - w / 2) / (w * 0.35)) ** 2 <= 1
    return Image.fromarray(np.dstack([pixels, inside.astype(np.uint8) * 255]), "RGBA")


@pytest.fixture(scope="session")
def subjects(pipe):
    return [pipe.encode_subject(make_subject_image(seed, alpha=True)) for seed in (1, 2, 3)]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


GEN = dict(num_inference_steps=3, output_type="np")
