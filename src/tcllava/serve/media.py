"""Where a request's videos and images come from, and reading them.

Only two kinds of URL are accepted: ``data:`` (base64, the upload itself) and ``file://`` paths that lie
inside ``--media-dir`` once symlinks and ``..`` are resolved. Nothing is fetched from the network. Reading
runs on the caller's thread (a request thread, never the model's), with the decoder's own timeout.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tcllava.serve.schema import APIError

# The suffix a decoded upload is written with: images are read by PIL, anything else by PyAV (which
# recognises the container from its content, so an unknown video type still works as .mp4).
MIME_SUFFIXES = {
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/quicktime": ".mov",
    "video/x-msvideo": ".avi",
    "video/mpeg": ".mpg",
    "image/gif": ".gif",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
}


@dataclass(frozen=True)
class MediaSource:
    """One video or image of a request, not read yet. ``label`` says where it came from (a field path
    such as ``messages[0].content[1]``, or the page's upload), for messages."""

    kind: str  # "video" or "image"
    label: str
    path: Path | None = None  # a local file or frame folder, already checked
    data: bytes | None = None  # or the bytes of an upload
    suffix: str = ".mp4"


def _size(size: float) -> str:
    return f"{size / 2**20:.1f} MB"


def from_data_url(url: str, kind: str, label: str, max_bytes: int) -> MediaSource:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise APIError(400, f"{label}: a data: URL must be base64 (data:video/mp4;base64,...)", label)
    mime = header.removeprefix("data:").removesuffix(";base64").split(";")[0].strip().lower()
    if len(payload) * 3 // 4 > max_bytes:
        raise APIError(
            413,
            f"{label}: the {kind} is larger than the server's limit of {_size(max_bytes)}",
            label,
            "too_large",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{label}: the data: URL is not valid base64", label) from None
    default = ".png" if kind == "image" else ".mp4"
    return MediaSource(kind, label, data=data, suffix=MIME_SUFFIXES.get(mime, default))


def from_file_url(url: str, kind: str, label: str, media_dir: Path | None, max_bytes: int) -> MediaSource:
    if media_dir is None:
        raise APIError(
            403, f"{label}: file:// URLs are refused: the server was started without --media-dir", label
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise APIError(400, f"{label}: a file:// URL names a local path (file:///path), not a host", label)
    path = Path(unquote(parts.path))
    root = media_dir.resolve()
    resolved = path.resolve()  # symlinks and .. first: only where the file really is counts
    if not resolved.is_relative_to(root):
        raise APIError(403, f"{label}: {path} is outside the media directory", label, "outside_media_dir")
    if not resolved.exists():
        raise APIError(400, f"{label}: no such file {path}", label)
    if resolved.is_file() and resolved.stat().st_size > max_bytes:
        raise APIError(
            413,
            f"{label}: {path} is larger than the server's limit of {_size(max_bytes)}",
            label,
            "too_large",
        )
    return MediaSource(kind, label, path=resolved)


def from_url(url: str, kind: str, label: str, media_dir: Path | None, max_bytes: int) -> MediaSource:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return from_data_url(url, kind, label, max_bytes)
    if scheme == "file":
        return from_file_url(url, kind, label, media_dir, max_bytes)
    raise APIError(
        400,
        f"{label}: only data: (base64) and file:// URLs are accepted, got {scheme or 'no'} scheme; "
        "the server fetches nothing from the network",
        label,
        "unsupported_url",
    )


def read_media(source: MediaSource, num_frames: int, sampling: str, seed: int | None, timeout: float):
    """The sampled frames and timestamps (:class:`tcllava.video.Clip`) of one source; a file that is not
    a readable video or image is a 400 naming the field (an upload's temporary path is not shown)."""
    from tcllava.video import VideoError, read_video

    frames = 1 if source.kind == "image" else num_frames
    with tempfile.TemporaryDirectory(prefix="tcllava-upload-") as folder:
        path = source.path
        if path is None:
            path = Path(folder) / f"upload{source.suffix}"
            path.write_bytes(source.data or b"")
        try:
            return read_video(path, frames, sampling, seed=seed, timeout=timeout)
        except VideoError as e:
            cause = e.cause.replace(str(path), path.name if source.path is not None else "the upload")
            message = f"{source.label}: not a readable {source.kind} ({cause})"
        except ValueError as e:
            message = f"{source.label}: {e}"
    raise APIError(400, message, code="invalid_video")
