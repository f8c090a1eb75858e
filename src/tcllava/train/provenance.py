"""How a run was made: package version, git commit, library versions, launcher, data manifest hash."""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the source tree tcllava is imported from; (None, None) outside git."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return commit or None, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def run_info(manifest_hash: str, extra: dict[str, Any]) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    import tcllava

    commit, dirty = git_commit()
    return {
        "tcllava_version": tcllava.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "data_manifest_sha256": manifest_hash,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "command": sys.argv,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def header(info: dict[str, Any]) -> str:
    """The comment block on top of a saved config.yaml."""
    commit = info.get("git_commit") or "unknown"
    dirty = " (uncommitted changes)" if info.get("git_dirty") else ""
    return (
        "Resolved tcllava training config.\n"
        f"tcllava {info['tcllava_version']}, git {commit}{dirty}, data manifest sha256 {info['data_manifest_sha256']}\n"
        f"world size {info.get('world_size')}, distributed {info.get('distributed')}, precision {info.get('precision')}\n"
        "Re-run: tcllava train THIS_FILE output_dir=NEW_DIR (same data files; same global batch for the same losses)"
    )
