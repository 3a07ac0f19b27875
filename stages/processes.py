"""Stage processes that never outlive the runner that started them.

A stage command runs as a child that Linux kills when the runner dies (PR_SET_PDEATHSIG): a runner
killed alone leaves no stage training on behind it, which a rerun would train a second copy beside.
The ranks a DDP stage starts ask for the same when their command starts (die_with_parent_under_runner),
so they die with the stage child. The SIGTERM or SIGINT the runner gets reaches the child's whole
process group (its DDP ranks and data workers), as Ctrl-C would without a runner in between.
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
UNDER_RUNNER = "ONEENCODER_UNDER_RUNNER"  # set for a stage child, inherited by the DDP ranks it starts


def run_child(command: Sequence[str]) -> int:
    """Run `command` in its own process group as a child that dies with this process, forwarding
    SIGTERM and SIGINT to that group; returns its exit code (negative: the signal that ended it)."""
    process = subprocess.Popen(list(command), preexec_fn=_die_with_parent(os.getpid()), process_group=0,
                               env={**os.environ, UNDER_RUNNER: "1"})

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


def die_with_parent_under_runner() -> None:
    """In a process a runner started, directly or not: ask Linux to kill this process when its own
    parent dies. Every `oneencoder` command calls it first, so the DDP ranks a stage child starts die
    with that child, which dies with the runner: a runner killed outright leaves no rank holding a GPU."""
    if os.environ.get(UNDER_RUNNER) != "1" or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
