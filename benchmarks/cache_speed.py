"""Training from the feature cache against encoding online: `make bench`.

One run, one machine: the same UP stage on the same records (the planted shapes images at 224 px,
train split only, so that building the cache and an online epoch see the same items) with ViT-base-
and BERT-base-sized encoders (random weights: timing does not depend on them). Measured, per
training precision:
  (a) online:  samples/s with the encoders run on every step,
  (b) cached:  samples/s reading features from the cache (fp32, and fp16 storage),
  (c) memory:  samples/s of the same step on batches already collated in memory (no I/O, no collation),
plus the cache build time against one online epoch, cache sizes, peak RAM, the wall time of a stage
with the cache build against the same number of online epochs, and where a step's time goes.
Every measurement runs in its own process, so that its peak RAM is its own.

    python -m benchmarks.cache_speed [--quick] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
VIT_BASE = {"model_type": "vit", "image_size": 224, "patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072}
BERT_BASE = {"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "vocab_size": 30522}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def model_config(quick: bool) -> Any:
    from datamodules.shapes import VOCAB
    from oneencoder import EncoderConfig, OneEncoderConfig

    image = {**VIT_BASE, **TINY, "image_size": 32, "patch_size": 8} if quick else VIT_BASE
    text = {**BERT_BASE, **TINY, "vocab_size": 64} if quick else BERT_BASE
    return OneEncoderConfig(encoders={
        "image": EncoderConfig(kind="image", model_config=image),
        "text": EncoderConfig(kind="text", model_config=text, vocab=VOCAB),
    })


# --- one measurement per process ----------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process plus its largest dataloader worker (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + workers) / 1024


def data_module(spec: dict[str, Any], model: Any, cache: str | None, dtype: str = "float32") -> Any:
    from datamodules import ManifestDataModule

    return ManifestDataModule(
        spec["manifest"], batch_size=spec["batch_size"], num_workers=spec["num_workers"],
        feature_cache=cache, cache_dtype=dtype, encoders=model.encoders,
    )


def build(spec: dict[str, Any]) -> dict[str, Any]:
    from oneencoder import OneEncoder

    model = OneEncoder(model_config(spec["quick"]))
    data = data_module(spec, model, spec["cache"], spec["dtype"])
    # Loading the weights is paid once per stage, online too: time it apart from the encoding.
    start = time.perf_counter()
    for encoder in model.encoders.values():
        encoder.to("cpu")  # loads the weights
    loaded = time.perf_counter()
    data.build_feature_cache("cpu")
    seconds = time.perf_counter() - loaded
    size = sum(p.stat().st_size for p in Path(spec["cache"]).rglob("*") if p.is_file())
    return {"seconds": seconds, "load_s": loaded - start, "bytes": size, "peak_rss_mb": peak_rss_mb()}


class InMemoryBatches:
    """One epoch of collated batches, replayed: the step without any data loading."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def train(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything

    from oneencoder import OneEncoder
    from stages import UPStage

    class StepTimes(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.sizes: list[int] = []

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.times.append(time.perf_counter())
            self.sizes.append(batch["size"])

    seed_everything(0)
    model = OneEncoder(model_config(spec["quick"]))
    stage = UPStage(model, optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-3))
    variant = spec["variant"]
    cache = None if variant == "online" else spec["caches"]["float16" if variant == "cached_fp16" else "float32"]
    data = data_module(spec, model, cache, "float16" if variant == "cached_fp16" else "float32")
    if variant == "memory":
        data.setup("fit")
        loader: Any = InMemoryBatches(list(data.train_dataloader()))
    else:
        loader = data
    timer = StepTimes()
    trainer = Trainer(
        max_epochs=spec["epochs"], precision=spec["precision"], accelerator="cpu", devices=1, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer], default_root_dir=spec["workdir"],
    )
    start = time.perf_counter()
    if variant == "memory":
        trainer.fit(stage, train_dataloaders=loader)
    else:
        trainer.fit(stage, datamodule=loader)
    wall = time.perf_counter() - start
    # Steady state: from the end of the first step to the end of the last, epoch changes included.
    rate = sum(timer.sizes[1:]) / (timer.times[-1] - timer.times[0])
    return {"samples_per_s": rate, "wall_s": wall, "epochs": spec["epochs"], "steps": len(timer.times),
            "encoders_loaded": any(e.is_loaded for e in model.encoders.values()), "peak_rss_mb": peak_rss_mb()}


def profile(spec: dict[str, Any]) -> dict[str, Any]:
    """Where one training step's time goes, on cached batches in memory, in `spec["precision"]`: forward
    per module (hooks), loss, backward, optimizer; the profiler's top operators; and the step's FLOPs
    (torch's FlopCounterMode, forward and backward), so that its achieved FLOP/s can be set against the
    machine's matmul peak. With `spec["compile"]` the projection and heads run `torch.compile`d (the
    FLOPs counted eagerly, the time to compile reported apart, no per-module times: hooks would break
    the compiled graphs)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    from torch.utils.flop_counter import FlopCounterMode

    from oneencoder import ContrastiveLoss, OneEncoder

    torch.manual_seed(0)
    model = OneEncoder(model_config(spec["quick"])).train()
    data = data_module(spec, model, spec["caches"]["float32"])
    data.setup("fit")
    batches = list(data.train_dataloader())
    loss_fn = ContrastiveLoss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    phases: dict[str, float] = {}

    def timed(name: str, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(lambda *_: phases.__setitem__(f"_{name}", time.perf_counter()))
        module.register_forward_hook(
            lambda *_: phases.__setitem__(name, phases.get(name, 0.0) + time.perf_counter() - phases[f"_{name}"])
        )

    bf16 = spec["precision"].startswith("bf16")

    def step(batch: dict[str, Any]) -> None:
        marks = [time.perf_counter()]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as Lightning's bf16-mixed on the CPU
            embeddings = model(batch["inputs"])
            marks.append(time.perf_counter())
            loss = loss_fn(embeddings["image"][: batch["size"]], embeddings["text"][: batch["size"]])["loss"]
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad()
        marks.append(time.perf_counter())
        for name, begin, end in zip(("forward (all)", "loss", "backward", "optimizer"), marks, marks[1:]):
            phases[name] = phases.get(name, 0.0) + end - begin

    step(batches[0])  # warm-up
    with FlopCounterMode(display=False) as counter:
        step(batches[0])
    step_flops = counter.get_total_flops()
    compile_s = None
    if spec.get("compile"):
        model.up = torch.compile(model.up)
        for modality in list(model.heads):
            model.heads[modality] = torch.compile(model.heads[modality])
        started = time.perf_counter()
        for batch in batches[:3]:  # every batch shape the loop meets, compiled before it is timed
            step(batch)
        compile_s = time.perf_counter() - started
    else:
        for modality in model.heads:
            timed(f"forward: {modality} head", model.heads[modality])
        timed("forward: universal projection", model.up)
    phases.clear()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            step(batch)
    total = sum(phases[n] for n in ("forward (all)", "loss", "backward", "optimizer"))
    shares = {name: seconds / total for name, seconds in phases.items() if not name.startswith("_")}
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    ops = {e.key: e.self_cpu_time_total / 1e6 / len(batches) for e in top}
    step_s = total / len(batches)
    return {"step_s": step_s, "shares": shares, "top_ops_s_per_step": ops, "step_flops": step_flops,
            "achieved_gflops": step_flops / step_s / 1e9, "compile_s": compile_s}


CHILDREN = {"build": build, "train": train, "profile": profile}


def child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh Python process; its result is the last line it prints."""
    command = [sys.executable, "-m", "benchmarks.cache_speed", "--child", kind, json.dumps(spec)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark step {kind} {spec.get('variant', '')} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the whole run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from datamodules.manifest import read_manifest
    from datamodules.shapes import write_shapes_dataset

    workdir = Path(tempfile.mkdtemp(prefix="oneencoder-bench-"))
    full = write_shapes_dataset(workdir / "shapes", train_per_combo=1, size=32 if args.quick else 224)
    manifest = workdir / "shapes" / "train.jsonl"
    train_lines = [line for line, r in zip(full.read_text().splitlines(), read_manifest(full)) if r.split == "train"]
    manifest.write_text("\n".join(train_lines[: args.records]) + "\n")
    spec = {"manifest": str(manifest), "batch_size": args.batch_size, "num_workers": args.num_workers,
            "quick": args.quick, "workdir": str(workdir),
            "caches": {d: str(workdir / f"cache-{d}") for d in ("float32", "float16")}}

    results: dict[str, Any] = {"machine": machine(), "records": len(train_lines[: args.records]),
                               "batch_size": args.batch_size, "num_workers": args.num_workers,
                               "encoders": "tiny (quick)" if args.quick else "ViT-base/16 224 px + BERT-base, random",
                               "cache": {}, "precisions": {}, "profiles": {}}
    builds: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(args.repeats):  # alternated and repeated, as the training runs below
        for dtype, folder in spec["caches"].items():
            print(f"building the {dtype} cache (repeat {repeat + 1}) ...", flush=True)
            target = folder if repeat == 0 else f"{folder}-repeat{repeat}"
            builds.setdefault(dtype, []).append(child("build", {**spec, "cache": target, "dtype": dtype}))
            if repeat:
                shutil.rmtree(target)
    for dtype, measured in builds.items():
        ordered = sorted(measured, key=lambda b: b["seconds"])
        results["cache"][dtype] = {**ordered[len(ordered) // 2], "seconds_all": [b["seconds"] for b in measured]}
    for precision in args.precisions:
        print(f"{precision}: online, {args.online_epochs[precision]} epochs ...", flush=True)
        runs = {"online": child("train", {**spec, "variant": "online", "precision": precision,
                                          "epochs": args.online_epochs[precision]})}
        # Separate processes on a shared machine differ by ~10% run to run: alternate the cached and
        # in-memory runs and keep each one's median, so that b/c compares like with like.
        repeats: dict[str, list[dict[str, Any]]] = {}
        for repeat in range(args.repeats if precision == "32-true" else 1):
            for variant in ("cached", "cached_fp16", "memory"):
                epochs = args.run_epochs[precision]
                print(f"{precision}: {variant}, {epochs} epochs (repeat {repeat + 1}) ...", flush=True)
                repeats.setdefault(variant, []).append(
                    child("train", {**spec, "variant": variant, "precision": precision, "epochs": epochs})
                )
        runs.update({variant: median_run(measured) for variant, measured in repeats.items()})
        results["precisions"][precision] = summarise(runs, results["cache"]["float32"], args.epochs)
    for precision in args.precisions:
        for compiled in (False, True):
            name = f"{precision}, compiled" if compiled else precision
            print(f"profiling a {name} step ...", flush=True)
            results["profiles"][name] = child("profile", {**spec, "precision": precision, "compile": compiled})
    results["cache"]["fp16_over_fp32_size"] = results["cache"]["float16"]["bytes"] / results["cache"]["float32"]["bytes"]
    return results


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["samples_per_s"])
    return {**ordered[len(ordered) // 2], "samples_per_s_all": [r["samples_per_s"] for r in runs]}


def summarise(runs: dict[str, dict[str, Any]], build: dict[str, Any], epochs: int) -> dict[str, Any]:
    online, cached = runs["online"], runs["cached"]
    # A run's epoch time is its wall time spread over its epochs; a stage of `epochs` epochs is measured
    # when the run had that many, else estimated from it.
    online_epoch_s = online["wall_s"] / online["epochs"]
    online_stage_s = online_epoch_s * epochs
    cached_stage_s = build["load_s"] + build["seconds"] + cached["wall_s"] / cached["epochs"] * epochs
    return {
        "runs": runs,
        "b_over_a": runs["cached"]["samples_per_s"] / online["samples_per_s"],
        "b_over_c": runs["cached"]["samples_per_s"] / runs["memory"]["samples_per_s"],
        "b16_over_c": runs["cached_fp16"]["samples_per_s"] / runs["memory"]["samples_per_s"],
        "build_over_online_epoch": build["seconds"] / online_epoch_s,
        "online_epoch_s": online_epoch_s,
        "stage_epochs": epochs,
        "online_stage_s": online_stage_s,
        "online_stage_measured": online["epochs"] == epochs,
        "cached_stage_with_build_s": cached_stage_s,
        "cached_stage_measured": cached["epochs"] == epochs,
        "stage_speedup": online_stage_s / cached_stage_s,
    }


PEAK_SIZE = 2048  # the matmul whose FLOP/s stands for the machine's peak
BF16_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")  # what decides bf16's speed on x86


def machine() -> dict[str, Any]:
    """The CPU (model, its bf16-relevant flags) and its matmul peak in fp32 and bf16 (GFLOP/s)."""
    import os

    import torch

    from oneencoder.precision import cpu_name, matmul_seconds

    cpuinfo = Path("/proc/cpuinfo")
    flags_line = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "") \
        if cpuinfo.exists() else ""
    flags = set(flags_line.partition(":")[2].split())
    peaks = {name: 2 * PEAK_SIZE**3 / matmul_seconds(dtype, PEAK_SIZE) / 1e9
             for name, dtype in (("32-true", torch.float32), ("bf16-mixed", torch.bfloat16))}
    return {"cpu": cpu_name(), "cpu_flags": [f for f in BF16_FLAGS if f in flags], "cores": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "matmul_gflops": peaks}


def table(results: dict[str, Any]) -> str:
    cache = results["cache"]
    lines = [
        f"records {results['records']}, batch {results['batch_size']}, workers {results['num_workers']};"
        f" encoders: {results['encoders']}; {results['machine']['cores']} cores",
        f"cache build fp32 {cache['float32']['seconds']:.1f} s (+ {cache['float32']['load_s']:.1f} s loading the"
        f" encoders), {cache['float32']['bytes'] / 2**20:.1f} MiB;"
        f" fp16 {cache['float16']['seconds']:.1f} s, {cache['float16']['bytes'] / 2**20:.1f} MiB"
        f" (fp16/fp32 size {cache['fp16_over_fp32_size']:.3f}); build peak RAM {cache['float32']['peak_rss_mb']:.0f} MiB",
        "",
        "| precision | (a) online/s | (b) cached/s | (b) fp16 cache/s | (c) in memory/s | b/a | b/c | build / online epoch"
        " | stage: online | stage: build + cached | peak RAM a / b / c (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for precision, s in results["precisions"].items():
        r = s["runs"]
        online_stage = f"{s['online_stage_s']:.0f} s" + ("" if s["online_stage_measured"] else " (est.)")
        cached_stage = f"{s['cached_stage_with_build_s']:.0f} s" + ("" if s["cached_stage_measured"] else " (est.)")
        lines.append(
            f"| {precision} | {r['online']['samples_per_s']:.2f} | {r['cached']['samples_per_s']:.2f}"
            f" | {r['cached_fp16']['samples_per_s']:.2f} | {r['memory']['samples_per_s']:.2f} | {s['b_over_a']:.1f}"
            f" | {s['b_over_c']:.3f} | {s['build_over_online_epoch']:.2f} | {s['stage_epochs']} ep: {online_stage}"
            f" | {cached_stage} ({s['stage_speedup']:.1f}x)"
            f" | {r['online']['peak_rss_mb']:.0f} / {r['cached']['peak_rss_mb']:.0f} / {r['memory']['peak_rss_mb']:.0f} |"
        )
    cpu = results["machine"]
    lines += ["", f"CPU: {cpu['cpu']} (flags: {', '.join(cpu['cpu_flags']) or 'none of ' + ', '.join(BF16_FLAGS)});"
                  f" {PEAK_SIZE}x{PEAK_SIZE} matmul peak: "
                  + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in cpu["matmul_gflops"].items()), "",
              "| precision | cached step (ms) | step GFLOP | achieved GFLOP/s | share of that precision's matmul peak"
              " | compiling (s) |",
              "|---|---|---|---|---|---|"]
    for name, profile in results["profiles"].items():
        peak = cpu["matmul_gflops"][name.split(",")[0]]
        compiling = "" if profile.get("compile_s") is None else f"{profile['compile_s']:.0f}"
        lines.append(f"| {name} | {profile['step_s'] * 1000:.0f} | {profile['step_flops'] / 1e9:.1f}"
                     f" | {profile['achieved_gflops']:.0f} | {profile['achieved_gflops'] / peak:.1%} | {compiling} |")
    for precision, profile in results["profiles"].items():
        lines += ["", f"where a {precision} step's time goes (step {profile['step_s'] * 1000:.0f} ms on cached batches):"]
        lines += [f"  {name:32s} {share:6.1%}" for name, share in sorted(profile["shares"].items(), key=lambda x: -x[1])]
        lines += ["top operators (self CPU s per step):"]
        lines += [f"  {name:32s} {seconds:.4f}" for name, seconds in profile["top_ops_s_per_step"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny encoders and 32 px images: checks the script")
    parser.add_argument("--name", default=None, help="results/<name>.json (default: cpu, or quick)")
    parser.add_argument("--records", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=10,
                        help="the stage length compared, and the epochs of every 32-true run")
    parser.add_argument("--bf16-epochs", type=int, default=1,
                        help="epochs of the cached and in-memory bf16-mixed runs (bf16 is slow on CPUs without bf16"
                             " units; stage times are then estimated from epoch times and marked so)")
    parser.add_argument("--bf16-online-epochs", type=int, default=1, help="epochs of the bf16-mixed online run")
    parser.add_argument("--repeats", type=int, default=3,
                        help="cache builds and 32-true cached and in-memory runs, alternated; medians are kept")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    if args.child:
        kind, spec = args.child
        print(json.dumps(CHILDREN[kind](json.loads(spec))))
        return
    if args.quick:
        args.epochs = args.bf16_epochs = args.bf16_online_epochs = 2
        args.repeats = 1
    args.run_epochs = {"32-true": args.epochs, "bf16-mixed": args.bf16_epochs}
    args.online_epochs = {"32-true": args.epochs, "bf16-mixed": args.bf16_online_epochs}
    results = run(args)
    name = args.name or ("quick" if args.quick else "cpu")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nwrote {RESULTS / f'{name}.json'}")


if __name__ == "__main__":
    main()
