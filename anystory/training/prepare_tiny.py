"""Tiny random CLIPSeg and BLIP folders, built offline, for testing `prepare` through the same
`from_pretrained` code real weights take. Their masks and captions mean nothing.

    python -c "from anystory.training.prepare_tiny import write_tiny_clipseg, write_tiny_blip; \
        write_tiny_clipseg('work/tiny-clipseg'); write_tiny_blip('work/tiny-blip')"
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPSegConfig,
    CLIPSegForImageSegmentation,
    CLIPSegProcessor,
    ViTImageProcessor,
)

from ..tiny import tiny_tokenizer

IMAGE_SIZE = 32
_VISION = dict(
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    image_size=IMAGE_SIZE,
    patch_size=8,
)


def write_tiny_clipseg(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A random CLIPSeg (32 px input, 2 layers) with the offline CLIP tokenizer."""
    folder = Path(folder)
    tokenizer = tiny_tokenizer()
    text = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    config = CLIPSegConfig(
        text_config=text, vision_config=_VISION, projection_dim=16, reduce_dim=16, extract_layers=[0, 1],
        decoder_num_attention_heads=2, decoder_intermediate_size=32,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(config)
    images = ViTImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    model.save_pretrained(folder)
    CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def write_tiny_blip(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A random BLIP captioner (32 px input, 2 layers) with a WordPiece vocabulary of letters and a few words."""
    folder = Path(folder)
    words = ["a", "picture", "of", "dog", "person", "and", "the", "##s"]
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *words]))
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    text = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        encoder_hidden_size=32, max_position_embeddings=64, bos_token_id=tokenizer.cls_token_id,
        pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=_VISION, projection_dim=16))
    model.save_pretrained(folder)
    images = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    BlipProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder
