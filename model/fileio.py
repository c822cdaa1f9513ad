"""Atomic file writes: a reader (or a crash) sees the old content or the new, never half of it."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def check_writable(path: str | Path) -> None:
    """Raise PermissionError for an existing file without write permission bits: ``os.replace`` in a writable
    folder would overwrite it anyway (and as root, ``os.access`` says yes to everything)."""
    p = Path(path)
    if p.exists() and not p.stat().st_mode & 0o222:
        raise PermissionError(errno.EACCES, "the file is read-only", str(p))


def atomic_write(path: str | Path, data: str | bytes, mode: int | None = None) -> None:
    """Write ``data`` (str as UTF-8, no newline translation) through a temporary file in the same folder.

    ``mode``: permission bits for the result; None keeps those of an existing file (new files get the
    umask default). On any failure the temporary file is removed and the target is untouched. A symlink is
    written through (its target is replaced, the link kept); a read-only file is refused (PermissionError).
    """
    path = Path(os.path.realpath(path))  # a symlink stays a link: its target gets the new content
    check_writable(path)
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
