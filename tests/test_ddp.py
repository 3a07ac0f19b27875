"""Two CPU processes (gloo) through a fit where skipped records leave the processes' batches of
different sizes, some of them empty: it must finish, not fail in a gather or hang in one."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
from test_cli import ROOT

TRAIN_KEPT, TRAIN_CORRUPT = 3, 5  # 8 records, 4 batches of 2 over 2 processes: at least one batch is empty
VAL_CORRUPT = {0, 2, 5}  # unshuffled shards: process 0's first batch (records 0, 2) is empty


def _write_small_set(shapes_manifest, folder):
    """8 training and 8 validation records copied from the shapes set, some with undecodable images."""
    records = [json.loads(line) for line in shapes_manifest.read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"][: TRAIN_KEPT + TRAIN_CORRUPT]
    val = [r for r in records if r["split"] == "val"][:8]
    corrupt = {r["id"] for r in train[TRAIN_KEPT:]} | {val[i]["id"] for i in VAL_CORRUPT}
    (folder / "images").mkdir(parents=True)
    for record in train + val:
        if record["id"] in corrupt:
            (folder / record["image"]).write_bytes(b"\x89PNG truncated")
        else:
            shutil.copy(shapes_manifest.parent / record["image"], folder / record["image"])
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in train + val))
    return manifest


def _run(args, cwd, timeout):
    """The CLI in its own process group, so that a hang kills the launched DDP processes too."""
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.cli", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"DDP fit still running after {timeout} s (a process waiting in a collective?):\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_ddp_fit_with_skipped_records_and_empty_batches_finishes_and_exports(shapes_manifest, tmp_path):
    manifest = _write_small_set(shapes_manifest, tmp_path / "data")
    out = tmp_path / "out"
    _run([
        "fit", "--config", ROOT / "configs/up.yaml", "--data.init_args.manifest", manifest,
        "--data.init_args.skip_bad_records", "true", "--data.init_args.feature_cache", "null",
        "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
        "--trainer.default_root_dir", out, "--trainer.logger", "false", "--trainer.max_epochs", "2",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.enable_checkpointing", "false", "--trainer.num_sanity_val_steps", "0",
        "--trainer.callbacks", "[]", "--trainer.callbacks+=stages.ExportPretrained",
    ], cwd=tmp_path, timeout=240)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["data/skipped"] == TRAIN_CORRUPT  # one epoch's count, summed over both processes
    assert math.isfinite(metrics["val/loss"]) and "val/text->image/R@1" in metrics
    assert (out / "model.safetensors").is_file()
