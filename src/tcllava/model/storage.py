"""Writing model directories so that a crash or a mistake never leaves a half-written or mixed model.

A model is written into a temporary sibling folder and renamed into place only when complete; an existing
model is replaced only when the caller says so, and never before the new one is whole.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DestinationExists(FileExistsError):
    """The destination already holds files and overwriting was not asked for."""


def same_place(a: str | Path, b: str | Path) -> bool:
    """Whether two paths are one folder, or one lies inside the other (symlinks resolved)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


@contextmanager
def atomic_directory(destination: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``destination``; on success it becomes ``destination``.

    An existing non-empty ``destination`` is an error unless ``overwrite``; then it is swapped out only
    after the new folder is complete. On an exception the temporary folder is removed and ``destination``
    is left exactly as it was."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise DestinationExists(f"{destination}: exists and is not a folder")
    if destination.is_dir() and any(destination.iterdir()) and not overwrite:
        raise DestinationExists(
            f"{destination}: already holds files; choose an empty folder or pass --overwrite"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.parent / f".{destination.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = destination.parent / f".{destination.name}.old-{os.getpid()}"
    if destination.exists():
        destination.rename(old)
    tmp.rename(destination)
    shutil.rmtree(old, ignore_errors=True)
