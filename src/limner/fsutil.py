"""Atomic file writes: a temp file in the destination folder, fsync, then one ``os.replace``.

A reader (another process, the studio, a crashed run's successor) sees the old file or the new
one, never a half-written one. The temp file is created with ``O_EXCL`` and mode 0o666 filtered
by the process umask, so the final file has the permissions an ordinary ``open(path, "w")``
would give it (``tempfile.mkstemp`` would leave it readable by its owner only).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], *,
                 fsync: bool = True) -> Path:
    """Create or replace ``path`` with what ``write(f)`` writes to a binary file object.

    Args:
        path: the destination; its folder is created if missing.
        write: called once with the open temp file.
        fsync: flush the data to disk before the rename (off for caches that can be rebuilt).
    Returns the path. On any error the temp file is removed and the old file is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
