"""Tiny random encoders (width 32, two layers) and the planted shapes set, written to tmp folders."""

from __future__ import annotations

import os

# Tests never reach a model hub. huggingface_hub reads this once, when first imported: set it before any
# test imports transformers, or a test of a missing model waits on network retries.
os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest
import torch

from datamodules.shapes import VOCAB, write_shapes_dataset
from oneencoder import EncoderConfig, OneEncoder, OneEncoderConfig

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_encoder(kind: str) -> EncoderConfig:
    if kind == "text":
        return EncoderConfig(kind="text", model_config={"model_type": "bert", "vocab_size": 64, **TINY}, vocab=VOCAB)
    if kind == "image":
        return EncoderConfig(kind="image", model_config={"model_type": "vit", "image_size": 32, "patch_size": 8, **TINY})
    if kind == "audio":
        return EncoderConfig(
            kind="audio",
            model_config={"model_type": "wav2vec2", **TINY, "conv_dim": [16, 16], "conv_stride": [5, 4],
                          "conv_kernel": [10, 8], "num_conv_pos_embeddings": 16,
                          "num_conv_pos_embedding_groups": 2, "feat_extract_norm": "layer"},
        )
    if kind == "video":
        return EncoderConfig(
            kind="video",
            model_config={"model_type": "videomae", "image_size": 32, "patch_size": 8, "num_frames": 4,
                          "tubelet_size": 2, **TINY},
        )
    raise ValueError(kind)


def tiny_model_config(**overrides) -> OneEncoderConfig:
    settings = {"embed_dim": 32, "up_heads": 2, "up_ff_dim": 64, **overrides}
    return OneEncoderConfig(encoders={"image": tiny_encoder("image"), "text": tiny_encoder("text")}, **settings)


@pytest.fixture
def tiny_model() -> OneEncoder:
    torch.manual_seed(0)
    return OneEncoder(tiny_model_config()).eval()


@pytest.fixture(scope="session")
def shapes_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), train_per_combo=4)


@pytest.fixture
def labelled_manifest(shapes_manifest: Path) -> Path:
    """The shapes set's test records with their colour as `label`; image-only and caption-only records
    besides, which share no pair."""
    records = [r for r in map(json.loads, shapes_manifest.read_text().splitlines()) if r["split"] == "test"]
    lines = [{**r, "label": r["id"].split("-")[0]} for r in records]
    lines += [{"id": "lone-image", "split": "test", "image": records[0]["image"]},
              {"id": "lone-caption", "split": "test", "text": "a red circle"}]
    path = shapes_manifest.parent / "labelled.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
