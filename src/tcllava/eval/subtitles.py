"""SRT subtitles for Video-MME's "with subtitles" setting.

Video-MME gives the model the subtitle lines that belong to the sampled frames. We select a line when
some sampled frame's timestamp t satisfies start <= t < end (lmms-eval's rule, in seconds instead of
frame numbers), or every line with mode "all". Video-MME's SRT text is wrapped in <font> tags; tags are
stripped. Lines keep their order in the file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SUBTITLE_MODES = ("frames", "all")
SUBTITLE_RULE = (
    "frames: SRT lines with start <= t < end for some sampled frame timestamp t (seconds); "
    "all: every line; HTML tags stripped; file order kept; no file -> 'No subtitles available'"
)

_TIME = re.compile(r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})")
_TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class SubtitleLine:
    start: float
    end: float
    text: str


def _seconds(stamp: str) -> float:
    m = _TIME.search(stamp)
    if m is None:
        raise ValueError(f"bad SRT time {stamp!r}")
    h, mnt, s, ms = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def parse_srt(text: str) -> list[SubtitleLine]:
    """Cues of an SRT document; malformed blocks (no `-->` line, unreadable times) are skipped."""
    lines = []
    for block in re.split(r"\r?\n\s*\r?\n", text.replace("\ufeff", "").strip()):
        rows = [r.strip() for r in block.splitlines() if r.strip()]
        arrow = next((k for k, r in enumerate(rows) if "-->" in r), None)
        if arrow is None:
            continue
        try:
            start, end = (_seconds(part) for part in rows[arrow].split("-->", 1))
        except ValueError:
            continue
        body = " ".join(_TAG.sub("", r).strip() for r in rows[arrow + 1 :]).strip()
        if body:
            lines.append(SubtitleLine(start, end, body))
    return lines


def select_subtitles(
    lines: Sequence[SubtitleLine], timestamps: Sequence[float], mode: str = "frames"
) -> list[str]:
    if mode not in SUBTITLE_MODES:
        raise ValueError(f"unknown subtitle mode {mode!r}; choose from {SUBTITLE_MODES}")
    if mode == "all":
        return [ln.text for ln in lines]
    return [ln.text for ln in lines if any(ln.start <= t < ln.end for t in timestamps)]


def subtitles_for(path: str | Path | None, timestamps: Sequence[float], mode: str = "frames") -> str | None:
    """The subtitle text to put in the prompt, None when the video has no SRT file."""
    if path is None:
        return None
    return "\n".join(
        select_subtitles(
            parse_srt(Path(path).read_text(encoding="utf-8", errors="replace")), timestamps, mode
        )
    )
