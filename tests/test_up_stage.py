"""The UP stage end to end on the planted shapes set, trained once per module."""

import json
import math
from functools import partial

import pytest
import torch
from conftest import tiny_model_config
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader

from datamodules import ManifestDataModule, read_manifest
from oneencoder import ContrastiveLoss, OneEncoder
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


def _feature_batch(model, size=8, length=5, seed=0):
    """Precomputed token features, as batches from a feature cache carry them."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        m: {"features": torch.randn(size, length, model.encoders[m].dim, generator=g),
            "mask": torch.ones(size, length, dtype=torch.bool)}
        for m in ("image", "text")
    }
    owners = {m: torch.stack([torch.arange(size), torch.zeros(size, dtype=torch.long)], dim=1) for m in inputs}
    return {"inputs": inputs, "owners": owners, "size": size, "num_skipped": 0, "modalities": ("image", "text")}


EMPTY_BATCH = {"inputs": {}, "owners": {}, "size": 0, "num_skipped": 8, "modalities": ("image", "text")}  # all skipped


def test_a_batch_with_every_record_skipped_still_gives_a_loss_tied_to_every_trainable_parameter():
    stage = UPStage(OneEncoder(tiny_model_config()), loss=ContrastiveLoss.clip())
    loss = stage.training_step(EMPTY_BATCH, 0)
    assert loss == 0
    loss.backward()  # under DDP, backward on every process is what DDP's gradient sync waits for
    trainable = [p for p in stage.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for p in trainable)


def test_evaluation_counts_an_empty_batch_and_logs_nothing_when_no_row_was_kept():
    model = OneEncoder(tiny_model_config())
    stage = UPStage(model)
    stage.eval()
    with torch.no_grad():
        stage.validation_step(EMPTY_BATCH, 0)
        assert stage.val_retrieval["image-text"].compute() == {}
        stage.validation_step(_feature_batch(model), 1)
    assert set(stage.val_retrieval["image-text"].compute()) >= {"image->text/R@1", "text->image/R@1"}


class _ScaleAtEachStep(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(pl_module.losses["image-text"].log_logit_scale.item())


def test_logit_scale_parameter_never_passes_its_cap_after_large_steps():
    model = OneEncoder(tiny_model_config()).requires_grad_(False)  # only the scale trains
    stage = UPStage(model, loss=ContrastiveLoss.clip(),
                    optimizer=partial(torch.optim.SGD, lr=100.0, maximize=True))
    # Gradient ascent on random pairs: a larger scale only raises their loss, so every step pushes the
    # scale far past the cap.
    batches = [_feature_batch(model, seed=i) for i in range(4)]
    watch = _ScaleAtEachStep()
    trainer = Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[watch])
    trainer.fit(stage, train_dataloaders=DataLoader(batches, batch_size=None))
    after_steps = [*watch.seen[1:], stage.losses["image-text"].log_logit_scale.item()]
    assert after_steps == pytest.approx([math.log(100.0)] * 4)  # pushed past the cap, put back on it


def test_biases_norms_tokens_and_the_logit_scale_are_not_decayed():
    stage = UPStage(OneEncoder(tiny_model_config()), loss=ContrastiveLoss.clip(),
                    optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1))
    groups = stage.configure_optimizers().param_groups
    names = {id(p): n for n, p in stage.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    exempt = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decayed | exempt == {n for n, p in stage.named_parameters() if p.requires_grad}
    assert "losses.image-text.log_logit_scale" in exempt and "model.up.norm.weight" in exempt
    assert {n for n in exempt if n.endswith(".bias")} == {n for n in names.values() if n.endswith(".bias")}
    assert "model.tokens.image.vectors" in exempt
    assert "model.heads.image.net.0.weight" in decayed
    assert all(stage.get_parameter(n).ndim == 2 for n in decayed)
