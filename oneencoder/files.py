"""Writing files so that a reader never meets half of one.

Every file that later runs trust (exported weights, configs, metrics, results, stage states, cache
shards) is written to a temporary name in the same folder, flushed to disk, given the permissions an
ordinary file gets (0666 less the umask: the temporary files Python and safetensors make are 0600),
and renamed over the final name. A crash or a full disk leaves the old file or none, never a
truncated one, and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write to; on success it replaces `path` whole."""
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """`write(tmp_path)` writes the file (safetensors' save_file, torch.save, ...); then it is renamed."""
    with atomic_path(path) as tmp:
        write(str(tmp))


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], when_held: Callable[[str], None]) -> Iterator[None]:
    """Hold the kernel's exclusive lock (flock) on `path`, which records this process's pid.

    When another process holds it, `when_held(its pid)` decides: raise to give up, return to wait
    for it. The lock goes with the process holding it, so a killed one never leaves it behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            when_held(handle.read().strip() or "unknown")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def cache_home() -> Path:
    """Where files derived from this machine and its packages live (a converted model, a measured
    speed): $ONEENCODER_HOME, else ~/.cache/oneencoder."""
    return Path(os.environ.get("ONEENCODER_HOME", Path.home() / ".cache" / "oneencoder"))
