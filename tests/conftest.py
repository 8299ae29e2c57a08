import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from anystory import AnyStoryPipeline
from anystory.tiny import synthetic_subject as make_subject_image
from anystory.tiny import write_tiny_ip_adapter, write_tiny_sdxl


@pytest.fixture(scope="session", autouse=True)
def preview_cache(tmp_path_factory):
    """The preview model's cache (anystory/preview_model.py) in a temporary folder: tests never
    write to the user's cache; the apps the tests start inherit it."""
    old = os.environ.get("ANYSTORY_PREVIEW_CACHE")
    os.environ["ANYSTORY_PREVIEW_CACHE"] = str(tmp_path_factory.mktemp("preview-cache"))
    yield os.environ["ANYSTORY_PREVIEW_CACHE"]
    if old is None:
        os.environ.pop("ANYSTORY_PREVIEW_CACHE", None)
    else:
        os.environ["ANYSTORY_PREVIEW_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    return write_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def pipe(tiny_folder):
    pipe = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="init", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def public_pipe(tiny_folder, tmp_path_factory):
    """The tiny pipeline in public-weights mode (IP-Adapter Plus layout), as the Studio tests use it."""
    ip_file = write_tiny_ip_adapter(tiny_folder, tmp_path_factory.mktemp("ip") / "ip.safetensors")
    pipe = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter="public", ip_adapter=str(ip_file), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def plain(tiny_folder):
    plain = StableDiffusionXLPipeline.from_pretrained(str(tiny_folder), local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    return plain


@pytest.fixture(scope="session")
def subjects(pipe):
    return [pipe.encode_subject(make_subject_image(seed, alpha=True)) for seed in (1, 2, 3)]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


GEN = dict(num_inference_steps=3, output_type="np")
