"""Stage processes that never outlive the runner that started them.

A stage command runs as a child that Linux kills when the runner dies (PR_SET_PDEATHSIG): a runner
killed alone leaves no stage training on behind it, which a rerun would train a second copy beside.
The SIGTERM or SIGINT the runner gets reaches the child's whole process group (its DDP ranks and
data workers), as Ctrl-C would without a runner in between.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from typing import Callable, Sequence

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
FORWARDED = (signal.SIGTERM, signal.SIGINT)


def run_child(command: Sequence[str]) -> int:
    """Run `command` in its own process group as a child that dies with this process, forwarding
    SIGTERM and SIGINT to that group; returns its exit code (negative: the signal that ended it)."""
    process = subprocess.Popen(list(command), preexec_fn=_die_with_parent(os.getpid()), process_group=0)

    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        returncode = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        # The runner was told to stop too, even if its child finished cleanly meanwhile: take the
        # signal now, as if it had come without a child in between, rather than start the next stage.
        signal.raise_signal(received[0])
    return returncode


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when `parent` dies; the child exits at once if
    `parent` died before the request took effect. None off Linux, where no such request exists.
    SIGKILL and not SIGTERM: a stage still stopping gracefully after its runner is gone could write
    into a folder that a new runner has already taken over."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child should only call it

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec
