"""Media file signatures: what tells a feature cache, and the stage runner, that a file changed.

A signature holds the file's path and a SHA-256 of its content. Files up to FULL_HASH_BYTES (images,
sounds of a few seconds) are hashed whole, so any edit is seen, even one that keeps the size and puts
the modification time back. For larger ones (videos) the size, the modification time and the first
and last EDGE_BYTES stand in for the whole, so a signature reads at most 512 KiB of such a file: an
edit inside it that keeps its size, both ends and its modification time goes unseen.

Hashing a large set on every check would cost minutes, so a SignatureMemo keeps each file's
signature with its status (size, modification and change times, inode) and hashes again only files
whose status changed. The change time (ctime) is set by the system on every write and cannot be put
back by a user, so an edit that restores the modification time is still hashed again; a copy to
another disk is hashed again too, and keeps its signature if the content is the same.
Torch-free, so the stage runner can use it without loading a model library.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from oneencoder.files import atomic_write_text

FULL_HASH_BYTES = 1 << 20
EDGE_BYTES = 256 << 10


def media_signature(path: Path) -> str:
    """`path|sha256:...` for a small file, `path|size|mtime_ns|edges-sha256:...` for a large one; the
    path resolved, so that a manifest named relative or absolute gives the same signatures."""
    stat = path.stat()
    path = path.resolve()
    with path.open("rb") as handle:
        if stat.st_size <= FULL_HASH_BYTES:
            return f"{path}|sha256:{hashlib.file_digest(handle, 'sha256').hexdigest()[:32]}"
        digest = hashlib.sha256(handle.read(EDGE_BYTES))
        handle.seek(-EDGE_BYTES, os.SEEK_END)
        digest.update(handle.read(EDGE_BYTES))
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}|edges-sha256:{digest.hexdigest()[:32]}"


def media_signatures(paths: Sequence[Path]) -> list[str]:
    """media_signature of each path, in order; threads overlap the reads (hashing releases the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(media_signature, paths))


def _status(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


class SignatureMemo:
    """Signatures of earlier checks, in a JSON file (`path`: None keeps them in memory only),
    reused while a file's status is the one recorded when it was hashed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list] = {}
        if path is not None and path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except ValueError:  # a memo is only a shortcut: a damaged one is rebuilt
                self.entries = {}
        self.changed = False

    def signatures(self, paths: Sequence[Path]) -> list[str]:
        """media_signature of each path, hashing only files new to the memo or whose status changed."""
        # The status is read before hashing: a file written meanwhile differs from it next time.
        status = {str(path): _status(path) for path in paths}
        todo = sorted({path for path in paths if (self.entries.get(str(path)) or [None])[0] != status[str(path)]})
        for path, signature in zip(todo, media_signatures(todo)):
            self.entries[str(path)] = [status[str(path)], signature]
        self.changed = self.changed or bool(todo)
        return [self.entries[str(path)][1] for path in paths]

    def save(self) -> None:
        if self.path is not None and self.changed:
            atomic_write_text(self.path, json.dumps(self.entries))
            self.changed = False
