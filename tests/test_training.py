"""Training (issue 6): data format and its errors, both stages on the tiny SDXL, checkpoints, resume,
gradient checkpointing, evaluation mechanics. A few steps each, at 64 px."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from anystory import AnyStoryPipeline
from anystory.training.config import load_config
from anystory.training.data import (
    AugmentConfig,
    DatasetError,
    ManifestDataset,
    StreamBatchSampler,
    augment_reference,
    read_manifest,
)
from anystory.training.evaluate import diffusion_loss, routing_iou, subject_ious
from anystory.training.step import stage_parameters
from anystory.training.synthetic import SyntheticConfig, generate
from anystory.training.trainer import Trainer, checkpoints
from anystory.weights import adapter_state_dict

pytestmark = [pytest.mark.training, pytest.mark.slow]

RESOLUTION = 64


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Paired two-subject scenes (separate references) in the dataset format."""
    return generate(tmp_path_factory.mktemp("data") / "scenes", SyntheticConfig(scenes=6, size=RESOLUTION, reference_size=48, seed=3))


def config(tiny_folder, data, out, stage=1, **extra):
    values = {
        "base": str(tiny_folder), "data": str(data), "output_dir": str(out), "stage": stage,
        "resolution": RESOLUTION, "max_steps": 2, "learning_rate": 1e-3, "checkpoint_every": 100,
        "log_every": 1, "report_to": "none", "progress_bar": False, **extra,
    }  # fmt: skip
    return load_config(None, stage, values)


@pytest.fixture(scope="module")
def stage1_checkpoint(tiny_folder, scenes, tmp_path_factory):
    trainer = Trainer(config(tiny_folder, scenes, tmp_path_factory.mktemp("s1") / "run", max_steps=1))
    return trainer.run()


def snapshot(pipe) -> dict[str, torch.Tensor]:
    """Every tensor of every model of the pipeline (the UNet holds the AnyStory processors)."""
    state = {}
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            state.update({f"{name}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    return state


def changed_keys(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


# -- data format ---------------------------------------------------------------------------------


def test_synthetic_scenes_are_a_valid_dataset(scenes):
    rows = read_manifest(scenes, check="full")
    assert len(rows) == 6
    for row in rows:
        assert len(row.instances) == 2 and row.caption
        masks = [np.asarray(Image.open(i.mask)) >= 128 for i in row.instances]
        assert all(m.any() for m in masks) and not (masks[0] & masks[1]).any()  # visible masks
        assert all(ref.image.is_file() and ref.mask.is_file() and ref.image != row.image for i in row.instances for ref in i.references)
    again = generate(scenes.parent / "again", SyntheticConfig(scenes=6, size=RESOLUTION, reference_size=48, seed=3))
    assert (again / "manifest.jsonl").read_text() == (scenes / "manifest.jsonl").read_text()
    assert (Image.open(again / rows[0].image.relative_to(scenes)).tobytes() == Image.open(rows[0].image).tobytes())


def test_synthetic_shapes_option(tmp_path):
    from anystory.training.synthetic import COMPACT_SHAPES, identity

    folder = generate(tmp_path / "compact", SyntheticConfig(scenes=3, size=RESOLUTION, shapes=COMPACT_SHAPES, seed=1))
    used = {identity(i.get("subject"), COMPACT_SHAPES).shape for line in (folder / "manifest.jsonl").read_text().splitlines()
            for i in json.loads(line)["instances"]}  # fmt: skip
    assert used <= set(COMPACT_SHAPES)
    with pytest.raises(ValueError, match="shapes must be some of"):
        generate(tmp_path / "bad", SyntheticConfig(scenes=1, shapes=("blob",)))


def _copy_with_row(scenes, tmp_path, edit) -> tuple:
    folder = shutil.copytree(scenes, tmp_path / "copy")
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    edit(row, folder)
    lines[2] = json.dumps(row)
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder, row["id"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda row, folder: row["instances"][1].update(mask="masks/nowhere.png"), r"instances\[1\]\.mask: file not found"),
        (lambda row, folder: row["instances"][0]["references"][0].update(image="gone.png"), r"references\[0\]\.image: file not found"),
        (lambda row, folder: Image.new("L", (RESOLUTION + 3, RESOLUTION), 255).save(folder / row["instances"][0]["mask"]),
         r"instances\[0\]\.mask is 67x64 but the image is 64x64"),
        (lambda row, folder: row.update(instances=[]), "the image has no instances"),
        (lambda row, folder: row.pop("image"), "the row has no 'image'"),
    ],
    ids=["missing-mask", "missing-reference", "mask-size", "no-instances", "no-image"],
)  # fmt: skip
@pytest.mark.hostile
def test_bad_rows_name_the_row(scenes, tmp_path, edit, message):
    folder, row_id = _copy_with_row(scenes, tmp_path, edit)
    with pytest.raises(DatasetError, match=message) as info:
        read_manifest(folder)
    assert "manifest.jsonl:3" in str(info.value) and repr(row_id) in str(info.value)


@pytest.mark.hostile
def test_empty_instance_mask_names_the_row(scenes, tmp_path, pipe):
    folder, row_id = _copy_with_row(scenes, tmp_path, lambda row, folder: Image.new("L", (RESOLUTION, RESOLUTION)).save(folder / row["instances"][1]["mask"]))
    with pytest.raises(DatasetError, match=r"manifest.jsonl:3 .*instances\[1\]\.mask is empty"):
        read_manifest(folder, check="full")
    dataset = ManifestDataset(folder, pipe.feature_extractor, RESOLUTION, 64)  # "files": headers only
    with pytest.raises(DatasetError, match=f"{row_id}.*is empty"):
        dataset[2]


@pytest.mark.hostile
def test_empty_dataset_and_bad_json(scenes, tmp_path):
    folder = shutil.copytree(scenes, tmp_path / "copy")
    (folder / "manifest.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="the dataset is empty"):
        read_manifest(folder)
    (folder / "manifest.jsonl").write_text('{"image": "x.png", "instances": [\n')
    with pytest.raises(DatasetError, match="manifest.jsonl:1: not valid JSON"):
        read_manifest(folder)
    with pytest.raises(DatasetError, match="no manifest"):
        read_manifest(tmp_path)


def test_self_references_and_too_many_instances(scenes, tmp_path):
    folder, _ = _copy_with_row(scenes, tmp_path, lambda row, folder: [i.pop("references") for i in row["instances"]])
    row = read_manifest(folder)[2]
    assert all(i.references[0].image == row.image and i.references[0].mask == i.mask for i in row.instances)
    with pytest.raises(DatasetError, match="2 instances; the model takes at most 1"):
        read_manifest(folder, max_instances=1)


def test_samples_and_augmentation(scenes, pipe):
    dataset = ManifestDataset(scenes, pipe.feature_extractor, RESOLUTION, 64, augment=AugmentConfig(clip_drop=0.5))
    sample = dataset[(0, 11)]
    assert sample["pixels"].shape == (3, RESOLUTION, RESOLUTION) and sample["masks"].shape == (2, RESOLUTION, RESOLUTION)
    assert sample["clip_pixels"].shape == (2, 3, 32, 32) and sample["reference_pixels"].shape == (2, 3, 64, 64)
    assert set(sample["masks"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(dataset[(0, 11)]["reference_pixels"], sample["reference_pixels"])  # same draw, same sample
    assert not torch.equal(dataset[(0, 12)]["reference_pixels"], sample["reference_pixels"])
    assert torch.equal(dataset[(0, 12)]["pixels"], sample["pixels"])  # targets are never augmented
    drops = [dataset[(0, seed)]["drop_clip"] for seed in range(40)]
    assert 0 < sum(drops) < 40

    import random

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1
    every = AugmentConfig(rotation_prob=1, crop_prob=1, pad_prob=1)
    out, out_mask = augment_reference(image, mask, random.Random(0), every)
    assert out.size == (64, 64) and out_mask.shape == (64, 64)
    assert 0 < (out_mask >= 0.5).sum() < 64 * 64 and not np.array_equal(out_mask, mask)


def test_stream_sampler_resumes_and_shards():
    full = StreamBatchSampler(5, 2, seed=1)
    batches = [b for _, b in zip(range(6), full)]
    assert [b for _, b in zip(range(3), StreamBatchSampler(5, 2, seed=1, start=6))] == batches[3:]  # start: in samples
    rows = [r for b in batches[:5] for r, _ in b]
    assert sorted(rows[:5]) == list(range(5)) and sorted(rows[5:10]) == list(range(5))  # epochs are permutations
    ranks = [[b for _, b in zip(range(2), StreamBatchSampler(5, 2, seed=1, rank=r, world=2))] for r in (0, 1)]
    assert ranks[0] == batches[0:4:2] and ranks[1] == batches[1:4:2]


@pytest.mark.hostile
def test_config_errors(tiny_folder, scenes, tmp_path):
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rat'\]"):
        config(tiny_folder, scenes, tmp_path, learning_rat=1)
    with pytest.raises(ValueError, match="stage 2 starts from a stage-1 checkpoint"):
        config(tiny_folder, scenes, tmp_path, stage=2)
    with pytest.raises(ValueError, match="unknown keys"):
        config(tiny_folder, scenes, tmp_path, augment={"rotate": 1})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"base": "b", "data": "d", "output_dir": "o", "stage": 2, "init": "x"}))
    with pytest.raises(ValueError, match="is a stage-2 config; this command trains stage 1"):
        load_config(path, 1)
    assert load_config(path, 2, {"augment.clip_drop": 0.0}).augment.clip_drop == 0.0


def test_command_line_with_config_file_and_overrides(tiny_folder, scenes, tmp_path, capsys):
    from anystory.training import stage1

    path = tmp_path / "stage1.json"
    path.write_text(json.dumps({"base": str(tiny_folder), "data": str(scenes), "output_dir": "unused", "resolution": RESOLUTION,
                                "report_to": "none", "progress_bar": False}))  # fmt: skip
    stage1.main(["--config", str(path), "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--set", "augment.clip_drop=0.5"])
    assert "checkpoint-1" in capsys.readouterr().out
    state = json.loads((tmp_path / "out/checkpoint-1/trainer_state.json").read_text())
    assert state["step"] == 1 and state["config"]["augment"]["clip_drop"] == 0.5


# -- stage 1 -------------------------------------------------------------------------------------


def test_stage1_trains_exactly_its_parts(tiny_folder, scenes, tmp_path):
    trainer = Trainer(config(tiny_folder, scenes, tmp_path / "run", batch_size=2, gradient_accumulation_steps=2))
    pipe = trainer.pipe
    assert pipe.subject_encoder.routing_qformer is None  # a stage-1 model has no router
    trained = set(trainer.trainable)
    expected = set(stage_parameters(pipe, 1))
    assert trained <= expected
    assert {k for k in expected if not k.startswith("reference_net.")} - trained == {
        "blocks.0.attn1.to_k_ref.weight", "blocks.0.attn1.to_v_ref.weight"}  # block 1 takes no reference
    assert any(k.startswith("reference_net.") for k in trained)
    assert "reference_net.conv_out.weight" not in trained  # after the last attn1: never reached

    batch = trainer.encoder([trainer.dataset[(0, 1)], trainer.dataset[(1, 2)]], torch.Generator().manual_seed(0), (0, 1000))
    losses = trainer.module(batch)
    assert torch.isfinite(losses["loss"]) and "routing" not in losses
    losses["loss"].backward()
    trainer.module.release()
    names = {id(p): k for k, p in trainer.trainable.items()}
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for param in module.parameters():
                assert (param.grad is not None) == (id(param) in names)
    assert all(trainer.trainable[k].grad.abs().sum() > 0 for k in trained if "to_v_ip" in k)
    for param in trainer.trainable.values():
        param.grad = None

    before = snapshot(pipe)
    folder = trainer.run()
    after = snapshot(pipe)
    trained_ids = {id(p) for p in trainer.trainable.values()}
    trained_state_keys = {k for k, v in _state_tensors(pipe).items() if id(v) in trained_ids}
    assert changed_keys(before, after) == trained_state_keys  # all it trains moved, nothing else did

    log = [json.loads(line) for line in (tmp_path / "run/logs/train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)

    loaded = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter=str(folder), local_files_only=True)
    a, b = adapter_state_dict(pipe), adapter_state_dict(loaded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.default_router == "prompt"


def _state_tensors(pipe) -> dict[str, torch.Tensor]:
    """Live state tensors of every model, keyed as in `snapshot`."""
    state = {}
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            state.update({f"{name}.{k}": v for k, v in module.state_dict(keep_vars=True).items()})
    return state


# -- stage 2 -------------------------------------------------------------------------------------


def test_stage2_trains_only_the_router(tiny_folder, scenes, stage1_checkpoint, tmp_path):
    trainer = Trainer(config(tiny_folder, scenes, tmp_path / "run", stage=2, init=str(stage1_checkpoint)))
    pipe = trainer.pipe
    stage1 = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter=str(stage1_checkpoint), local_files_only=True)
    carried = adapter_state_dict(stage1)
    now = adapter_state_dict(pipe)
    assert all(torch.equal(carried[k], now[k]) for k in carried)  # the encoder is stage 1's
    assert set(trainer.trainable) == set(stage_parameters(pipe, 2))
    assert all(".router." in k or "routing_qformer" in k for k in trainer.trainable)

    batch = trainer.encoder([trainer.dataset[(0, 1)]], torch.Generator().manual_seed(0), (0, 1000))
    losses = trainer.module(batch)
    assert set(losses) == {"loss", "diffusion", "routing"} and all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    trainer.module.release()
    for key, param in trainer.trainable.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, key
        param.grad = None

    before = snapshot(pipe)
    folder = trainer.run()
    changed = changed_keys(before, snapshot(pipe))
    assert changed and all(".router." in k or "routing_qformer" in k for k in changed)

    loaded = AnyStoryPipeline.from_pretrained(str(tiny_folder), adapter=str(folder), local_files_only=True)
    assert loaded.default_router == "learned"
    a, b = adapter_state_dict(pipe), adapter_state_dict(loaded)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.hostile
def test_interrupted_and_resumed_run_ends_in_the_same_state(tiny_folder, scenes, stage1_checkpoint, tmp_path):
    def run(out, **extra):
        return Trainer(config(tiny_folder, scenes, out, stage=2, init=str(stage1_checkpoint), max_steps=4, **extra))

    straight = run(tmp_path / "straight")
    straight.run()
    interrupted = run(tmp_path / "resumed", checkpoint_every=100)
    interrupted.run(callback=lambda step, losses: step == 2)  # as SIGINT would: checkpoint, stop
    assert [p.name for p in checkpoints(tmp_path / "resumed")] == ["checkpoint-2"]
    resumed = run(tmp_path / "resumed", resume="latest")
    assert resumed.step == 2
    resumed.run()
    a, b = adapter_state_dict(straight.pipe), adapter_state_dict(resumed.pipe)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line)["step"] for line in (tmp_path / "resumed/logs/train.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]


@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_folder, scenes, stage1_checkpoint, tmp_path, stage):
    extra = {"init": str(stage1_checkpoint)} if stage == 2 else {}
    grads = []
    for checkpointing in (False, True):
        trainer = Trainer(config(tiny_folder, scenes, tmp_path / str(checkpointing), stage=stage, gradient_checkpointing=checkpointing, **extra))
        batch = trainer.encoder([trainer.dataset[(0, 1)]], torch.Generator().manual_seed(0), (0, 1000))
        torch.manual_seed(0)  # the same Gumbel noise
        trainer.model(batch)["loss"].backward()
        trainer.module.release()
        grads.append({k: p.grad.clone() for k, p in trainer.trainable.items()})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        assert torch.allclose(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-4), key


# -- evaluation ----------------------------------------------------------------------------------


def test_subject_iou():
    truth = torch.zeros(3, 4, 4)
    truth[0, :, :2], truth[1, :, 2:] = 1, 1
    assert subject_ious(truth, truth) == [1.0, 1.0]
    swapped = truth[[1, 0, 2]]
    assert subject_ious(swapped, truth) == [0.0, 0.0]
    background = torch.zeros(3, 4, 4)
    background[2] = 1
    assert subject_ious(background, truth) == [0.0, 0.0]


def test_routing_iou_runs_on_held_out_scenes(pipe, scenes):
    dataset = ManifestDataset(scenes, pipe.feature_extractor, RESOLUTION, pipe.anystory_config.reference_size)
    report = routing_iou(pipe, dataset, timesteps=(200, 600), max_scenes=2)
    assert report.scenes == 2 and report.timesteps == [200, 600]
    for values in (report.map_iou, report.site_iou, report.latent_iou, report.latent_ceiling):
        assert all(0.0 <= values[t] <= 1.0 for t in (200, 600))
    assert len(report.by_site[200]) == len(pipe.anystory_processors()[1])
    assert report.latent_ceiling[200] > 0.3
    assert "| 200 |" in report.table()


def test_fixed_noise_diffusion_loss_compares_checkpoints(tiny_folder, scenes, tmp_path):
    """The proof's stage-1 figure: the same number for the same weights, no change to them, and a
    different number once training has moved them."""
    trainer = Trainer(config(tiny_folder, scenes, tmp_path / "run", max_steps=3))
    dataset = ManifestDataset(scenes, trainer.pipe.feature_extractor, RESOLUTION, trainer.pipe.anystory_config.reference_size)
    before = snapshot(trainer.pipe)
    first = diffusion_loss(trainer.pipe, dataset, 1, timesteps=(200, 600), max_scenes=2)
    assert np.isfinite(first) and first == diffusion_loss(trainer.pipe, dataset, 1, timesteps=(200, 600), max_scenes=2)
    assert not changed_keys(before, snapshot(trainer.pipe))
    trainer.run()
    assert diffusion_loss(trainer.pipe, dataset, 1, timesteps=(200, 600), max_scenes=2) != first


def test_similarity_metrics_on_tiny_random_models(pipe, scenes, tmp_path):
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        Dinov2Config,
        Dinov2Model,
    )  # fmt: skip

    from anystory.tiny import tiny_tokenizer
    from anystory.training.evaluate import SimilarityModels, similarity

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        text_config={"vocab_size": len(tiny_tokenizer()), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    ))  # fmt: skip
    clip.save_pretrained(tmp_path / "clip")
    CLIPProcessor(CLIPImageProcessor(size=32, crop_size=32), tiny_tokenizer()).save_pretrained(tmp_path / "clip")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32, patch_size=8)).save_pretrained(tmp_path / "dino")
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "dino")

    models = SimilarityModels(str(tmp_path / "clip"), str(tmp_path / "dino"))
    dataset = ManifestDataset(scenes, pipe.feature_extractor, RESOLUTION, pipe.anystory_config.reference_size)
    report = similarity(pipe, dataset, models, router="layout", max_scenes=1, num_inference_steps=2)
    assert report.images == 1
    assert all(-1.0 <= v <= 1.0 for v in (report.clip_t, report.clip_i, report.dino))


@pytest.mark.parametrize("max_noise_weight", [1.0, 5.0])
def test_tiny_base_fit_trains_the_vae_and_unet(tiny_folder, scenes, tmp_path, max_noise_weight):
    """The proof's base fit (tiny_base.py): it changes the weights, its losses are finite, and the
    fitted VAE's scaling factor gives unit-variance latents."""
    from anystory.training.tiny_base import fit_unet, fit_vae, load_images

    folder = shutil.copytree(tiny_folder, tmp_path / "base")
    images, captions = load_images([scenes])
    before = StableDiffusionXLPipeline.from_pretrained(folder).unet.state_dict()
    vae = fit_vae(folder, images, steps=2, batch=2, crop=32)
    unet = fit_unet(folder, images, captions, steps=2, batch=2, crop=RESOLUTION, max_noise_weight=max_noise_weight)
    assert all(np.isfinite(v) for v in {**vae, **unet}.values())
    fitted = StableDiffusionXLPipeline.from_pretrained(folder)
    assert any(not torch.equal(before[k], v) for k, v in fitted.unet.state_dict().items())
    with torch.no_grad():
        latents = fitted.vae.encode(images).latent_dist.mode() * fitted.vae.config.scaling_factor
    assert latents.std().item() == pytest.approx(1.0, rel=1e-3)


def test_latent_probe_runs_on_scenes(tiny_folder, scenes, capsys):
    """The latent probe's mechanics (its figures mean something only on a fitted base)."""
    from anystory.training.latent_probe import main

    assert main(["--base", str(tiny_folder), "--train", str(scenes), "--heldout", str(scenes), "--timesteps", "100", "900",
                 "--steps", "3"]) == 0  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 100") or line.startswith("| 900")]
    assert len(rows) == 2 and all(0.0 <= float(r.split("|")[2]) <= 1.0 for r in rows)


# -- the CPU proof: steps, not time; caches --------------------------------------------------------


def test_cached_subject_encodings_give_the_same_loss_and_gradients(tiny_folder, scenes, stage1_checkpoint, tmp_path):
    """Stage 2 keeps the frozen encoder's outputs per reference content: a sample met again (a
    cache hit) gives the loss and gradients of the uncached step; other references miss."""
    results = {}
    for cached in (False, True):
        trainer = Trainer(config(tiny_folder, scenes, tmp_path / str(cached), stage=2, init=str(stage1_checkpoint),
                                 augment={"enabled": False}, cache_latents=cached, cache_subjects=cached))  # fmt: skip
        runs = []
        for index in (0, 0, 1):  # row 0 twice: the second time from the caches
            batch = trainer.encoder([trainer.dataset[(index, 1)]], torch.Generator().manual_seed(0), (0, 1000))
            torch.manual_seed(0)  # the same Gumbel noise
            losses = trainer.model(batch)
            losses["loss"].backward()
            runs.append((losses["loss"].item(), {k: p.grad.clone() for k, p in trainer.trainable.items()}))
            trainer.optimizer.zero_grad(set_to_none=True)
        results[cached] = runs
        if cached:
            # the probe step's row 0 and rows 0 and 1 here: two distinct references, two entries each
            assert len(trainer.encoder._subjects) == 2 and len(trainer.module._frozen) == 2
            row0 = trainer.encoder([trainer.dataset[(0, 1)]], torch.Generator(), (0, 1000))[0]
            assert batch[0]["subject_key"] != row0["subject_key"]
        else:
            assert not trainer.encoder._subjects and not trainer.module._frozen
    for (loss_a, grads_a), (loss_b, grads_b) in zip(results[False], results[True]):
        assert abs(loss_a - loss_b) <= 1e-6 * max(1.0, abs(loss_a))
        for key in grads_a:
            assert torch.allclose(grads_a[key], grads_b[key], atol=1e-7, rtol=1e-5), key
    assert results[True][0][0] != results[True][2][0]  # another row is not served row 0's encoding


def test_content_key_follows_the_values():
    from anystory.training.step import content_key

    a = torch.arange(12.0).reshape(3, 4)
    assert content_key(a) == content_key(a.clone())
    changed = a.clone()
    changed[1, 2] += 1e-3
    assert content_key(changed) != content_key(a)
    assert content_key(a.reshape(4, 3)) != content_key(a) and content_key(a.double()) != content_key(a)


def test_proof_has_no_time_budget():
    """The proof's result depends on steps, data and seeds only: no setting of the proof or of a
    training run is a time (CPU or wall) budget, and the proof trains without a stopping callback."""
    import dataclasses
    import inspect

    from anystory.training import proof
    from anystory.training.config import TrainConfig

    timed = {"time", "minute", "minutes", "second", "seconds", "budget", "cpu", "deadline", "hour", "hours", "wall"}
    for cls in (proof.ProofConfig, TrainConfig):
        names = [f.name for f in dataclasses.fields(cls)]
        assert not [n for n in names if timed & set(n.split("_"))], cls  # "timesteps" are diffusion steps
    assert "stage2_steps" in {f.name for f in dataclasses.fields(proof.ProofConfig)}
    source = inspect.getsource(proof.run)
    # both stages run as clock.run("...", trainer.run): no stopping callback is passed to either
    assert 'clock.run("stage 1", stage1.run)' in source and 'clock.run("stage 2", trainer.run)' in source
    assert "cpu_seconds() -" not in source


def test_tiny_proof_is_reproducible_and_reuses_its_base(tmp_path, monkeypatch):
    """The proof at toy size, twice: the same figures; the second run copies the scenes and fitted
    base from the cache; stage 2 runs exactly its steps. A changed base setting, seed or fit code
    gets another key (a miss)."""
    from anystory.training import proof

    small = dict(size=64, reference_size=48, stage1_scenes=3, stage2_scenes=3, heldout_scenes=2, vae_steps=2,
                 unet_steps=2, stage1_steps=2, stage2_steps=3, stage1_eval_scenes=2)  # fmt: skip
    config = proof.ProofConfig(**small)
    cache = tmp_path / "cache"
    first = proof.run(config, tmp_path / "a", cache)
    assert first["base_source"]["from_cache"] is None and (cache / first["base_key"] / "base.json").is_file()
    assert first["stage2"]["steps"] == 3 and first["stage1"]["steps"] == 2 and first["stage2"]["cpu_s_per_step"] > 0
    second = proof.run(config, tmp_path / "b", cache)
    assert second["base_source"]["from_cache"] == str(cache / first["base_key"])
    assert "base: VAE fit" not in second["phases"] and second["base"] == first["base"]
    for name in ("routing_iou_before", "routing_iou_after", "unseen_identities_after"):
        assert second[name] == first[name], name
    assert second["stage1"]["heldout_loss_after"] == first["stage1"]["heldout_loss_after"]
    assert "fitted in this run" in proof.summary(first) and "from the cache" in proof.summary(second)

    key = proof.base_key(config)
    assert proof.base_key(proof.ProofConfig(**{**small, "stage2_steps": 5})) == key  # stage settings: the same base
    assert proof.base_key(proof.ProofConfig(**{**small, "vae_steps": 3})) != key
    assert proof.base_key(proof.ProofConfig(**small, seed=1)) != key
    real = proof.Path.read_bytes
    edited = lambda self: real(self) + (b"#" if self.name == "tiny_base.py" else b"")  # noqa: E731
    monkeypatch.setattr(proof.Path, "read_bytes", edited)
    assert proof.base_key(config) != key  # the fit's code changed


def test_mixed_precision_run_casts_the_frozen_base_only(tiny_folder, scenes, tmp_path):
    """bf16 (issue 21: set-up used to fail): the frozen UNet and encoders in bf16, every AnyStory
    part (the processors inside the UNet too) and the VAE in float32; a step trains."""
    from accelerate.state import AcceleratorState

    # accelerate keeps one state per process: the other tests' runs made it in float32
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        _bf16_run(tiny_folder, scenes, tmp_path)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def _bf16_run(tiny_folder, scenes, tmp_path):
    trainer = Trainer(config(tiny_folder, scenes, tmp_path / "bf16", mixed_precision="bf16", max_steps=1))
    pipe = trainer.pipe
    assert pipe.unet.conv_in.weight.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32 and pipe.reference_net.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in trainer.trainable.values())
    trainer.run()
    record = json.loads((tmp_path / "bf16/logs/train.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 1 and np.isfinite(record["loss"])
