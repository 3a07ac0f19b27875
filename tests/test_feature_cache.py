"""The frozen-feature cache: equal to online features, refused when stale, resumable, and a stage
trained from it reaches the weights of one trained online."""

import json
import os
from functools import partial

import pytest
import torch
from conftest import tiny_encoder, tiny_model_config
from lightning.pytorch import Trainer, seed_everything
from safetensors import safe_open
from safetensors.torch import load_file

from datamodules import BadRecordError, ManifestDataModule, feature_cache, read_manifest
from datamodules.feature_cache import (
    FeatureCache,
    StaleCacheError,
    build_cache,
    sources,
)
from datamodules.shapes import write_shapes_dataset
from oneencoder import OneEncoder
from oneencoder.encoders import build_encoder
from oneencoder.readers import ImageReader
from stages import UPStage


@pytest.fixture
def small_set(tmp_path):
    return write_shapes_dataset(tmp_path / "data", train_per_combo=1)


def _build(root, modality, manifest, encoder=None, **options):
    encoder = encoder or build_encoder(tiny_encoder(modality))
    options = {"batch_size": 16, "items_per_shard": 64, **options}
    return build_cache(root, modality, read_manifest(manifest), encoder, **options)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_cached_features_are_the_online_features_exact_in_fp32_close_in_fp16(small_set, tmp_path, modality):
    records = read_manifest(small_set)
    items = sources(records, modality)
    encoder = build_encoder(tiny_encoder(modality))
    cache = FeatureCache(_build(tmp_path / "fp32", modality, small_set))
    half = FeatureCache(_build(tmp_path / "fp16", modality, small_set, dtype="float16"))
    batch = items[16:32]  # the builder's second batch: same rows, same padding, so bit-identical
    raw = [s.value if modality == "text" else ImageReader()(s.value) for s in batch]
    online = encoder(encoder.preprocess(raw))
    for row, item in enumerate(batch):
        expected = online.features[row][online.mask[row]]
        assert torch.equal(cache[item.key], expected)
        assert half[item.key].dtype == torch.float16
        torch.testing.assert_close(half[item.key].float(), expected, rtol=2e-3, atol=2e-3)
    fp32_bytes = sum(p.stat().st_size for p in (tmp_path / "fp32" / modality).glob("shard-*"))
    fp16_bytes = sum(p.stat().st_size for p in (tmp_path / "fp16" / modality).glob("shard-*"))
    assert fp16_bytes / fp32_bytes == pytest.approx(0.5, abs=0.02)


def test_a_cache_from_another_encoder_config_is_refused_with_what_differs(small_set, tmp_path):
    folder = _build(tmp_path / "cache", "text", small_set)
    shorter = tiny_encoder("text")
    shorter.processor = {"max_length": 12}
    items = sources(read_manifest(small_set), "text")
    with pytest.raises(StaleCacheError, match=r"another encoder or preprocessing.*preprocessing\.call\.max_length.*--overwrite"):
        FeatureCache(folder).check(build_encoder(shorter), items)
    with pytest.raises(StaleCacheError, match="another encoder"):  # building over it is refused too
        _build(tmp_path / "cache", "text", small_set, encoder=build_encoder(shorter))
    _build(tmp_path / "cache", "text", small_set, encoder=build_encoder(shorter), overwrite=True)
    FeatureCache(folder).check(build_encoder(shorter), items)


def test_a_cache_whose_files_or_captions_changed_is_refused_naming_them(small_set, tmp_path):
    folder = _build(tmp_path / "cache", "image", small_set)
    encoder = build_encoder(tiny_encoder("image"))
    records = read_manifest(small_set)
    touched = records[5].path("image")
    os.utime(touched, ns=(0, touched.stat().st_mtime_ns + 10**9))
    with pytest.raises(StaleCacheError, match=rf"1 sources changed.*{touched.name}"):
        FeatureCache(folder).check(encoder, sources(records, "image"))
    text_folder = _build(tmp_path / "cache", "text", small_set)
    lines = small_set.read_text().splitlines()
    first = json.loads(lines[0])
    first["text"][0] = "a changed caption"
    small_set.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(StaleCacheError, match=r"sources changed.*manifest.jsonl:1"):
        FeatureCache(text_folder).check(build_encoder(tiny_encoder("text")), sources(read_manifest(small_set), "text"))


def test_an_interrupted_build_resumes_and_equals_an_uninterrupted_one(small_set, tmp_path, monkeypatch):
    whole = _build(tmp_path / "whole", "text", small_set)
    written = []
    original = feature_cache._write_shard

    def crash_after_two(path, *args, **kwargs):
        if len(written) == 2:
            path.with_name(f".{path.name}.999.tmp").write_bytes(b"half a shard")  # what a crash leaves
            raise KeyboardInterrupt
        written.append(path.name)
        original(path, *args, **kwargs)

    monkeypatch.setattr(feature_cache, "_write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "resumed", "text", small_set)
    folder = tmp_path / "resumed" / "text"
    with pytest.raises(StaleCacheError, match="incomplete cache.*finished shards are kept"):
        FeatureCache(folder).check(build_encoder(tiny_encoder("text")), sources(read_manifest(small_set), "text"))
    written.clear()
    monkeypatch.setattr(feature_cache, "_write_shard", lambda path, *a, **k: (written.append(path.name), original(path, *a, **k)))
    _build(tmp_path / "resumed", "text", small_set)
    assert "shard-00000.safetensors" not in written and len(written) == len(list(whole.glob("shard-*"))) - 2
    for shard in whole.glob("shard-*"):
        assert _shard_content(folder / shard.name) == _shard_content(shard)


def _shard_content(path):
    # Not the bytes: safetensors writes metadata keys in hash-map order.
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return metadata, {name: tensor.numpy().tobytes() for name, tensor in tensors.items()}


def test_bad_images_while_caching_are_named_or_skipped_and_counted(small_set, tmp_path):
    records = read_manifest(small_set)
    records[0].path("image").write_bytes(b"not an image")
    with pytest.raises(BadRecordError, match=r"manifest.jsonl:1 .*cannot decode image.*skip_bad_records"):
        _build(tmp_path / "strict", "image", small_set)
    model_encoders = {m: build_encoder(tiny_encoder(m)) for m in ("image", "text")}
    data = ManifestDataModule(
        str(small_set), batch_size=16, num_workers=0, skip_bad_records=True, feature_cache=str(tmp_path / "lenient"),
        encoders=model_encoders,
    )
    data.prepare_data()
    data.setup("fit")
    assert sum(batch["num_skipped"] for batch in data.train_dataloader()) == 1


def _train(manifest, root, **data_options):
    seed_everything(0)
    model = OneEncoder(tiny_model_config())
    stage = UPStage(model, optimizer=partial(torch.optim.AdamW, lr=1e-3))
    data = ManifestDataModule(str(manifest), batch_size=16, num_workers=0, encoders=model.encoders, **data_options)
    trainer = Trainer(
        max_epochs=2, limit_train_batches=4, limit_val_batches=2, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
    )
    trainer.fit(stage, datamodule=data)
    return model


def test_a_stage_trained_from_the_cache_reaches_the_online_weights_without_loading_encoders(small_set, tmp_path):
    online = _train(small_set, tmp_path / "online")
    encoders = {m: build_encoder(tiny_encoder(m)) for m in ("image", "text")}
    records = read_manifest(small_set)
    for modality, encoder in encoders.items():
        build_cache(tmp_path / "cache", modality, records, encoder, batch_size=16)
    cached = _train(small_set, tmp_path / "cached", feature_cache=str(tmp_path / "cache"))
    assert not any(encoder.is_loaded for encoder in cached.encoders.values())
    for name, value in online.state_dict().items():
        torch.testing.assert_close(cached.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_several_dataloader_workers_read_the_same_batches_as_one_process(small_set, tmp_path):
    encoders = {m: build_encoder(tiny_encoder(m)) for m in ("image", "text")}
    batches = {}
    for workers in (0, 2):
        data = ManifestDataModule(
            str(small_set), batch_size=16, num_workers=workers, feature_cache=str(tmp_path / "cache"), encoders=encoders
        )
        data.prepare_data()
        data.setup("validate")
        batches[workers] = list(data.val_dataloader())
    assert len(batches[0]) == len(batches[2]) == 6
    for one, many in zip(batches[0], batches[2]):
        for modality in ("image", "text"):
            assert torch.equal(one["inputs"][modality]["features"], many["inputs"][modality]["features"])
            assert torch.equal(one["owners"][modality], many["owners"][modality])
