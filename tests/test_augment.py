"""Augmented views of drawings in the feature cache: deterministic images, view 0 the plain cache bit
for bit, refused when the settings change, and read per epoch in training, view 0 in evaluation."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_encoder
from jsonargparse import ArgumentParser
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file

from datamodules import ManifestDataModule, feature_cache, read_manifest
from datamodules.augment import ImageAugment, augment_image
from datamodules.feature_cache import FeatureCache, StaleCacheError, build_cache, sources, view_key
from datamodules.sampling import EpochSampler
from datamodules.shapes import write_shapes_dataset
from oneencoder.encoders import build_encoder

AUGMENT = ImageAugment(views=3)
PER_SHARD = 8  # 20 records: 3 shards per view, the last one partial


@pytest.fixture(scope="module")
def few(tmp_path_factory):
    """20 shape records (16 train, 4 val) beside the shapes set's files."""
    manifest = write_shapes_dataset(tmp_path_factory.mktemp("shapes"), train_per_combo=1)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    chosen = [r for r in records if r["split"] == "train"][:16] + [r for r in records if r["split"] == "val"][:4]
    few = manifest.with_name("few.jsonl")
    few.write_text("".join(json.dumps(record) + "\n" for record in chosen))
    return few


def _build(root, manifest, **options):
    options = {"batch_size": 4, "items_per_shard": PER_SHARD, **options}
    return build_cache(root, "image", read_manifest(manifest), build_encoder(tiny_encoder("image")), **options)


def _shard_content(path):
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return metadata, {name: tensor.numpy().tobytes() for name, tensor in load_file(str(path)).items()}


def _drawing():
    image = Image.new("RGB", (48, 36), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((8, 6, 36, 30), fill=(220, 40, 30), outline=(20, 20, 20), width=3)
    return image


def test_augmentation_keeps_the_size_repeats_per_seed_and_greys_evenly():
    image = _drawing()
    views = [np.asarray(augment_image(image, ImageAugment(), seed)) for seed in range(6)]
    assert all(view.shape == (36, 48, 3) for view in views)
    assert np.array_equal(views[0], np.asarray(augment_image(image, ImageAugment(), 0)))
    assert len({view.tobytes() for view in views}) == 6
    grey = np.asarray(augment_image(image, ImageAugment(greyscale=1.0, blur=1.0), 3)).astype(int)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    assert grey.std() > 0  # still a drawing, not a blank
    with pytest.raises(ValueError, match="views must be at least 2"):
        ImageAugment(views=1)


def test_views_are_distinct_rows_view_0_is_the_plain_cache_and_builds_repeat(few, tmp_path, monkeypatch):
    plain = _build(tmp_path / "plain", few)
    folder = _build(tmp_path / "views", few, augment=AUGMENT)
    cache, plain_cache = FeatureCache(folder), FeatureCache(plain)
    # View 0 of the 20 images in 3 shards, views 1 and 2 of the 16 training images in 2 shards each.
    assert cache.views == 3 and cache.num_shards == 7 and len(cache.index) == 20 + 2 * 16
    for record in read_manifest(few):
        if record.split != "train":  # only training draws augmented views
            assert view_key(record.id, 1) not in cache and torch.equal(cache[record.id], plain_cache[record.id])
            continue
        rows = [cache[view_key(record.id, view)] for view in range(3)]
        assert torch.equal(rows[0], plain_cache[record.id])
        assert not any(torch.equal(rows[a], rows[b]) for a, b in ((0, 1), (0, 2), (1, 2)))
    for shard in plain.glob("shard-*"):  # view 0's shards are the plain cache's, bit for bit
        assert _shard_content(folder / shard.name) == _shard_content(shard)
    again = _build(tmp_path / "again", few, augment=AUGMENT)
    assert sorted(p.name for p in again.glob("shard-*")) == sorted(p.name for p in folder.glob("shard-*"))
    for shard in folder.glob("shard-*"):
        assert _shard_content(again / shard.name) == _shard_content(shard)

    lines = [json.loads(line) for line in few.read_text().splitlines()]
    lines[9]["image"] = lines[0]["image"]  # another file for a record in shard 1 of each view
    changed = few.with_name("few-changed.jsonl")
    changed.write_text("".join(json.dumps(line) + "\n" for line in lines))
    written = []

    def write(path, *args, **kwargs):
        written.append(path.name)
        return write_shard(path, *args, **kwargs)

    write_shard = feature_cache._write_shard
    monkeypatch.setattr(feature_cache, "_write_shard", write)
    _build(tmp_path / "views", changed, augment=AUGMENT)
    assert written == ["shard-00001.safetensors", "shard-00004.safetensors", "shard-00006.safetensors"]


def test_a_cache_from_before_view_sizes_holding_every_view_of_every_image_still_reads(few, tmp_path):
    trained = few.with_name("few-train.jsonl")  # all training records: every image has every view
    trained.write_text("".join(line + "\n" for line in few.read_text().splitlines() if '"train"' in line))
    folder = _build(tmp_path / "cache", trained, augment=AUGMENT)
    expected = FeatureCache(folder)
    header = json.loads((folder / "header.json").read_text())
    del header["view_sizes"]
    (folder / "header.json").write_text(json.dumps(header))
    old = FeatureCache(folder)
    assert old.num_shards == expected.num_shards == 6 and old.index == expected.index


def test_other_augmentation_settings_are_refused_naming_them_and_overwrite_rebuilds(few, tmp_path):
    folder = _build(tmp_path / "cache", few, augment=AUGMENT)
    encoder = build_encoder(tiny_encoder("image"))
    other = replace(AUGMENT, greyscale=0.5)
    items = sources(read_manifest(few), "image", augment=other)
    with pytest.raises(StaleCacheError, match=r"what differs: augment\.greyscale\..*--overwrite"):
        FeatureCache(folder).check(encoder, items, augment=other)
    with pytest.raises(StaleCacheError, match=r"what differs: augment\b"):  # a plain config refuses it too
        FeatureCache(folder).check(encoder, sources(read_manifest(few), "image"))
    with pytest.raises(StaleCacheError, match=r"augment\.greyscale"):
        _build(tmp_path / "cache", few, augment=other)
    _build(tmp_path / "cache", few, augment=other, overwrite=True)
    FeatureCache(folder).check(encoder, items, augment=other)


def _image_views(data, dataset, keys):
    """record id -> the view its training item reads, for these sampler keys."""
    cache = data.caches["image"]
    seen = {}
    for index, draw in keys:
        record = dataset.records[index]
        row = dataset[(index, draw)]["image"][0]
        seen[record.id] = next(v for v in range(cache.views) if torch.equal(row, cache[view_key(record.id, v)]))
    return seen


def test_training_reads_a_view_per_seed_and_epoch_evaluation_reads_view_0(few, tmp_path, monkeypatch):
    encoders = {m: build_encoder(tiny_encoder(m)) for m in ("image", "text")}
    data = ManifestDataModule(str(few), batch_size=4, num_workers=0, feature_cache=str(tmp_path / "cache"),
                              encoders=encoders, augment=AUGMENT)
    data.prepare_data()
    data.setup("fit")
    dataset, _ = data.pair_batches("train")
    epoch = 0
    sampler = EpochSampler(len(dataset), lambda: epoch)
    views = []
    for epoch in (0, 1, 2, 0):
        views.append(_image_views(data, dataset, list(sampler)))
    assert views[3] == views[0]  # same (seed, epoch), same views
    assert views[0] != views[1] != views[2]
    assert set().union(*(v.values() for v in views)) == {0, 1, 2}
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert _image_views(data, dataset, list(sampler)) != views[0]

    val, _ = data.pair_batches("val")
    for index, record in enumerate(val.records):
        assert torch.equal(val[index]["image"][0], data.caches["image"][record.id])


def test_augment_is_a_config_mapping_and_needs_a_feature_cache(few):
    parser = ArgumentParser()
    parser.add_class_arguments(ManifestDataModule, "data", skip={"encoders"})
    config = parser.parse_string(f"data:\n  manifest: {few}\n  feature_cache: cache\n"
                                 "  augment: {views: 3, greyscale: 0.5}\n")
    assert parser.instantiate(config).data.augment == ImageAugment(views=3, greyscale=0.5)
    with pytest.raises(ValueError, match="needs `feature_cache`"):
        ManifestDataModule(str(few), augment=AUGMENT)
