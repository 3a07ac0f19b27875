"""Balanced sampling over several sources (OneLLM): one source per batch, round-robin, an epoch
truncated to the smallest source or stretched by repeat factors, the same order on a resume, and the
same source on every process under DDP."""

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
from conftest import tiny_encoder
from lightning.pytorch.trainer.connectors.data_connector import _DataConnector
from lightning.pytorch.trainer.states import RunningStage
from test_cli import ROOT

from datamodules import BalancedDataModule, PairCollator, Source
from datamodules.augment import ImageAugment
from datamodules.feature_cache import FeatureCache
from datamodules.sampling import BalancedBatchSampler
from datamodules.shapes import write_shapes_dataset
from oneencoder import OneEncoder, OneEncoderConfig

PAIRS = {"image": ("image", "text"), "audio": ("audio", "text"), "video": ("video", "text")}


def _encoders(modalities):
    config = OneEncoderConfig(encoders={m: tiny_encoder(m) for m in modalities}, embed_dim=32, up_heads=2, up_ff_dim=64)
    return OneEncoder(config).encoders


@pytest.fixture(scope="module")
def encoders():
    return _encoders(("image", "text", "audio", "video"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    manifest = write_shapes_dataset(tmp_path_factory.mktemp("balanced"), train_per_combo=1)
    return manifest, [json.loads(line) for line in manifest.read_text().splitlines()]


def _source_manifest(shapes, name, train, val=2, first=0):
    """A manifest beside the shapes set with `train` training and `val` validation records of it."""
    manifest, records = shapes
    chosen = [r for r in records if r["split"] == "train"][first : first + train]
    chosen += [r for r in records if r["split"] == "val"][:val]
    path = manifest.parent / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return str(path)


def _data(sources, encoders, batch_size=2):
    data = BalancedDataModule(sources, batch_size=batch_size, num_workers=0, encoders=encoders)
    data.setup("fit")
    return data


def _epoch(sampler):
    return [(source, list(keys)) for source, keys in sampler]


def test_batches_hold_one_source_in_turn_and_the_epoch_stops_at_the_smallest(shapes, encoders):
    sizes = {"image": 6, "audio": 4, "video": 8}  # 3, 2 and 4 batches of 2: every source gives 2
    sources = [Source(_source_manifest(shapes, m, n), PAIRS[m]) for m, n in sizes.items()]
    data = _data(sources, encoders)
    loader = data.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 6
    assert [b["modalities"] for b in batches] == [PAIRS["image"], PAIRS["audio"], PAIRS["video"]] * 2
    for batch in batches:
        assert set(batch["inputs"]) == set(batch["modalities"]) and batch["size"] == 2
        first, second = (batch["owners"][m][:, 0].tolist() for m in batch["modalities"])
        assert first == second  # each row pairs one record's two modalities
    for source in range(3):  # no record of a source twice: repeat 1 is one pass at most
        indices = [i for b in batches[source::3] for i in b["owners"]["text"][:, 0].tolist()]
        assert len(set(indices)) == len(indices) == 4


def test_a_repeat_factor_raises_a_source_share():
    epoch = _epoch(BalancedBatchSampler([12, 8], [1.0, 1.0], 2, lambda: 0))
    assert [s for s, _ in epoch] == [0, 1] * 4  # 8 records: 4 batches
    epoch = _epoch(BalancedBatchSampler([12, 8], [1.0, 2.0], 2, lambda: 0))
    assert [s for s, _ in epoch] == [0, 1] * 6  # 16 draws: 8 batches, truncated to the other's 6
    drawn = Counter(index for source, keys in epoch if source == 1 for index, _ in keys)
    assert sorted(drawn) == list(range(8)) and sorted(drawn.values()) == [1] * 4 + [2] * 4
    epoch = _epoch(BalancedBatchSampler([12, 8], [0.5, 1.0], 2, lambda: 0))
    assert [s for s, _ in epoch] == [0, 1] * 3  # half of 12: 3 batches


def test_an_epoch_repeats_on_resume_and_the_next_differs():
    epoch = {"now": 3}

    def sampler():
        return BalancedBatchSampler([10, 7], [1.0, 1.5], 3, lambda: epoch["now"])

    first = _epoch(sampler())
    assert _epoch(sampler()) == first  # a resumed run: a new sampler, the same epoch
    epoch["now"] = 4
    assert _epoch(sampler()) != first
    assert [s for s, _ in _epoch(sampler())] == [s for s, _ in first]


def test_a_source_smaller_than_one_batch_gives_one_partial_batch():
    epoch = _epoch(BalancedBatchSampler([3, 10], [1.0, 1.0], 4, lambda: 0))
    assert [(s, len(keys)) for s, keys in epoch] == [(0, 3), (1, 4)]


def test_val_loaders_are_one_per_source_in_order(shapes, encoders):
    sources = [Source(_source_manifest(shapes, m, 2, val=3), PAIRS[m]) for m in ("audio", "image")]
    loaders = _data(sources, encoders).val_dataloader()
    assert [[b["modalities"] for b in loader] for loader in loaders] == [[PAIRS["audio"]] * 2, [PAIRS["image"]] * 2]
    assert [sum(b["size"] for b in loader) for loader in loaders] == [3, 3]


def test_every_source_builds_and_reads_its_own_feature_cache(shapes, encoders, tmp_path):
    sources = [Source(_source_manifest(shapes, m, 4), PAIRS[m], feature_cache=str(tmp_path / m))
               for m in ("image", "audio")]
    BalancedDataModule(sources, batch_size=2, num_workers=0, encoders=encoders).build_feature_cache("cpu")
    batches = list(_data(sources, encoders).train_dataloader())
    assert [b["modalities"] for b in batches] == [PAIRS["image"], PAIRS["audio"]] * 2
    assert all(set(b["inputs"][m]) == {"features", "mask"} for b in batches for m in b["modalities"])


def test_an_image_source_caches_and_reads_its_augmented_views(shapes, encoders, tmp_path):
    augment = ImageAugment(views=2)
    sources = [Source(_source_manifest(shapes, "image", 4), PAIRS["image"], feature_cache=str(tmp_path), augment=augment)]
    BalancedDataModule(sources, batch_size=2, num_workers=0, encoders=encoders).build_feature_cache("cpu")
    assert FeatureCache(tmp_path / "image").views == 2  # a source without `augment` would refuse this cache
    assert len(list(_data(sources, encoders).train_dataloader())) == 2


def test_an_empty_batch_still_names_its_pair():
    batch = PairCollator({}, PAIRS["video"])([None, None])
    assert batch["modalities"] == PAIRS["video"] and batch["size"] == 0 and batch["num_skipped"] == 2


def test_settings_a_user_gets_wrong_are_named(shapes, encoders):
    with pytest.raises(ValueError, match="at least one source"):
        BalancedDataModule([])
    with pytest.raises(ValueError, match="`repeat` must be > 0"):
        Source("m.jsonl", PAIRS["image"], repeat=0)
    with pytest.raises(ValueError, match="share the feature cache"):
        BalancedDataModule([Source("a.jsonl", PAIRS["image"], "cache"), Source("b.jsonl", PAIRS["audio"], "cache")])
    no_train = _source_manifest(shapes, "no-train", 0)
    data = _data([Source(_source_manifest(shapes, "image", 4), PAIRS["image"]), Source(no_train, PAIRS["audio"])],
                 encoders)
    with pytest.raises(ValueError, match=r"no-train.jsonl has no 'train' records with audio and text"):
        data.train_dataloader()


# One DDP process: the sampler alone (the loader builds whatever batches it names, as the tests above
# show), so that the processes start in seconds.
RANK_SCRIPT = """
import json, sys
import torch.distributed as dist
from datamodules.augment import ImageAugment
from datamodules.feature_cache import FeatureCache
from datamodules.sampling import BalancedBatchSampler
rank, port = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
sampler = BalancedBatchSampler([10, 13], [1.0, 1.5], 2, lambda: 0)
print(json.dumps({"length": len(sampler), "steps": [[source, [list(k) for k in keys]] for source, keys in sampler]}))
dist.destroy_process_group()
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_process_takes_the_same_source_at_each_step():
    port = _free_port()
    processes = [
        subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(rank), str(port)], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        for rank in range(2)
    ]
    first, second = (json.loads(process.communicate(timeout=120)[0]) for process in processes)
    # global batches of 2 x 2: 10 draws give 2, 13 * 1.5 = 20 give 5, so 2 steps per source
    assert first["length"] == second["length"] == len(first["steps"]) == len(second["steps"]) == 4
    assert [s for s, _ in first["steps"]] == [s for s, _ in second["steps"]] == [0, 1, 0, 1]
    for (_, keys), (_, other) in zip(first["steps"], second["steps"]):
        assert len(keys) == len(other) == 2 and not {i for i, _ in keys} & {i for i, _ in other}
    single = _epoch(BalancedBatchSampler([10, 13], [1.0, 1.5], 2, lambda: 0))
    assert [s for s, _ in single] == [0, 1] * 5  # one process: batches of 2, 5 per source


def test_lightning_neither_wraps_nor_replaces_the_sampler_under_ddp(shapes, encoders):
    sources = [Source(_source_manifest(shapes, m, 4), PAIRS[m]) for m in ("image", "audio")]
    loader = _data(sources, encoders).train_dataloader()
    distributed = SimpleNamespace(_accelerator_connector=SimpleNamespace(use_distributed_sampler=True,
                                                                         is_distributed=True))
    prepared = _DataConnector(distributed)._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING)
    assert prepared is loader and isinstance(loader.sampler, BalancedBatchSampler)
