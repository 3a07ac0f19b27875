"""The UP stage end to end on the planted shapes set, trained once per module."""

import json
from functools import partial

import pytest
import torch
from conftest import tiny_model_config
from lightning.pytorch import Trainer, seed_everything

from datamodules import ManifestDataModule, read_manifest
from oneencoder import OneEncoder
from oneencoder.freezing import state_fingerprint
from oneencoder.readers import ImageReader
from oneencoder.retrieval import retrieval_metrics
from stages import ExportPretrained, UPStage

CHANCE_R1 = 1 / 96  # one val image per (colour, shape, corner)


def _fit(manifest, root, epochs):
    seed_everything(0)
    model = OneEncoder(tiny_model_config())
    stage = UPStage(model, optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-3))
    data = ManifestDataModule(str(manifest), batch_size=32, num_workers=0, encoders=model.encoders)
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
        callbacks=[ExportPretrained()],
    )
    return model, stage, data, trainer


@pytest.fixture(scope="module")
def trained(shapes_manifest, tmp_path_factory):
    root = tmp_path_factory.mktemp("up")
    model, stage, data, trainer = _fit(shapes_manifest, root, epochs=30)
    before = {
        "encoders": {m: state_fingerprint(e.module) for m, e in model.encoders.items()},
        "trainable": {k: v.clone() for k, v in model.state_dict().items()},
    }
    trainer.fit(stage, datamodule=data)
    return {"model": model, "trainer": trainer, "root": root, "before": before}


def test_frozen_encoders_are_bit_identical_after_fit(trained):
    for modality, encoder in trained["model"].encoders.items():
        assert state_fingerprint(encoder.module) == trained["before"]["encoders"][modality]


def test_every_trainable_tensor_was_trained(trained):
    after = trained["model"].state_dict()
    unchanged = [k for k, v in trained["before"]["trainable"].items() if torch.equal(v, after[k])]
    assert unchanged == []


def test_planted_set_retrieval_is_far_above_chance(trained):
    metrics = trained["trainer"].callback_metrics
    print({k: round(float(v), 3) for k, v in metrics.items() if "R@" in k})
    assert metrics["val/text->image/R@1"] > 10 * CHANCE_R1
    assert metrics["val/image->text/R@1"] > 10 * CHANCE_R1
    assert metrics["val/text->image/R@10"] > 0.6


def test_exported_folder_is_the_best_model_and_scores_what_metrics_json_says(trained, shapes_manifest):
    root = trained["root"]
    assert {"model.safetensors", "config.json", "metrics.json"} <= {p.name for p in root.iterdir()}
    recorded = json.loads((root / "metrics.json").read_text())["metrics"]
    assert recorded["val/loss"] == pytest.approx(trained["trainer"].callbacks[0].best)
    loaded = OneEncoder.from_pretrained(root)  # no training code involved from here on
    val = [r for r in read_manifest(shapes_manifest) if r.split == "val"]
    images = loaded.embed("image", [ImageReader()(r.path("image")) for r in val])
    captions = [(i, c) for i, r in enumerate(val) for c in r.captions()]
    texts = loaded.embed("text", [c for _, c in captions])
    owners = torch.tensor([i for i, _ in captions])
    metrics = retrieval_metrics(images, torch.arange(len(val)), texts, owners, ("image", "text"))
    for name in ("text->image/R@1", "image->text/R@1", "text->image/R@10"):
        assert metrics[name] == pytest.approx(recorded[f"val/{name}"], abs=1e-6)


def test_optimizer_holds_only_trainable_parameters(trained):
    optimizer = trained["trainer"].optimizers[0]
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    model = trained["model"]
    assert held.isdisjoint(id(p) for e in model.encoders.values() for p in e.module.parameters())
    assert {id(p) for p in model.parameters() if p.requires_grad} <= held
