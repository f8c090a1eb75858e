"""Checkpoints that cannot be half-written: every rank writes into a temporary directory, then rank 0
renames it into place; only complete checkpoints are ever listed, and only the last K are kept.

Layout of ``OUTPUT/checkpoints/step_00000100/``:
- ``.metadata`` + ``*.distcp``: trainable parameters and optimizer state, written with
  ``torch.distributed.checkpoint`` (each rank its own shards under FSDP; reloadable on another world
  size), or DeepSpeed's own ``deepspeed/`` shards under ZeRO. Frozen weights are not copied: they
  come from the ``model`` checkpoint the config names.
- ``trainer_state.pt``: step, data position and sampler state, scheduler, loss history, counters.
- ``rng/rank_N.pt``: Python, numpy, torch (and CUDA) generator states of each rank.
- ``config.yaml``, ``run_info.json``: how it was made (config, version, git commit, data hash).
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcllava.train.distributed import Runtime

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories never match)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(
    rt: Runtime,
    run_dir: str | Path,
    step: int,
    engine: Any,
    trainer_state: dict[str, Any],
    files: dict[str, str],
    keep_last: int,
) -> Path:
    """Collective: every rank calls it. ``engine`` writes its own parameter and optimizer shards
    (:mod:`tcllava.train.engines`). Returns the final directory."""
    root = checkpoint_root(run_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    if rt.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    rt.barrier()
    engine.save(tmp)
    torch.save(rng_state(), tmp / "rng" / f"rank_{rt.rank}.pt")
    if rt.is_main:
        torch.save(trainer_state, tmp / STATE_FILE)
        for name, text in files.items():
            (tmp / name).write_text(text)
    rt.barrier()
    if rt.is_main:
        if final.exists():  # the same step saved again (e.g. SIGTERM right after a resume)
            old = root / f".old-step_{step:08d}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        for stale in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    rt.barrier()
    return final


def load(path: Path, engine: Any) -> dict[str, Any]:
    """Restore trainable parameters and optimizer state in place; returns the trainer state. RNG
    states are restored separately (:func:`load_rng`), right before training resumes."""
    engine.load(path)
    return torch.load(path / STATE_FILE, weights_only=False)


def load_rng(rt: Runtime, path: Path) -> bool:
    """This rank's generator states; False (and fresh seeding left as is) if the world size changed."""
    file = path / "rng" / f"rank_{rt.rank}.pt"
    saved_ranks = len(list((path / "rng").glob("rank_*.pt")))
    if not file.is_file() or saved_ranks != rt.world_size:
        return False
    set_rng_state(torch.load(file, weights_only=False))
    return True
