"""The frozen-feature cache: equal to online features, refused when stale, resumable, and a stage
trained from it reaches the weights of one trained online."""

import json
import logging
import os
import threading
import time
from functools import partial

import pytest
import torch
from conftest import tiny_encoder, tiny_model_config
from lightning.pytorch import Trainer, seed_everything
from safetensors import safe_open
from safetensors.torch import load_file

from datamodules import BadRecordError, ManifestDataModule, feature_cache, read_manifest
from datamodules.feature_cache import (
    CorruptCacheError,
    FeatureCache,
    StaleCacheError,
    build_cache,
    caption_key,
    sources,
)
from datamodules import signatures
from datamodules.signatures import FULL_HASH_BYTES, SignatureMemo, media_signature, media_signatures
from datamodules.pairs_dataset import PairDataset
from datamodules.shapes import write_shapes_dataset
from oneencoder import OneEncoder
from oneencoder.encoders import build_encoder
from oneencoder.readers import ImageReader
from stages import UPStage

WRITE_SHARD = feature_cache._write_shard


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


def _edit_in_place(path):
    """Change one byte, keeping the size and putting the modification time back: what a careless
    copy or an editor with `preserve timestamps` does."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_cache_whose_files_or_captions_changed_is_refused_naming_them(small_set, tmp_path):
    folder = _build(tmp_path / "cache", "image", small_set)
    encoder = build_encoder(tiny_encoder("image"))
    records = read_manifest(small_set)
    touched = records[5].path("image")
    os.utime(touched, ns=(0, touched.stat().st_mtime_ns + 10**9))  # a new time, the same content: still valid
    FeatureCache(folder).check(encoder, sources(records, "image"))
    _edit_in_place(touched)
    with pytest.raises(StaleCacheError, match=rf"1 sources changed.*{touched.name}.*oneencoder cache --config"):
        FeatureCache(folder).check(encoder, sources(records, "image"))
    lines = small_set.read_text().splitlines()
    moved = json.loads(lines[6])
    moved["image"] = json.loads(lines[7])["image"]  # another file, the same size and kind
    small_set.write_text("\n".join([*lines[:6], json.dumps(moved), *lines[7:]]) + "\n")
    with pytest.raises(StaleCacheError, match=r"2 sources changed"):
        FeatureCache(folder).check(encoder, sources(read_manifest(small_set), "image"))
    text_folder = _build(tmp_path / "cache", "text", small_set)
    lines = small_set.read_text().splitlines()
    first = json.loads(lines[0])
    first["text"][0] = "a changed caption"
    small_set.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(StaleCacheError, match=r"no features for 1 of .*manifest.jsonl:1.*captions changed"):
        FeatureCache(text_folder).check(build_encoder(tiny_encoder("text")), sources(read_manifest(small_set), "text"))


def test_large_media_are_signed_by_size_time_and_both_ends(tmp_path):
    path = tmp_path / "clip.bin"
    path.write_bytes(bytes(range(256)) * (3 * FULL_HASH_BYTES // 256))
    first = media_signature(path)
    assert first.startswith(f"{path}|{path.stat().st_size}|")
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the end changed, size and time kept
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert media_signature(path) != first
    os.utime(path, ns=(0, stat.st_mtime_ns + 10**9))
    assert len({first, media_signature(path)}) == 2


def test_the_signature_memo_hashes_again_only_files_whose_status_changed(small_set, tmp_path, monkeypatch):
    paths = [record.path("image") for record in read_manifest(small_set)[:4]]
    SignatureMemo(tmp_path / "memo.json").signatures(paths)  # not saved: nothing to reuse
    memo = SignatureMemo(tmp_path / "memo.json")
    first = memo.signatures(paths)
    memo.save()
    hashed = []
    monkeypatch.setattr(signatures, "media_signatures", lambda todo: (hashed.extend(todo), media_signatures(todo))[1])
    memo = SignatureMemo(tmp_path / "memo.json")
    assert memo.signatures(paths) == first and hashed == []
    _edit_in_place(paths[1])  # size and modification time as before: the change time still moves
    os.utime(paths[2], ns=(0, 10**18))  # a new time, the same content
    again = memo.signatures(paths)
    assert sorted(hashed) == sorted(paths[1:3])
    assert again[1] != first[1] and again[2] == first[2] and again[0] == first[0]


def _counting_writes(monkeypatch, crash_after=None):
    """Record the shard names each build writes; with `crash_after`, stop the build as a kill would
    once that many are written, leaving a temporary file behind."""
    written = []

    def write(path, *args, **kwargs):
        if crash_after is not None and len(written) == crash_after:
            path.with_name(f".{path.name}.999.tmp").write_bytes(b"half a shard")
            raise KeyboardInterrupt
        written.append(path.name)
        WRITE_SHARD(path, *args, **kwargs)

    monkeypatch.setattr(feature_cache, "_write_shard", write)
    return written


@pytest.mark.parametrize("modality", ["image", "text"])
def test_an_interrupted_build_resumes_and_equals_an_uninterrupted_one(small_set, tmp_path, monkeypatch, modality):
    whole = _build(tmp_path / "whole", modality, small_set)
    _counting_writes(monkeypatch, crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "resumed", modality, small_set)
    folder = tmp_path / "resumed" / modality
    items = sources(read_manifest(small_set), modality)
    with pytest.raises(StaleCacheError, match="incomplete cache.*finished shards are kept"):
        FeatureCache(folder).check(build_encoder(tiny_encoder(modality)), items)
    written = _counting_writes(monkeypatch)
    _build(tmp_path / "resumed", modality, small_set, overwrite=True)  # overwrite replaces only a foreign cache
    assert "shard-00000.safetensors" not in written and len(written) == len(list(whole.glob("shard-*"))) - 2
    for shard in whole.glob("shard-*"):
        assert _shard_content(folder / shard.name) == _shard_content(shard)
    FeatureCache(folder).check(build_encoder(tiny_encoder(modality)), items)


def test_a_build_over_changed_files_encodes_only_their_shards(small_set, tmp_path, monkeypatch):
    folder = _build(tmp_path / "cache", "image", small_set)
    records = read_manifest(small_set)
    records[100].path("image").write_bytes(records[0].path("image").read_bytes())  # in shard 1 of 64-item shards
    with small_set.open("a") as manifest:  # a new record after the last: shard 4 gains it
        manifest.write(json.dumps({**json.loads(small_set.read_text().splitlines()[0]), "id": "late"}) + "\n")
    written = _counting_writes(monkeypatch)
    _build(tmp_path / "cache", "image", small_set)
    assert written == ["shard-00001.safetensors", "shard-00004.safetensors"]
    records = read_manifest(small_set)
    FeatureCache(folder).check(build_encoder(tiny_encoder("image")), sources(records, "image"))
    fresh = _build(tmp_path / "fresh", "image", small_set)
    for shard in fresh.glob("shard-*"):
        assert _shard_content(folder / shard.name) == _shard_content(shard)


def test_two_concurrent_builds_encode_once_and_both_finish(small_set, tmp_path, monkeypatch, caplog):
    started, release = threading.Event(), threading.Event()
    written = []

    def write(path, *args, **kwargs):
        written.append(path.name)
        started.set()
        release.wait(60)  # hold the first build inside its lock until the second one waits for it
        WRITE_SHARD(path, *args, **kwargs)

    monkeypatch.setattr(feature_cache, "_write_shard", write)
    errors = []

    def build():
        try:
            _build(tmp_path / "cache", "image", small_set)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    first = threading.Thread(target=build)
    first.start()
    assert started.wait(60)
    second = threading.Thread(target=build)
    with caplog.at_level(logging.WARNING, logger="datamodules.feature_cache"):
        second.start()
        while second.is_alive() and "another build of this cache is running" not in caplog.text:
            time.sleep(0.05)
        release.set()
        first.join(60)
        second.join(60)
    assert not errors and "waiting for it to finish" in caplog.text
    assert sorted(written) == sorted(set(written)) and len(written) == 5  # each shard encoded once
    FeatureCache(tmp_path / "cache" / "image").check(build_encoder(tiny_encoder("image")), sources(read_manifest(small_set), "image"))


def test_a_damaged_shard_is_named_with_the_fix_and_the_build_resumes_after_deleting_it(small_set, tmp_path):
    folder = _build(tmp_path / "cache", "text", small_set)
    shard = folder / "shard-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CorruptCacheError, match=r"shard-00002.safetensors is not a readable.*Delete it.*oneencoder cache"):
        FeatureCache(folder)
    with pytest.raises(CorruptCacheError, match="shard-00002"):  # a build does not cover it up either
        _build(tmp_path / "cache", "text", small_set)
    shard.write_bytes(b"\0" * 64)
    with pytest.raises(CorruptCacheError, match="shard-00002"):
        FeatureCache(folder)
    shard.unlink()
    _build(tmp_path / "cache", "text", small_set)
    FeatureCache(folder).check(build_encoder(tiny_encoder("text")), sources(read_manifest(small_set), "text"))


@pytest.mark.parametrize("modality", ["image", "text"])
def test_a_bf16_cache_is_encoded_under_autocast_recorded_and_refused_under_fp32(small_set, tmp_path, modality):
    items = sources(read_manifest(small_set), modality)
    exact = FeatureCache(_build(tmp_path / "fp32", modality, small_set))
    folder = _build(tmp_path / "bf16", modality, small_set, precision="bf16-mixed")
    bf16 = FeatureCache(folder)
    assert bf16.precision == "bf16-mixed" and bf16[items[0].key].dtype == torch.float32  # stored as asked
    differences = [(bf16[item.key] - exact[item.key]).abs().max().item() for item in items]
    assert 0 < max(differences) < 0.1  # bf16's rounding, not another encoder
    encoder = build_encoder(tiny_encoder(modality))
    bf16.check(encoder, items, precision="bf16-mixed")
    with pytest.raises(StaleCacheError, match=r"encoded in bf16-mixed, the config asks for 32-true.*cache_precision.*--overwrite"):
        bf16.check(encoder, items)
    with pytest.raises(StaleCacheError, match="encoded in bf16-mixed"):  # building over it is refused too
        _build(tmp_path / "bf16", modality, small_set)


def test_a_group_norm_audio_encoder_run_unpadded_encodes_under_bf16(small_set, tmp_path):
    config = tiny_encoder("audio")
    config.model_config = {**config.model_config, "feat_extract_norm": "group"}  # as configs/align_audio.yaml
    exact = FeatureCache(_build(tmp_path / "fp32", "audio", small_set, encoder=build_encoder(config)))
    bf16 = FeatureCache(_build(tmp_path / "bf16", "audio", small_set, encoder=build_encoder(config),
                               precision="bf16-mixed"))
    key = sources(read_manifest(small_set), "audio")[0].key
    assert bf16[key].shape == exact[key].shape and 0 < (bf16[key] - exact[key]).abs().max() < 0.1


def test_an_encoder_outside_torch_records_the_fp32_it_runs_in_and_serves_a_bf16_config(small_set, tmp_path):
    encoder = build_encoder(tiny_encoder("text"))
    encoder.follows_autocast = False  # as an encoder that another runtime (ONNX Runtime, CTranslate2) runs
    folder = _build(tmp_path / "cache", "text", small_set, encoder=encoder, precision="bf16-mixed")
    assert FeatureCache(folder).precision == "32-true"
    FeatureCache(folder).check(encoder, sources(read_manifest(small_set), "text"), precision="bf16-mixed")


def test_a_cache_from_before_the_precision_setting_reads_as_fp32(small_set, tmp_path):
    folder = _build(tmp_path / "cache", "text", small_set)
    header = json.loads((folder / "header.json").read_text())
    del header["precision"]
    (folder / "header.json").write_text(json.dumps(header))
    FeatureCache(folder).check(build_encoder(tiny_encoder("text")), sources(read_manifest(small_set), "text"))
    with pytest.raises(StaleCacheError, match="encoded in 32-true"):
        _build(tmp_path / "cache", "text", small_set, precision="bf16-mixed")


def _set_format_version(folder, version):
    header = json.loads((folder / "header.json").read_text())
    (folder / "header.json").write_text(json.dumps({**header, "format_version": version}))


def test_a_caption_cache_of_an_older_format_asks_for_a_rebuild_a_media_cache_of_version_2_serves(small_set, tmp_path):
    folder = _build(tmp_path / "cache", "text", small_set)
    _set_format_version(folder, 2)  # captions keyed by record and position then
    with pytest.raises(StaleCacheError, match=r"version 2, expected .* version 3: .*Rebuild it.*--overwrite"):
        _build(tmp_path / "cache", "text", small_set)
    _build(tmp_path / "cache", "text", small_set, overwrite=True)
    assert FeatureCache(folder).header["format_version"] == 3
    images = _build(tmp_path / "cache", "image", small_set)
    _set_format_version(images, 2)
    FeatureCache(images).check(build_encoder(tiny_encoder("image")), sources(read_manifest(small_set), "image"))
    _set_format_version(images, 1)
    with pytest.raises(StaleCacheError, match=r"version 1, expected .* version 2, 3"):
        FeatureCache(images)


def test_a_caption_that_records_share_is_encoded_once_and_serves_each_of_them(small_set, tmp_path, monkeypatch):
    lines = small_set.read_text().splitlines()
    shared = "the same caption in two records"
    rows = [json.loads(line) for line in lines[:2]]
    for row in rows:
        row["text"] = [shared, *row["text"][1:]] if isinstance(row["text"], list) else shared
    small_set.write_text("\n".join([*map(json.dumps, rows), *lines[2:]]) + "\n")
    encoded = []
    encoder = build_encoder(tiny_encoder("text"))
    original = encoder.preprocessor.__class__.__call__
    monkeypatch.setattr(encoder.preprocessor.__class__, "__call__",
                        lambda self, captions: encoded.extend(captions) or original(self, captions))
    records = read_manifest(small_set)
    cache = FeatureCache(_build(tmp_path / "cache", "text", small_set, encoder=encoder, num_workers=0))
    assert encoded.count(shared) == 1
    assert len(encoded) == len(set(encoded)) == len({c for r in records for c in r.captions()})
    dataset = PairDataset(records[:2], ("text",), False, caches={"text": cache})
    first, second = dataset[0]["text"][0], dataset[1]["text"][0]
    assert torch.equal(first, second) and torch.equal(first, cache[caption_key(shared)])


def _shard_content(path):
    # Not the bytes: safetensors writes metadata keys in hash-map order.
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return metadata, {name: tensor.numpy().tobytes() for name, tensor in tensors.items()}


def test_bad_images_while_caching_are_named_or_dropped_at_setup_and_counted(small_set, tmp_path, caplog):
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
    with caplog.at_level(logging.WARNING, logger="datamodules.pairs"):
        data.setup("fit")
    assert "dropping 1 records the feature cache could not decode" in caplog.text
    assert data.num_skipped_at_setup == 1 and records[0].id not in {r.id for r in data.splits["train"]}
    batches = list(data.train_dataloader())
    assert sum(batch["num_skipped"] for batch in batches) == 0
    assert sum(batch["size"] for batch in batches) == len(data.splits["train"]) // 16 * 16


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


def test_a_video_cache_records_its_decoder_and_refuses_another(small_set, tmp_path):
    few = tmp_path / "few.jsonl"
    few.write_text("".join(small_set.read_text().splitlines(keepends=True)[:3]).replace('"video/', f'"{small_set.parent}/video/'))
    folder = _build(tmp_path / "cache", "video", few)
    assert FeatureCache(folder).header["reader"] == {"video_backend": "decord"}
    items = sources(read_manifest(few), "video")
    with pytest.raises(StaleCacheError, match=r"decoded with \{'video_backend': 'decord'\}.*'pyav'.*--overwrite"):
        FeatureCache(folder).check(build_encoder(tiny_encoder("video")), items, video_backend="pyav")
    with pytest.raises(StaleCacheError, match="decoded with"):
        _build(tmp_path / "cache", "video", few, video_backend="pyav")
