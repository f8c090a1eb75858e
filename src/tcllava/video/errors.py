"""Errors and warnings of tcllava.video: every message names the file so a failed sample can be found."""

from __future__ import annotations

from pathlib import Path


class VideoError(Exception):
    """A video could not be read; the message names the file and the cause."""

    def __init__(self, path: str | Path, cause: str) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = str(path)
        self.cause = cause

    def __reduce__(self) -> tuple[type[VideoError], tuple[str, str]]:
        # Rebuild from (path, cause) so the error survives pickling across worker processes.
        return type(self), (self.path, self.cause)


class VideoWarning(UserWarning):
    """A video was read, but not as asked (e.g. fewer distinct frames than requested)."""
