"""The two models `prepare` runs, loaded through transformers from a hub id or a local folder.

- `Segmenter`: CLIPSeg (`CLIPSegForImageSegmentation` + its processor), text-prompted: one
  probability map per subject word. CLIPSeg needs no extra package (Mask2Former / DETR-style
  post-processing would need scipy, which the project does not install).
- `Captioner`: any image-to-text model `AutoModelForImageTextToText` loads that takes an image and
  an optional text prefix through its processor and `generate`s a caption (BLIP, BLIP-2, GIT-style
  captioners). Chat models that need a chat template are not handled.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]


class Segmenter:
    """Per-word probability maps of a picture from CLIPSeg."""

    def __init__(self, model, processor, device: str = "cpu"):
        self.model, self.processor, self.device = model.eval(), processor, device

    @classmethod
    def from_pretrained(cls, name: str, device: str = "cpu", dtype: str = "float32", **kwargs) -> Segmenter:
        from transformers import AutoConfig, AutoProcessor, CLIPSegForImageSegmentation

        config = AutoConfig.from_pretrained(name, **kwargs)
        if config.model_type != "clipseg":
            kind = config.model_type
            raise ValueError(
                f"{name}: a {kind!r} model; the segmenter must be a CLIPSeg model (CIDAS/clipseg-rd64-refined)"
            )
        model = CLIPSegForImageSegmentation.from_pretrained(name, dtype=_dtype(dtype), **kwargs).to(device)
        return cls(model, AutoProcessor.from_pretrained(name, **kwargs), device)

    @torch.no_grad()
    def probabilities(self, image: Image.Image, words: list[str]) -> np.ndarray:
        """[len(words), h, w] float32 in [0, 1] at the model's resolution (square: the processor
        resizes the picture to it, so the maps are stretched like the picture was)."""
        inputs = self.processor(text=words, images=[image] * len(words), padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        logits = self.model(**inputs).logits.float()
        if logits.ndim == 2:  # one word: CLIPSeg squeezes the batch dimension away
            logits = logits[None]
        return torch.sigmoid(logits).cpu().numpy()


class Captioner:
    """A caption of a picture from an image-to-text model."""

    def __init__(self, model, processor, device: str = "cpu", prompt: str = "", max_new_tokens: int = 40):
        self.model, self.processor, self.device = model.eval(), processor, device
        self.prompt, self.max_new_tokens = prompt, max_new_tokens

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        device: str = "cpu",
        dtype: str = "float32",
        prompt: str = "",
        max_new_tokens: int = 40,
        **kwargs,
    ) -> Captioner:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(name, dtype=_dtype(dtype), **kwargs).to(device)
        return cls(model, AutoProcessor.from_pretrained(name, **kwargs), device, prompt, max_new_tokens)

    @torch.no_grad()
    def caption(self, image: Image.Image) -> str:
        """The caption, one line (a text prefix stays in it: BLIP's "a picture of ..." reads as one)."""
        if self.prompt:
            inputs = self.processor(images=image, text=self.prompt, return_tensors="pt")
        else:
            inputs = self.processor(images=image, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        text = self.processor.batch_decode(tokens, skip_special_tokens=True)[0]
        return " ".join(text.split())
