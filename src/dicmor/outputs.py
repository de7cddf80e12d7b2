"""Writing outputs whole or not at all, with a clear error when the path cannot take them.

Every file a command writes goes to a temporary name in its folder first, is flushed to disk and
then renamed over the target, so an interrupted or failed command never leaves half a file, and a
path that cannot be written (a component that is a file, a folder where a file should be) is one
:class:`~dicmor.errors.OutputError` naming it, raised before any work is done.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dicmor.errors import OutputError


def writable_folder(path: Path | str, create: bool = True) -> Path:
    """``path`` as a folder, created if ``create``; OutputError if a part of it is a file."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise OutputError(f"{path}: {part} is a file, not a folder")
            break
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"{path}: cannot create the folder ({error.strerror})") from None
    return path


def writable_file(path: Path | str) -> Path:
    """``path`` as a file that can be written: not a folder, and under folders or nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, not a file")
    writable_folder(path.parent, create=False)
    return path


def write_atomic(path: Path | str, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary)`` and move the finished file onto ``path``."""
    path = writable_file(path)
    writable_folder(path.parent)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(partial)
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` whole or not at all."""
    return write_atomic(path, lambda partial: partial.write_text(text, encoding="utf-8"))
