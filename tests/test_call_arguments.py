"""Keyword arguments the pipeline does not use are refused by name, never passed on to diffusers'
`**kwargs` (where they would be dropped without a word)."""

import numpy as np
import pytest

from anystory.pipeline import SDXL_CALL_ARGUMENTS, check_call_arguments

from .conftest import GEN, seeded

PROMPT = "a girl in a park"


def test_unknown_arguments_are_named(pipe, subjects):
    with pytest.raises(TypeError, match=r"'num_inferance_steps' \(did you mean 'num_inference_steps'\?\)"):
        pipe(PROMPT, num_inferance_steps=2, output_type="np")
    with pytest.raises(TypeError, match=r"'bogus'.*'other'"):
        pipe(PROMPT, subjects=subjects[:1], bogus=1, other=2, **GEN)


def test_check_call_arguments_passes_known_names():
    check_call_arguments({"num_inference_steps": 2, "guidance_scale": 3.0}, SDXL_CALL_ARGUMENTS)
    assert "callback_on_step_end" in SDXL_CALL_ARGUMENTS and "kwargs" not in SDXL_CALL_ARGUMENTS


def test_a_refused_call_leaves_the_pipeline_usable(pipe, plain):
    with pytest.raises(TypeError):
        pipe(PROMPT, strength=0.5, **GEN)
    ours = pipe(PROMPT, generator=seeded(), **GEN).images
    assert np.array_equal(ours, plain(PROMPT, generator=seeded(), **GEN).images)
