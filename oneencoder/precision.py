"""`precision: auto`: bf16 where this machine runs it fast, fp32 elsewhere.

Machines of one kind differ: one 2-core CPU has bf16 matrix units (AVX512-BF16, AMX) and multiplies
several times faster in bf16 than in fp32, another has none and runs bf16 several times slower. So
the choice is measured, not read from a flag: on a CPU, a short matmul in both dtypes (about a
second, once per machine: the ratio is cached under cache_home() by CPU model, torch version and
thread count); on CUDA, whether the device supports bf16. torch is imported where it is used, so that
a pipeline's settings are checked against these names without loading it (`oneencoder compare`).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from .files import atomic_write_text, cache_home

if TYPE_CHECKING:
    import torch

AUTO = "auto"
BF16 = "bf16-mixed"
FP32 = "32-true"
EncodingPrecision = Literal["auto", "bf16-mixed", "32-true"]  # what a frozen encoder fills a feature cache in
PRECISION_RECORD = "precision.json"  # in a stage's folder: what `auto` chose there, and why
MIN_SPEEDUP = 1.5  # bf16's matmul must beat fp32's by this much: autocast's casts cost the rest
SIZE = 1024  # the measured matmul: large enough for the matrix units to matter, a second in all


@dataclass
class Choice:
    """The precision chosen and why, as printed and recorded in a stage's folder."""

    precision: str
    reason: str


def choose_precision(accelerator: str | None = None) -> Choice:
    """bf16-mixed or 32-true for the device `accelerator` (Lightning's: auto, cpu, gpu, cuda) trains on."""
    import torch

    on_cuda = torch.cuda.is_available() and accelerator in (None, "auto", "gpu", "cuda")
    if on_cuda:
        if torch.cuda.is_bf16_supported():
            return Choice(BF16, f"CUDA device {torch.cuda.get_device_name()} supports bf16")
        return Choice(FP32, f"CUDA device {torch.cuda.get_device_name()} has no bf16")
    speedup = cpu_bf16_speedup()
    verdict = BF16 if speedup >= MIN_SPEEDUP else FP32
    return Choice(verdict, f"on this CPU ({cpu_name()}) a bf16 matmul runs {speedup:.2f}x as fast as fp32"
                           f" ({'at least' if verdict == BF16 else 'under'} {MIN_SPEEDUP}x)")


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """`precision` (auto, bf16-mixed or 32-true) as it runs on `device`: auto becomes the choice above."""
    import torch

    if precision not in get_args(EncodingPrecision):
        raise ValueError(f"precision must be one of {list(get_args(EncodingPrecision))} (got {precision!r})")
    return choose_precision(torch.device(device).type).precision if precision == AUTO else precision


def autocast(precision: str, device: torch.device | str) -> torch.autocast:
    """bf16 autocast on `device` where `precision` (resolved) is bf16-mixed; a context that changes
    nothing where it is 32-true."""
    import torch

    return torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == BF16)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_bf16_speedup() -> float:
    """fp32 matmul time / bf16 matmul time on this CPU, measured once per CPU model, torch and thread
    count and then read from the cache."""
    import torch

    key = f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    path = cache_home() / "precision.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict) or not isinstance(cached.get(key), (int, float)):
        cached = cached if isinstance(cached, dict) else {}
        cached[key] = matmul_seconds(torch.float32) / matmul_seconds(torch.bfloat16)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cached, indent=2))
    return float(cached[key])


def matmul_seconds(dtype: torch.dtype, size: int = SIZE, repeats: int = 5) -> float:
    """The fastest of `repeats` (size x size) @ (size x size) products in `dtype`, after a warm-up."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best
