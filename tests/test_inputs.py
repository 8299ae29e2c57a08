"""Bad or unusual subject input: handled correctly, or a clear ValueError naming the problem."""

import numpy as np
import pytest
import torch
from PIL import Image

from anystory import SubjectEncoding
from anystory.encoder import prepare_subject

from .conftest import GEN, make_subject_image, seeded

pytestmark = pytest.mark.hostile  # every test here is a bad or unusual input


def test_more_subjects_than_the_maximum(pipe, subjects):
    limit = pipe.anystory_config.max_subjects
    with pytest.raises(ValueError, match=f"at most {limit}"):
        pipe("x", subjects=[subjects[0]] * (limit + 1), **GEN)


def test_empty_mask(pipe):
    image = make_subject_image(0, alpha=False)
    with pytest.raises(ValueError, match="mask is empty"):
        pipe.encode_subject(image, mask=np.zeros((image.height, image.width)))


def test_fully_transparent_alpha(pipe):
    image = make_subject_image(0, alpha=True)
    image.putalpha(0)
    with pytest.raises(ValueError, match="alpha channel is empty"):
        pipe.encode_subject(image)


def test_mask_of_another_size(pipe):
    image = make_subject_image(0, alpha=False)
    with pytest.raises(ValueError, match="must be the same size"):
        pipe.encode_subject(image, mask=Image.new("L", (image.width + 1, image.height), 255))


def test_not_an_image(pipe):
    with pytest.raises(ValueError, match="PIL image"):
        pipe.encode_subject(np.zeros((8, 8, 3)))


def test_mask_argument_wins_over_alpha():
    image = make_subject_image(0, alpha=True)  # ellipse in the middle
    corner = np.zeros((image.height, image.width), np.float32)
    corner[:10, :10] = 1
    prepared = prepare_subject(image, corner, reference_size=64)
    # The crop is the square around the 10x10 corner, so the mask fills most of it.
    assert prepared.mask.mean() > 0.8


def test_whole_image_when_no_mask_and_no_alpha():
    prepared = prepare_subject(make_subject_image(0, alpha=False), None, reference_size=64)
    assert prepared.mask.min() == 0  # the ~4% margin around the square crop is outside
    assert prepared.mask[14:50, 6:58].min() == 1  # a 72x56 image centred in its square crop


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "CMYK", "P", "1", "I;16", "F"])
def test_non_rgb_modes_encode(pipe, mode):
    base = make_subject_image(5, alpha=False)
    if mode == "I;16":
        # A 16-bit grey image spanning the full range must not clip to white.
        ramp = np.tile(np.linspace(0, 65535, base.width, dtype=np.uint16), (base.height, 1))
        image = Image.fromarray(ramp)
        assert image.mode == "I;16"
        prepared = prepare_subject(image, None, reference_size=64)
        values = np.asarray(prepared.reference_image.convert("L"), dtype=np.float32)
        assert 60 < values.mean() < 195
    elif mode == "F":
        image = Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255.0, "F")
    else:
        image = base.convert(mode)
    encoding = pipe.encode_subject(image)
    assert torch.isfinite(encoding.clip_tokens).all()
    assert all(torch.isfinite(k).all() for k in encoding.reference_keys if k is not None)


def test_one_pixel_image(pipe):
    encoding = pipe.encode_subject(Image.new("RGB", (1, 1), (200, 30, 30)))
    assert encoding.reference_mask.min() > 0.5


def test_layout_needs_one_mask_per_subject(pipe, subjects):
    with pytest.raises(ValueError, match="one box or mask per subject"):
        pipe("x", subjects=subjects[:2], router="layout", layout=[np.ones((8, 8))], **GEN)


def test_unknown_router(pipe, subjects):
    with pytest.raises(ValueError, match="unknown router"):
        pipe("x", subjects=subjects[:1], router="magic", **GEN)


def test_encoding_from_other_weights_is_refused(pipe, subjects):
    stale = SubjectEncoding(**{**subjects[0].__dict__, "encoder_id": "other-weights"})
    with pytest.raises(ValueError, match="encoded by other weights"):
        pipe("x", subjects=[stale], **GEN)


def test_truncated_or_foreign_encoding_file(tmp_path, subjects):
    path = subjects[0].save(tmp_path / "s.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable SubjectEncoding"):
        SubjectEncoding.load(tmp_path / "cut.safetensors")
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04\x95junk")
    with pytest.raises(ValueError, match="not a readable SubjectEncoding"):
        SubjectEncoding.load(tmp_path / "pickle.safetensors")


@pytest.mark.slow
def test_subject_scale_zero_removes_the_subject(pipe, subjects):
    """Strength 0 for subject 1 equals generating with subject 1's positions left to nobody's reference."""
    a = pipe("x", subjects=subjects[:2], router="none", subject_scales=[1.0, 0.0], generator=seeded(), **GEN)
    b = pipe("x", subjects=subjects[:1], router="none", generator=seeded(), **GEN)
    assert np.abs(a.images - b.images).max() <= 1e-5
