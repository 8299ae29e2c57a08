"""The memory plan (issue 21): its arithmetic on a known config, its trained set against the
trainer's, its meta-device count against the same count on real tensors, and the paper's sizes."""

import pytest

from anystory.training.config import load_config
from anystory.training.plan import GIB, ModelCounts, Plan, PlanSettings, count, full_size_pipeline, memory_rows, table
from anystory.training.synthetic import SyntheticConfig, generate
from anystory.training.trainer import Trainer

pytestmark = [pytest.mark.training, pytest.mark.slow]

KNOWN = ModelCounts(params={"unet": 1}, weight_bytes_wrapped=4_000, weight_bytes_outside=1_000, trained=100,
                    activations=8_000, activations_checkpointed=2_000, encode_peak=1_500)  # fmt: skip


@pytest.mark.parametrize(
    "settings, rows, total",
    [
        # one GPU, fp32, AdamW: weights 5000; grads 100 x 4; moments 100 x 8; activations whole
        (PlanSettings(gpus=1, mixed_precision="no"), (5_000, 400, 800, 8_000), 5_000 + 400 + 800 + 8_000),
        # 4 GPUs, ZeRO-1: moments / 4; bf16 halves activations
        (PlanSettings(gpus=4, sharding="zero1"), (5_000, 400, 200, 4_000), 5_000 + 400 + 200 + 4_000),
        # ZeRO-2, 8-bit Adam (2 bytes), checkpointing: grads and moments / 4
        (PlanSettings(gpus=4, sharding="zero2", adam_8bit=True, gradient_checkpointing=True), (5_000, 100, 50, 1_000),
         5_000 + 100 + 50 + 1_500),  # the encode pass (1500) outweighs the activations (1000)
        # ZeRO-3: the wrapped weights / 4 too; what runs outside stays whole
        (PlanSettings(gpus=4, sharding="zero3", mixed_precision="no"), (1_000 + 1_000, 100, 200, 8_000),
         2_000 + 100 + 200 + 8_000),
    ],
    ids=["one-gpu", "zero1", "zero2-8bit-checkpointing", "zero3"],
)  # fmt: skip
def test_plan_arithmetic(settings, rows, total):
    got = memory_rows(KNOWN, settings)
    assert (got["weights"], got["gradients"], got["optimizer states"], got["activations (one sample)"]) == rows
    assert Plan(settings, KNOWN, got).total == total
    lines = table([Plan(settings, KNOWN, got)] * 2).splitlines()
    assert len(lines) == 4 and lines[2] == lines[3] and f"| {settings.sharding} |" in lines[2]  # a row per plan


def test_plan_settings_are_checked():
    with pytest.raises(ValueError, match="sharding must be one of"):
        PlanSettings(sharding="zero4")
    with pytest.raises(ValueError, match="gpus must be >= 1"):
        PlanSettings(gpus=0)


@pytest.mark.parametrize("stage", [1, 2])
def test_plan_counts_what_the_trainer_trains_and_saves(tiny_folder, tmp_path, stage):
    """On the tiny SDXL: the plan's trained set is the trainer's (its probe step), and the meta
    count of saved activations is the count on real tensors (within the few tensors whose storage
    the meta device cannot tell apart)."""
    data = generate(tmp_path / "scenes", SyntheticConfig(scenes=1, size=64, reference_size=48, seed=3))
    init = "init"
    if stage == 2:
        values = {"base": str(tiny_folder), "data": str(data), "output_dir": str(tmp_path / "s1"), "resolution": 64,
                  "max_steps": 1, "report_to": "none", "progress_bar": False}  # fmt: skip
        init = str(Trainer(load_config(None, 1, values)).run())
    values = {"base": str(tiny_folder), "data": str(data), "output_dir": str(tmp_path / "run"), "resolution": 64,
              "report_to": "none", "progress_bar": False, "init": init}  # fmt: skip
    trainer = Trainer(load_config(None, stage, values))
    trained = sum(p.numel() for p in trainer.trainable.values())

    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from training_memory import pipeline

    settings = PlanSettings(stage=stage, mixed_precision="no", resolution=128, reference_size=64)
    meta = count(pipeline(str(tiny_folder), stage, "meta"), settings)
    real = count(pipeline(str(tiny_folder), stage, "cpu"), settings, device="cpu")
    assert meta.trained == real.trained == trained
    assert meta.params == real.params
    assert abs(meta.activations / real.activations - 1) < 0.02
    assert meta.activations_checkpointed < meta.activations


def test_full_size_parts_have_the_papers_sizes():
    counts = count(full_size_pipeline(1), PlanSettings(stage=1))
    b = {k: round(v / 1e9, 2) for k, v in counts.params.items()}
    assert (b["unet"], b["reference_net"], b["image_encoder"]) == (
        2.57,
        2.02,
        0.63,
    )  # the paper's 2.57 B, 2.02 B; ViT-H
    assert (
        2.0e9
        < counts.trained
        < counts.params["reference_net"] + counts.params["anystory_attention"] + counts.params["subject_encoder"]
    )
    assert counts.activations_checkpointed < counts.activations / 3
    assert 1 < counts.activations / GIB < 100
