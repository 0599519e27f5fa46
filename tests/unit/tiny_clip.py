"""A tiny random CLIP saved with ``save_pretrained``: the real loading code, no hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from catalens.embedders.clip import _image_processor_class

IMAGE_SIZE = 32
PROJECTION = 16


def byte_tokenizer() -> Any:
    """A byte-level CLIP tokenizer with no merges: every byte is a token."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return transformers.CLIPTokenizer(vocab=vocab, merges=[])


def make_tiny_clip(directory: Path) -> Path:
    """Write a 2-layer CLIP (32 px images, 16-d embeddings) with its processor and tokenizer."""
    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    config = transformers.CLIPConfig(
        text_config={
            **small,
            "num_attention_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            **small,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=PROJECTION,
    )
    transformers.CLIPModel(config).save_pretrained(directory)
    processor = _image_processor_class()(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
