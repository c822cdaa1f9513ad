"""Reading and writing the edited file: refuse what a text editor must not open, never leave a half-written file."""

from __future__ import annotations

from pathlib import Path

from model.fileio import atomic_write

MAX_BYTES = 2 * 1024 * 1024  # the editor re-parses the whole buffer on each edit; beyond this it crawls


class FileError(Exception):
    """A file could not be opened or saved; the message is shown to the user as it is."""


def read_text_file(path: str | Path, max_bytes: int = MAX_BYTES) -> str:
    """The file's text, or FileError for a missing, huge, binary or non-UTF-8 file.

    A missing file is reported rather than created so that a typo in an open dialog loses nothing;
    the CLI treats a missing path on the command line as a new file instead.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise FileError(f"{p}: no such file") from None
    except OSError as e:
        raise FileError(f"{p}: {e.strerror or e}") from None
    if p.is_dir():
        raise FileError(f"{p} is a folder, not a file")
    if size > max_bytes:
        raise FileError(f"{p} is too large to edit here ({size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB)")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise FileError(f"{p}: {e.strerror or e}") from None
    if b"\0" in data[:8192]:
        raise FileError(f"{p} looks like a binary file; refusing to open it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileError(f"{p} is not UTF-8 text (byte {e.start}); refusing to open it") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A crash or a full disk leaves either the old file or the new one, never a truncated mix;
    an existing file keeps its permission bits.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise FileError(f"cannot save {p}: folder {folder} does not exist")
    try:
        atomic_write(p, text)
    except OSError as e:
        raise FileError(f"cannot save {p}: {e.strerror or e}") from None
