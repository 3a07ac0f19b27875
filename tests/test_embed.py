"""`oneencoder embed`: vectors equal `model.embed`, a killed run resumes without encoding its shards
again, a feature cache replaces encoding, bad files are named and skipped, folders are sorted by
extension, and a folder from another model is refused."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import tiny_encoder
from PIL import Image

import oneencoder.embeddings as embeddings_module
from datamodules.augment import ImageAugment
from datamodules.feature_cache import HEADER_NAME as CACHE_HEADER
from datamodules.feature_cache import StaleCacheError, build_cache
from datamodules.manifest import read_manifest
from datamodules.shapes import VOCAB
from oneencoder import OneEncoder, OneEncoderConfig
from oneencoder.embeddings import EmbeddingsFolderError, read_embeddings
from stages.cli import main
from stages.embed import embed_command

RECORDS = 10


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """`embed` takes the GPU when there is one; the vectors are compared with `model.embed` on the CPU,
    which a GPU's TF32 convolutions would miss by about 1e-3."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _model_folder(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    encoders = {m: tiny_encoder(m) for m in ("image", "text", "audio")}
    OneEncoder(OneEncoderConfig(encoders=encoders, embed_dim=32, up_heads=2, up_ff_dim=64)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _model_folder(tmp_path_factory.mktemp("model"), seed=0)


def _write_image(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _write_sound(path: Path, seed: int) -> None:
    soundfile.write(path, np.random.default_rng(seed).uniform(-0.5, 0.5, 4000).astype(np.float32), 16000)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RECORDS records with an image, a sound and two captions each."""
    root = tmp_path_factory.mktemp("collection")
    lines = []
    for index in range(RECORDS):
        _write_image(root / f"{index}.png", index)
        _write_sound(root / f"{index}.wav", index)
        words = [VOCAB[(index + k) % len(VOCAB)] for k in range(3)]
        lines.append({"id": f"r{index}", "split": "test" if index % 2 else "train", "image": f"{index}.png",
                      "audio": f"{index}.wav", "text": [" ".join(words), " ".join(reversed(words))]})
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _expected(model_folder: Path, modality: str, rows: list[dict]) -> torch.Tensor:
    items = [row["caption"] if modality == "text" else row["source"] for row in rows]
    return OneEncoder.from_pretrained(model_folder).embed(modality, items, batch_size=4)


def test_embeddings_equal_model_embed_and_load_without_oneencoder(model_folder, manifest, tmp_path, capsys):
    out = tmp_path / "out"
    embed_command([str(model_folder), str(manifest), str(out), "--items_per_shard", "4", "--batch_size", "3"])
    header, tables = read_embeddings(out)
    assert header["model_fingerprint"] == OneEncoder.from_pretrained(model_folder).fingerprint()
    assert {m: s["items"] for m, s in header["modalities"].items()} == {"image": 10, "text": 20, "audio": 10}
    assert header["modalities"]["text"]["shards"] == 5
    assert [row["id"] for row in tables["text"].rows[:3]] == ["r0#0", "r0#1", "r1#0"]
    assert tables["image"].rows[0]["source"] == str(manifest.parent / "0.png")
    for modality, table in tables.items():
        assert torch.allclose(table.vectors, _expected(model_folder, modality, table.rows), atol=1e-5)
    assert "image: 10 items (0 from the feature cache), 0 skipped" in capsys.readouterr().out

    # The docstring's numpy + safetensors snippet reads the same table.
    snippet = re.search(r"Loading without oneencoder.*?\n\n(.*?)\n\"*$", embeddings_module.__doc__, re.DOTALL)[1]
    scope: dict = {}
    exec(textwrap.dedent(snippet).replace("OUT/", f"{out}/"), scope)
    assert np.array_equal(scope["vectors"], tables["image"].vectors.numpy())
    assert scope["rows"] == tables["image"].rows


def test_a_killed_run_resumes_without_encoding_its_shards_again(model_folder, manifest, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = [str(model_folder), str(manifest), str(out), "--modality", "image", "--items_per_shard", "4",
            "--batch_size", "2"]
    original = OneEncoder.encode
    calls = []

    def killed_after(batches: int):
        def encode(self, modality, inputs):
            if len(calls) == batches:
                raise KeyboardInterrupt
            calls.append(modality)
            return original(self, modality, inputs)
        return encode

    monkeypatch.setattr(OneEncoder, "encode", killed_after(3))  # shard 0 (2 batches) is written, shard 1 not
    with pytest.raises(KeyboardInterrupt):
        embed_command(argv)
    written = sorted((out / "image").glob("shard-*.safetensors"))
    assert [p.name for p in written] == ["shard-00000.safetensors"]
    with pytest.raises(EmbeddingsFolderError, match="unfinished"):
        read_embeddings(out)
    before = written[0].stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(OneEncoder, "encode", killed_after(1000))
    embed_command(argv)
    assert len(calls) == 3  # shards 1 (2 batches) and 2 (1 batch) only
    assert written[0].stat().st_mtime_ns == before
    _, tables = read_embeddings(out)
    assert [row["id"] for row in tables["image"].rows] == [f"r{i}" for i in range(RECORDS)]
    assert torch.allclose(tables["image"].vectors, _expected(model_folder, "image", tables["image"].rows), atol=1e-5)


def test_a_feature_cache_replaces_encoding_and_another_encoders_is_refused(model_folder, manifest, tmp_path,
                                                                          monkeypatch):
    model = OneEncoder.from_pretrained(model_folder)
    train = [record for record in read_manifest(manifest) if record.split == "train"]
    cache = tmp_path / "cache"
    for modality in ("image", "text"):
        build_cache(cache, modality, train, model.encoders[modality], items_per_shard=4)
    calls = []
    original = OneEncoder.encode
    monkeypatch.setattr(OneEncoder, "encode", lambda self, m, inputs: calls.append(m) or original(self, m, inputs))

    out = tmp_path / "out"
    embed_command([str(model_folder), str(manifest), str(out), "--modality", "image", "text",
                   "--feature_cache", str(cache), "--batch_size", "4"])
    header, tables = read_embeddings(out)
    assert header["modalities"]["image"]["from_cache"] == 5 and header["modalities"]["text"]["from_cache"] == 10
    assert calls == ["image"] * 2 + ["text"] * 3  # the test records the cache lacks: 5 images, 10 captions
    for modality, table in tables.items():
        assert torch.allclose(table.vectors, _expected(model_folder, modality, table.rows), atol=1e-5)

    calls.clear()
    embed_command([str(model_folder), str(manifest), str(tmp_path / "cached"), "--modality", "image",
                   "--split", "train", "--feature_cache", json.dumps({"image": str(cache)})])
    assert calls == []
    assert read_embeddings(tmp_path / "cached")[0]["modalities"]["image"]["from_cache"] == 5

    header_path = cache / "image" / CACHE_HEADER
    stale = json.loads(header_path.read_text())
    stale["encoder"]["fingerprint"] = "another-encoder"
    header_path.write_text(json.dumps(stale))
    with pytest.raises(StaleCacheError, match="another encoder.*drop --feature_cache"):
        embed_command([str(model_folder), str(manifest), str(tmp_path / "refused"), "--modality", "image",
                       "--feature_cache", str(cache)])


def test_an_image_cache_with_augmented_views_serves_its_plain_view(model_folder, manifest, tmp_path):
    model = OneEncoder.from_pretrained(model_folder)
    train = [record for record in read_manifest(manifest) if record.split == "train"]
    build_cache(tmp_path / "cache", "image", train, model.encoders["image"], items_per_shard=4,
                augment=ImageAugment(views=2))
    out = tmp_path / "out"
    embed_command([str(model_folder), str(manifest), str(out), "--modality", "image", "--split", "train",
                   "--feature_cache", str(tmp_path / "cache")])
    header, tables = read_embeddings(out)
    assert header["modalities"]["image"]["from_cache"] == 5
    assert torch.allclose(tables["image"].vectors, _expected(model_folder, "image", tables["image"].rows), atol=1e-5)


def test_bad_files_are_skipped_named_and_counted(model_folder, manifest, tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    _write_image(root / "good.png", 0)
    (root / "corrupt.png").write_bytes(b"not a png at all")
    _write_sound(root / "good.wav", 0)
    lines = [{"id": "a", "split": "test", "image": "good.png", "audio": "missing.wav", "text": ["red circle", " "]},
             {"id": "b", "split": "test", "image": "corrupt.png", "audio": "good.wav", "text": "blue square"}]
    (root / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    embed_command([str(model_folder), str(root / "manifest.jsonl"), str(out)])
    header, tables = read_embeddings(out)
    counts = header["modalities"]
    assert {m: counts[m]["items"] for m in counts} == {"image": 1, "text": 2, "audio": 1}
    assert list(counts["image"]["skipped"]) == [str(root / "corrupt.png")]
    assert "cannot decode image" in counts["image"]["skipped"][str(root / "corrupt.png")]
    assert counts["audio"]["skipped"] == {str(root / "missing.wav"): f"file not found: {root / 'missing.wav'}"}
    assert list(counts["text"]["skipped"]) == ["a#1"]
    assert [row["id"] for row in tables["text"].rows] == ["a#0", "b#0"]
    printed = capsys.readouterr().out
    assert "skipped (3," in printed and "corrupt.png" in printed and "missing.wav" in printed


def test_a_folder_is_sorted_into_modalities_by_extension(model_folder, tmp_path):
    root = tmp_path / "folder"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    _write_image(root / "a.png", 1)
    _write_image(root / "sub" / "b.JPG", 2)
    _write_image(root / ".hidden" / "c.png", 3)
    _write_sound(root / "sub" / "s.wav", 1)
    (root / "notes.txt").write_text("red circle\n\n  blue square  \n")
    (root / "readme.md").write_text("not a caption file")
    out = root / "out"  # inside the folder it embeds: left out of the walk
    embed_command([str(model_folder), str(root), str(out), "--modality", "image", "--modality", "text"])
    header, tables = read_embeddings(out)
    assert sorted(tables) == ["image", "text"]
    assert [row["id"] for row in tables["image"].rows] == ["a.png", "sub/b.JPG"]
    assert tables["image"].rows[1]["source"] == str(root / "sub" / "b.JPG")
    assert [(row["id"], row["caption"]) for row in tables["text"].rows] == [
        ("notes.txt#0", "red circle"), ("notes.txt#1", "blue square")]
    assert torch.allclose(tables["text"].vectors, _expected(model_folder, "text", tables["text"].rows), atol=1e-5)
    embed_command([str(model_folder), str(root), str(out), "--modality", "image", "text"])  # a finished run: kept
    assert read_embeddings(out)[0] == header


def test_a_folder_from_another_model_is_refused_unless_overwritten(model_folder, manifest, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(manifest), str(out), "--modality", "image"]
    embed_command([str(model_folder), *argv])
    other = _model_folder(tmp_path / "other", seed=1)
    with pytest.raises(SystemExit, match=r"oneencoder embed: .*holds embeddings of another run.*What differs: model"):
        main(["embed", str(other), *argv])
    with pytest.raises(SystemExit, match="What differs: items"):
        main(["embed", str(model_folder), *argv, "--split", "test"])
    embed_command([str(other), *argv, "--overwrite"])
    header, tables = read_embeddings(out)
    assert header["model_fingerprint"] == OneEncoder.from_pretrained(other).fingerprint()
    assert torch.allclose(tables["image"].vectors, _expected(other, "image", tables["image"].rows), atol=1e-5)
