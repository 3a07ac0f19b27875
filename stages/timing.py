"""Where a pipeline's time goes: each phase that ran (a feature cache, a fit, an evaluation, the
report) timed, printed as a table at the end and written to `<output>/timings.json`, so that the slow
phase is the one that gets cut, and a rerun shows what it skipped."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from oneencoder.files import atomic_write_text

TIMINGS_NAME = "timings.json"


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


@dataclass
class PhaseClock:
    phases: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as `name`; a block that raises is not recorded (the run stops there)."""
        started = time.monotonic()
        yield
        self.phases.append((name, time.monotonic() - started))

    def table(self) -> str:
        total = sum(seconds for _, seconds in self.phases)
        rows = [f"| {name} | {duration(seconds)} | {seconds / total:.0%} |" for name, seconds in self.phases] if total else []
        return "\n".join(["| phase | time | share |", "|---|---:|---:|", *rows, f"| total | {duration(total)} | |"])

    def write(self, folder: Path) -> Path:
        path = folder / TIMINGS_NAME
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"phases": [{"phase": n, "seconds": round(s, 1)} for n, s in self.phases],
                                            "total_seconds": round(sum(s for _, s in self.phases), 1)}, indent=2))
        return path
