"""Quality harness: CLIP-I, DINO, CLIP-T and our per-character region scores, per mode, on sets of
1, 2 and 3 subjects (DreamBench-style). Prints one table and writes a CSV (resumable).

Data folder layout (`--data DIR`; `--make-sample DIR` writes a synthetic one):

    DIR/subjects/<name>/image.png    the subject's picture (any format Pillow reads; alpha = mask)
    DIR/subjects/<name>/mask.png     optional: white = the subject (else the alpha, else all)
    DIR/subjects/<name>/class.txt    optional: its words in prompts, e.g. "a dog" (default: the name)
    DIR/prompts_1.txt                prompt templates, one a line, {0} = the subject's words
    DIR/prompts_2.txt, prompts_3.txt with {0} {1} ({2}): multi-subject templates
    DIR/sets.json                    optional: {"2": [["dog", "cat"], ...], "3": [...]}; default:
                                     consecutive subjects (0,1), (2,3), ... / (0,1,2), ...

Modes (`--modes`): "anystory" (an AnyStory checkpoint, `--adapter`, its learned router),
"public-prompt" / "public-layout" (public-weights mode, `--ip-adapter`, prompt or layout router),
"ip-adapter" (diffusers' own SDXL pipeline + `load_ip_adapter` of the same IP-Adapter Plus file,
one image and one mask per subject: the baseline a user would pick instead). Layout boxes (layout
router, baseline masks): the image split into equal columns, one per subject, in prompt order.

Metrics per image, averaged over its subjects:
- CLIP-I: cosine of CLIP image embeddings, reference crop vs the whole image (`--clip MODEL`, a
  CLIPModel; default: the pipeline's own image encoder);
- DINO: the same with DINOv2 CLS embeddings (`--dino MODEL`; blank without it);
- CLIP-T: cosine of the prompt's and the image's CLIP embeddings (`--clip MODEL`; blank without it);
- region: our consistency score (anystory/consistency.py) on each subject's routed region (the
  baseline: its mask), with the pipeline's image encoder; absent: share of subjects with no region.

    python bench/quality.py --tiny --make-sample /tmp/q --data /tmp/q --limit 2       # offline check
    python bench/quality.py --data dreambench/ --model stabilityai/stable-diffusion-xl-base-1.0 \\
        --adapter ckpt/ --clip openai/clip-vit-large-patch14 --dino facebook/dinov2-base --out q.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anystory.consistency import DinoScorer, Scorer, reference_crop  # noqa: E402
from anystory.images import read_image, read_mask  # noqa: E402

MODES = ("anystory", "public-prompt", "public-layout", "ip-adapter")
METRICS = ("clip_i", "dino", "clip_t", "region", "absent")
FIELDS = ["key", "size", "mode", "subjects", "prompt", "seed", *METRICS, "seconds"]


@dataclass
class Subject:
    name: str
    words: str
    picture: Image.Image
    mask: Image.Image
    crop: Image.Image  # as encoded: the masked square crop


@dataclass
class Item:
    """One generation to make: its subjects, prompt and seed."""

    size: int
    subjects: list[Subject]
    prompt: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.size}|{'+'.join(s.name for s in self.subjects)}|{self.prompt}|{self.seed}"


# -- data ------------------------------------------------------------------------------------------


def read_subject(folder: Path) -> Subject:
    files = sorted(p for p in folder.iterdir() if p.stem == "image")
    if not files:
        raise SystemExit(f"{folder}: no image.* file")
    picture = read_image(files[0], "image")
    mask_file = next((p for p in folder.iterdir() if p.stem == "mask"), None)
    if mask_file is not None:
        mask, _ = read_mask(Image.open(mask_file), picture.size)
    elif picture.mode == "RGBA":
        mask, _ = read_mask(picture.getchannel("A"), picture.size)
    else:
        mask = Image.new("L", picture.size, 255)
    words_file = folder / "class.txt"
    words = words_file.read_text(encoding="utf-8").strip() if words_file.exists() else folder.name
    return Subject(folder.name, words, picture, mask, reference_crop(picture, mask))


def read_items(data: Path, sizes: list[int], limit: int | None, seeds: int) -> list[Item]:
    subjects = {s.name: s for s in (read_subject(p) for p in sorted((data / "subjects").iterdir()) if p.is_dir())}
    names = list(subjects)
    sets_file = data / "sets.json"
    sets = json.loads(sets_file.read_text(encoding="utf-8")) if sets_file.exists() else {}
    items = []
    for size in sizes:
        prompts_file = data / f"prompts_{size}.txt"
        if not prompts_file.exists():
            continue
        templates = [line.strip() for line in prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        groups = sets.get(str(size)) or [names[i : i + size] for i in range(0, len(names) - size + 1, size)]
        made = []
        for group in groups:
            missing = [n for n in group if n not in subjects]
            if missing:
                raise SystemExit(f"sets.json names unknown subjects: {', '.join(missing)}")
            for template in templates:
                for seed in range(seeds):
                    chosen = [subjects[n] for n in group]
                    made.append(Item(size, chosen, template.format(*[s.words for s in chosen]), seed))
        items += made[:limit] if limit else made
    return items


def make_sample(folder: Path) -> Path:
    """A synthetic data set in the documented layout (for the offline check)."""
    from anystory.tiny import synthetic_subject

    for i, words in enumerate(("a red toy", "a blue robot", "a green cat", "a yellow dog")):
        sub = folder / "subjects" / f"s{i}"
        sub.mkdir(parents=True, exist_ok=True)
        synthetic_subject(i + 1).save(sub / "image.png")
        (sub / "class.txt").write_text(words)
    (folder / "prompts_1.txt").write_text("{0} on the beach\n{0} in a forest\n{0} in the snow\n")
    (folder / "prompts_2.txt").write_text("{0} and {1} in a park\n{0} next to {1} at night\n")
    (folder / "prompts_3.txt").write_text("{0}, {1} and {2} on a bench\n")
    return folder


def columns(n: int) -> list[tuple[float, float, float, float]]:
    return [(i / n, 0.0, (i + 1) / n, 1.0) for i in range(n)]


# -- models ----------------------------------------------------------------------------------------


class ClipEval:
    """CLIP-I / CLIP-T with a CLIPModel the user names; CLIP-I falls back to the pipeline's encoder."""

    def __init__(self, name: str | None, fallback, device):
        self.fallback, self.model, self.device = fallback, None, device
        if name:
            from transformers import AutoProcessor, CLIPModel

            self.model = CLIPModel.from_pretrained(name).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(name)

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> torch.Tensor:
        if self.model is None:
            return self.fallback(images)
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device, self.model.dtype)
        return _unit(self.model.get_image_features(pixel_values=pixels))

    @torch.no_grad()
    def text(self, prompt: str) -> torch.Tensor | None:
        if self.model is None:
            return None
        tokens = self.processor(text=[prompt], return_tensors="pt", padding=True, truncation=True).to(self.device)
        return _unit(self.model.get_text_features(**tokens))[0]


def _unit(features) -> torch.Tensor:
    # transformers 5 returns an output object (projected embeddings in pooler_output), 4 a tensor
    tensor = features if isinstance(features, torch.Tensor) else features.pooler_output
    return torch.nn.functional.normalize(tensor.float(), dim=-1).cpu()


def tiny_models(folder: Path) -> dict:
    """Tiny offline stand-ins for every model the harness takes: SDXL, an AnyStory checkpoint, an
    IP-Adapter Plus file, a CLIPModel and a DINOv2 (random weights: the figures mean nothing)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, Dinov2Config, Dinov2Model
    from transformers import AutoImageProcessor, CLIPImageProcessor, CLIPProcessor  # noqa: F401

    from anystory.pipeline import AnyStoryPipeline
    from anystory.tiny import tiny_tokenizer, write_tiny_ip_adapter, write_tiny_sdxl

    base = write_tiny_sdxl(folder / "tiny-sdxl")
    ip_file = write_tiny_ip_adapter(base, folder / "tiny-ip-adapter.safetensors")
    pipe = AnyStoryPipeline.from_pretrained(str(base), adapter="init", local_files_only=True)
    adapter = pipe.save_adapter(folder / "tiny-anystory")
    tokenizer: CLIPTokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=32,
    ))  # fmt: skip
    clip.save_pretrained(folder / "tiny-clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size=32, crop_size=32), tokenizer=tokenizer).save_pretrained(
        folder / "tiny-clip"
    )
    dino = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                    image_size=28, patch_size=14))  # fmt: skip
    dino.save_pretrained(folder / "tiny-dino")
    CLIPImageProcessor(size=28, crop_size=28).save_pretrained(folder / "tiny-dino")
    return {"model": str(base), "adapter": str(adapter), "ip_adapter": str(ip_file),
            "clip": str(folder / "tiny-clip"), "dino": str(folder / "tiny-dino")}  # fmt: skip


def load_pipeline(base: str, adapter: str, ip_adapter: str | None, dtype, device):
    from anystory.pipeline import AnyStoryPipeline

    extra = {"ip_adapter": ip_adapter} if adapter == "public" and ip_adapter else {}
    local = Path(base).exists()
    pipe = AnyStoryPipeline.from_pretrained(base, adapter=adapter, dtype=dtype, device=device,
                                            local_files_only=local, **extra)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def baseline(pipe, ip_file: str):
    """diffusers' own SDXL pipeline over the public pipe's components, with `load_ip_adapter`."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from overhead import put_unet_attention_state, unet_attention_state

    ours = unet_attention_state(pipe.unet)
    peer = StableDiffusionXLPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2, tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2, unet=pipe.unet, scheduler=pipe.scheduler, image_encoder=pipe.image_encoder,
        feature_extractor=pipe.feature_extractor, add_watermarker=False,
    )  # fmt: skip
    peer.set_progress_bar_config(disable=True)
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    path = Path(ip_file)
    peer.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name)
    theirs = unet_attention_state(pipe.unet)
    put_unet_attention_state(pipe.unet, ours)
    return peer, ours, theirs, put_unet_attention_state


# -- one generation --------------------------------------------------------------------------------


def generate(mode: str, runner, item: Item, args, encodings: dict) -> tuple[Image.Image, np.ndarray]:
    """The image and each subject's region as route maps [N+1, h, w]."""
    from anystory.pipeline import layout_mask

    common = dict(num_inference_steps=args.steps, height=args.size, width=args.size, guidance_scale=args.guidance,
                  generator=torch.Generator().manual_seed(item.seed))  # fmt: skip
    boxes = columns(item.size)
    if mode == "ip-adapter":
        from diffusers.image_processor import IPAdapterMaskProcessor

        peer, ours, theirs, put = runner
        masks = [Image.fromarray((layout_mask(b, (args.size, args.size)).numpy() * 255).astype("uint8")) for b in boxes]
        processed = IPAdapterMaskProcessor().preprocess(masks, height=args.size, width=args.size)
        processed = [processed.reshape(1, processed.shape[0], processed.shape[2], processed.shape[3])]
        put(peer.unet, theirs)
        try:
            image = peer(item.prompt, ip_adapter_image=[[s.crop for s in item.subjects]],
                         cross_attention_kwargs={"ip_adapter_masks": processed}, **common).images[0]  # fmt: skip
        finally:
            put(peer.unet, ours)
        regions = np.stack([layout_mask(b, (args.size, args.size)).numpy() for b in boxes])
        return image, np.concatenate([regions, 1 - regions.max(0, keepdims=True)])
    pipe = runner
    subjects = []
    for s in item.subjects:
        if (mode, s.name) not in encodings:
            encodings[(mode, s.name)] = pipe.encode_subject(s.picture, s.mask)
        subjects.append(encodings[(mode, s.name)])
    extra = {}
    if mode == "public-prompt":
        extra = dict(router="prompt", subject_phrases=[s.words for s in item.subjects])
    elif mode == "public-layout":
        extra = dict(router="layout", layout=boxes)
    out = pipe(item.prompt, subjects=subjects, **extra, **common)
    return out.images[0], out.route_maps[0].numpy()


def measure(item: Item, image: Image.Image, maps: np.ndarray, scorer: Scorer, clip: ClipEval, dino) -> dict:
    refs = [s.crop for s in item.subjects]
    image_clip = clip.images([image])[0]
    ref_clip = clip.images(refs)
    row = {"clip_i": float((ref_clip @ image_clip).mean())}
    text = clip.text(item.prompt)
    row["clip_t"] = float(text @ image_clip) if text is not None else ""
    if dino is not None:
        row["dino"] = float((dino(refs) @ dino([image])[0]).mean())
    else:
        row["dino"] = ""
    scores = scorer.score(image, maps, [s.name for s in item.subjects],
                          [(s.name, lambda s=s: s.crop) for s in item.subjects])  # fmt: skip
    row["region"] = scores.mean() if scores.mean() is not None else ""
    row["absent"] = len(scores.absent()) / len(item.subjects)
    return row


# -- table -----------------------------------------------------------------------------------------


def read_done(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {row["key"] + "|" + row["mode"]: row for row in csv.DictReader(f)}


def summary(rows: list[dict]) -> str:
    """Subjects 1/2/3 x mode x metric: the mean (and the count of images)."""
    lines = ["| subjects | mode | images | " + " | ".join(METRICS) + " |", "|---" * (3 + len(METRICS)) + "|"]
    groups: dict[tuple[int, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((int(row["size"]), row["mode"]), []).append(row)
    for (size, mode), members in sorted(groups.items(), key=lambda kv: (kv[0][0], MODES.index(kv[0][1]))):
        cells = []
        for metric in METRICS:
            values = [float(r[metric]) for r in members if r[metric] not in ("", None)]
            cells.append(f"{statistics.mean(values):.3f}" if values else "-")
        lines.append(f"| {size} | {mode} | {len(members)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    items = read_items(Path(args.data), args.sizes, args.limit, args.seeds)
    out = Path(args.out)
    done = read_done(out)
    rows = [r for r in done.values()]
    new_file = not out.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    dino = DinoScorer(args.dino, device=device) if args.dino else None
    with out.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new_file:
            writer.writeheader()
        groups = [("anystory", args.adapter, ["anystory"]),
                  ("public", "public", [m for m in MODES if m != "anystory"])]  # fmt: skip
        for _, adapter, modes in groups:
            modes = [m for m in modes if m in args.modes]
            todo = [(m, i) for m in modes for i in items if i.key + "|" + m not in done]
            if not todo:
                continue
            if adapter is None:
                raise SystemExit("mode anystory needs --adapter (an AnyStory checkpoint folder)")
            pipe = load_pipeline(args.model, adapter, args.ip_adapter, dtype, device)
            scorer = Scorer(pipe.image_embeddings)
            clip = ClipEval(args.clip, pipe.image_embeddings, device)
            peer = baseline(pipe, args.ip_adapter) if "ip-adapter" in modes else None
            encodings: dict = {}
            for mode, item in todo:
                started = time.perf_counter()
                image, maps = generate(mode, peer if mode == "ip-adapter" else pipe, item, args, encodings)
                row = {"key": item.key, "size": item.size, "mode": mode, "prompt": item.prompt, "seed": item.seed,
                       "subjects": "+".join(s.name for s in item.subjects),
                       **measure(item, image, maps, scorer, clip, dino)}  # fmt: skip
                row["seconds"] = round(time.perf_counter() - started, 3)
                writer.writerow(row)
                f.flush()  # resumable: a killed run keeps every finished row
                rows.append({k: str(v) for k, v in row.items()})
                if args.images:
                    folder = Path(args.images) / mode
                    folder.mkdir(parents=True, exist_ok=True)
                    image.save(folder / f"{abs(hash(item.key)) % 10**10}.png")
            del pipe, peer
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the data folder (layout above)")
    parser.add_argument("--make-sample", metavar="DIR", help="write a synthetic data folder first")
    parser.add_argument("--tiny", action="store_true", help="tiny offline models (checks the harness, no meaning)")
    parser.add_argument("--model", default="stabilityai/stable-diffusion-xl-base-1.0")
    parser.add_argument("--adapter", help="AnyStory checkpoint folder (mode anystory)")
    parser.add_argument("--ip-adapter", default=None, help="IP-Adapter Plus file (public modes, baseline)")
    parser.add_argument("--clip", help="a CLIPModel for CLIP-I and CLIP-T (e.g. openai/clip-vit-large-patch14)")
    parser.add_argument("--dino", help="a DINOv2 model for DINO (e.g. facebook/dinov2-base)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--sizes", nargs="+", type=int, choices=[1, 2, 3], default=[1, 2, 3])
    parser.add_argument("--limit", type=int, help="at most this many generations per subject count")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per prompt")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024; 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="default 30; 2 with --tiny")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default="quality.csv", help="CSV of every image's metrics (appended: resumable)")
    parser.add_argument("--images", help="also keep the images in this folder")
    args = parser.parse_args(argv)
    if args.make_sample:
        make_sample(Path(args.make_sample))
        args.data = args.data or args.make_sample
    if not args.data:
        parser.error("--data is needed (or --make-sample DIR)")
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            for key, value in tiny_models(Path(tmp)).items():
                if getattr(args, key) in (None, parser.get_default(key)):
                    setattr(args, key, value)
            args.size, args.steps = args.size or 64, args.steps or 2
        args.size, args.steps = args.size or 1024, args.steps or 30
        if args.ip_adapter is None and any(m != "anystory" for m in args.modes):
            from anystory.weights import PUBLIC_IP_ADAPTER, resolve_file

            args.ip_adapter = str(resolve_file(*((PUBLIC_IP_ADAPTER,) if isinstance(PUBLIC_IP_ADAPTER, str)
                                                 else PUBLIC_IP_ADAPTER)))  # fmt: skip
        rows = run(args)
    print(f"## bench/quality.py: {len(rows)} images, {args.size}x{args.size}, {args.steps} steps -> {args.out}\n")
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
