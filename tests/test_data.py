import json
from types import SimpleNamespace

import pytest
from conftest import tiny_model_config
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import DataLoader

from datamodules import BadRecordError, ManifestDataModule, ManifestError, read_manifest, read_manifests
from datamodules.shapes import write_shapes_dataset
from oneencoder import OneEncoder


@pytest.fixture(scope="module")
def encoders():
    return OneEncoder(tiny_model_config()).encoders


@pytest.fixture
def small_set(tmp_path):
    manifest = write_shapes_dataset(tmp_path, train_per_combo=1)
    return manifest, [json.loads(line) for line in manifest.read_text().splitlines()]


def _rewrite(manifest, records):
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))


def _data(manifest, encoders, **kwargs):
    data = ManifestDataModule(str(manifest), batch_size=16, num_workers=0, encoders=encoders, **kwargs)
    data.setup("fit")
    return data


def test_manifest_errors_name_the_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "split": "train"}\n{"id": "a", "split": "train"}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: id 'a' already used on line 1"):
        read_manifest(manifest)
    manifest.write_text('{"id": "a", "split": "train"}\n\n{"id": "b", "split": "train"\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:3: not valid JSON"):
        read_manifest(manifest)
    manifest.write_text('{"id": "a", "split": "dev"}\n')
    with pytest.raises(ManifestError, match=r"`split` must be one of"):
        read_manifest(manifest)


def test_corrupt_image_gives_named_error_with_line_and_file(small_set, encoders):
    manifest, records = small_set
    (manifest.parent / records[0]["image"]).write_bytes(b"not a png at all")
    loader = _data(manifest, encoders).train_dataloader()
    with pytest.raises(BadRecordError, match=r"manifest.jsonl:1 \(id 'red-circle-top-left-train0'\): cannot decode image .*red-circle-top-left-train0.png.*skip_bad_records"):
        for _ in loader:
            pass


def test_corrupt_image_is_skipped_and_counted_when_asked(small_set, encoders):
    manifest, records = small_set
    (manifest.parent / records[0]["image"]).write_bytes(b"\x89PNG truncated")
    data = _data(manifest, encoders, skip_bad_records=True)
    batches = list(data.train_dataloader())
    assert sum(b["num_skipped"] for b in batches) == 1
    assert sum(b["size"] for b in batches) + 1 == len(data.splits["train"]) - len(data.splits["train"]) % 16


def test_missing_file_and_empty_caption_are_named_or_skipped(small_set, encoders):
    manifest, records = small_set
    records[0]["image"] = "images/gone.png"
    records[1]["text"] = ["  "]
    _rewrite(manifest, records)
    with pytest.raises(BadRecordError, match=r"manifest.jsonl:1 .*images/gone.png does not exist"):
        _data(manifest, encoders)
    data = _data(manifest, encoders, skip_bad_records=True)
    assert data.num_skipped_at_setup == 2
    assert len(data.splits["train"]) == len(data.splits["val"]) == 95  # line 1 is train, line 2 val


def test_training_draws_one_caption_evaluation_keeps_all(small_set, encoders):
    manifest, _ = small_set
    data = _data(manifest, encoders)
    train = next(iter(data.train_dataloader()))
    assert train["size"] == 16 and train["inputs"]["text"]["input_ids"].shape[0] == 16
    val = next(iter(data.val_dataloader()))
    owners = val["owners"]["text"]
    assert val["inputs"]["text"]["input_ids"].shape[0] == 3 * val["size"]
    # rows [0, size) are the pairs: each record's first caption, in the records' order
    assert owners[: val["size"], 0].tolist() == val["owners"]["image"][:, 0].tolist()
    assert (owners[: val["size"], 1] == 0).all() and (owners[val["size"] :, 1] > 0).all()


def test_splits_follow_the_manifest(small_set, encoders):
    manifest, _ = small_set
    data = _data(manifest, encoders)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 96, "val": 96, "test": 96}


def test_several_manifests_are_one_set_with_paths_from_each_ones_folder(tmp_path, encoders):
    first = write_shapes_dataset(tmp_path / "a", train_per_combo=1)
    second = tmp_path / "b" / "manifest.jsonl"
    second.parent.mkdir()
    records = [json.loads(line) for line in first.read_text().splitlines()]
    moved = [{**r, "id": f"b/{r['id']}", "image": f"../a/{r['image']}"} for r in records[:5]]
    _rewrite(second, moved)
    data = ManifestDataModule([str(first), str(second)], batch_size=16, num_workers=0, encoders=encoders)
    data.setup("fit")
    assert sum(len(v) for v in data.splits.values()) == len(records) + 5
    assert data.splits["train"][-1].path("image").resolve().is_file()
    _rewrite(second, records[:1])
    with pytest.raises(ManifestError, match=r"id '.*' is also in .*a/manifest.jsonl:1"):
        read_manifests([first, second])


def _batches_per_process(loader, world_size):
    """What each process gets once Lightning shards the loader's sampler, as it does under DDP."""
    return [
        len(DataLoader(loader.dataset, batch_size=loader.batch_size, drop_last=loader.drop_last,
                       sampler=DistributedSamplerWrapper(loader.sampler, num_replicas=world_size, rank=rank)))
        for rank in range(world_size)
    ]


def test_last_partial_batch_is_dropped_by_each_process_share_not_by_the_split(small_set, encoders):
    manifest, _ = small_set
    data = ManifestDataModule(str(manifest), batch_size=64, num_workers=0, encoders=encoders)
    data.setup("fit")  # 96 training records
    assert len(data.train_dataloader()) == 1  # one process: the last 32 are dropped
    data.trainer = SimpleNamespace(world_size=2)  # 48 records a process: fewer than a batch, all kept
    assert _batches_per_process(data.train_dataloader(), 2) == [1, 1]
