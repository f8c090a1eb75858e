"""Checkpoints that cannot be half-written and that can be read without running code from them: every
rank writes into a temporary directory, then rank 0 renames it into place; only complete checkpoints are
ever listed, and only the last K are kept.

Layout of ``OUTPUT/checkpoints/step_00000100/``:
- ``.metadata`` + ``*.distcp``: trainable parameters and optimizer state, written with
  ``torch.distributed.checkpoint`` (each rank its own shards under FSDP; reloadable on another world
  size), or DeepSpeed's own ``deepspeed/`` shards under ZeRO. Frozen weights are not copied: they
  come from the ``model`` checkpoint the config names.
- ``trainer_state.json``: step, data position and sampler state, scheduler counters, loss history,
  counters, and the sha256 of the engine files that are pickles (checked before they are read).
- ``rng/rank_N.json``: Python, numpy, torch (and CUDA) generator states of each rank.
- ``config.yaml``, ``run_info.json``: how it was made (config, version, git commit, data hash).

Nothing here is unpickled: the states are JSON, validated field by field; the engines read their own
files through allowlisting loaders (:mod:`tcllava.train.safe_load`). Checkpoints of the older format
(``trainer_state.pt``, a pickle) are refused, not read.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcllava.model import CheckpointError
from tcllava.train.distributed import Runtime

STATE_FILE = "trainer_state.json"
LEGACY_STATE_FILE = "trainer_state.pt"  # tcllava before the JSON format: a pickle, never loaded
FORMAT = 2
RNG_DIR = "rng"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_OLD_DIR = re.compile(r"^\.old-(step_\d{8})$")
_SCHEDULER_FIELDS = ("last_epoch", "_step_count", "base_lrs", "_last_lr")  # LambdaLR's data (no lambdas)


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file() or (path / LEGACY_STATE_FILE).is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories never match). Old-format ones are
    listed too, so that resuming refuses them instead of silently starting over."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and _complete(p)]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def check_format(path: Path) -> None:
    """Refuse a checkpoint an older tcllava wrote: its state is a pickle, which could run any code."""
    if (path / LEGACY_STATE_FILE).is_file() and not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"{path}: written by an older tcllava ({LEGACY_STATE_FILE}, a pickle) and cannot be loaded "
            "safely; resume it with the tcllava version that wrote it, or start a new run"
        )


def sweep(run_dir: str | Path) -> None:
    """Rank 0, when no save is in progress: remove what killed saves and rotations left behind.
    ``.del-*`` (rotation), ``.tmp-*`` (a save), ``step_N`` without a state file (a deletion by an older
    tcllava) go; ``.old-step_N`` (a same-step re-save) goes unless it is the only copy of step N, which
    is put back."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if not path.is_dir():
            continue
        old = _OLD_DIR.match(path.name)
        if old and not (root / old.group(1)).exists() and (path / STATE_FILE).is_file():
            path.rename(root / old.group(1))  # killed between the two renames of a same-step save
            continue
        leftover = old or path.name.startswith((".del-", ".tmp-"))
        if leftover or (_STEP_DIR.match(path.name) and not _complete(path)):
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------- saving


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The data of a LambdaLR (its lambdas are code: they come from the config)."""
    state = scheduler.state_dict()
    return {k: state[k] for k in _SCHEDULER_FIELDS}


def restore_scheduler(scheduler: Any, saved: dict[str, Any]) -> None:
    groups = len(scheduler.base_lrs)
    if len(saved["base_lrs"]) != groups:
        raise ValueError(
            f"cannot resume exactly: the checkpoint's schedule has {len(saved['base_lrs'])} parameter "
            f"groups, this config gives {groups}"
        )
    scheduler.load_state_dict({**scheduler.state_dict(), **{k: saved[k] for k in _SCHEDULER_FIELDS}})


def rng_state() -> dict[str, Any]:
    """This process's generator states as JSON data: tensors as hex strings."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _hex(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = _hex(torch.cuda.get_rng_state())
    return state


def _hex(t: torch.Tensor) -> str:
    return t.numpy().tobytes().hex()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def digests(directory: Path, files: list[Path]) -> dict[str, str]:
    """sha256 of each file, by path relative to ``directory`` (threads: hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        values = list(pool.map(_sha256, files))
    return {f.relative_to(directory).as_posix(): v for f, v in zip(files, values, strict=True)}


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
        sweep(run_dir)
        (tmp / RNG_DIR).mkdir(parents=True)
    rt.barrier()
    engine.save(tmp)
    (tmp / RNG_DIR / f"rank_{rt.rank}.json").write_text(json.dumps(rng_state()))
    rt.barrier()  # every rank's files are complete: rank 0 can digest them
    if rt.is_main:
        for name, text in files.items():
            (tmp / name).write_text(text)
        state = {**trainer_state, "format": FORMAT, "digests": digests(tmp, engine.pickled_files(tmp))}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if final.exists():  # the same step saved again (e.g. after resuming from an older checkpoint)
            old = root / f".old-step_{step:08d}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        for stale in list_checkpoints(run_dir)[:-keep_last]:
            trash = root / f".del-{stale.name}"  # a killed deletion leaves no step_N that looks usable
            shutil.rmtree(trash, ignore_errors=True)
            stale.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
    rt.barrier()
    return final


# ---------------------------------------------------------------------------------------- loading


def _is_int(x: Any) -> bool:
    return type(x) is int


def _is_count(x: Any) -> bool:
    return type(x) is int and x >= 0


def _is_number(x: Any) -> bool:
    return type(x) in (int, float)


def _is_str(x: Any) -> bool:
    return type(x) is str


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda x: type(x) is list and all(check(v) for v in x)


def _dict_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda x: type(x) is dict and all(type(k) is str and check(v) for k, v in x.items())


def _is_scalar(x: Any) -> bool:
    return x is None or type(x) in (bool, int, float, str)


_NUMBERS = _list_of(_is_number)
_STATE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format": (_is_int, "an integer"),
    "step": (_is_count, "an integer >= 0"),
    "epoch": (_is_count, "an integer >= 0"),
    "step_in_epoch": (_is_count, "an integer >= 0"),
    "total_steps": (_is_count, "an integer >= 0"),
    "tokens": (_is_count, "an integer >= 0"),
    "samples": (_is_count, "an integer >= 0"),
    "truncated": (_is_count, "an integer >= 0"),
    "train_seconds": (_is_number, "a number"),
    "losses": (_list_of(lambda x: x is None or _is_number(x)), "a list of numbers or nulls"),
    "skipped_counts": (_dict_of(_is_count), "an object of integers"),
    "skipped_listed": (_list_of(_dict_of(_is_str)), "a list of objects of strings"),
    "sampler": (_dict_of(_is_scalar), "an object of numbers, booleans and strings"),
    "scheduler": (
        lambda x: (
            type(x) is dict
            and _is_int(x.get("last_epoch"))
            and _is_int(x.get("_step_count"))
            and _NUMBERS(x.get("base_lrs"))
            and _NUMBERS(x.get("_last_lr"))
        ),
        "an object with integers last_epoch, _step_count and number lists base_lrs, _last_lr",
    ),
    "checkpoint": (lambda x: x is None or _is_str(x), "a string or null"),
    "digests": (
        _dict_of(lambda x: _is_str(x) and re.fullmatch("[0-9a-f]{64}", x) is not None),
        "sha256 digests",
    ),
}


def _bad(file: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{file}: not a tcllava checkpoint state ({why})")


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise _bad(file, "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(file, f"not JSON: {e}") from None


def read_state(path: Path) -> dict[str, Any]:
    """The validated trainer state of checkpoint ``path`` (its ``format`` and ``digests`` included)."""
    check_format(path)
    file = path / STATE_FILE
    state = _read_json(file)
    if type(state) is not dict:
        raise _bad(file, f"a JSON object is expected, not {type(state).__name__}")
    if state.get("format") != FORMAT:
        raise _bad(file, f"format {state.get('format')!r}; this tcllava reads format {FORMAT}")
    for key, (check, what) in _STATE_FIELDS.items():
        if key not in state:
            raise _bad(file, f"no '{key}'")
        if not check(state[key]):
            raise _bad(file, f"'{key}' must be {what}")
    return {key: state[key] for key in _STATE_FIELDS}


def verify_digests(path: Path, recorded: dict[str, str], files: list[Path]) -> None:
    """The engine files that will be unpickled are exactly those recorded at save time, unchanged. (It
    tells a replaced or added file; whoever can rewrite the whole folder can rewrite the record too,
    which is why the engines also load through allowlisting readers.)"""
    files = [f for f in files if f.is_file()]
    present = {f.relative_to(path).as_posix() for f in files}
    for name in sorted(present | set(recorded)):
        if name not in recorded:
            raise _bad(path / name, f"not listed in {STATE_FILE}: not written by this checkpoint's save")
        if name not in present:
            raise _bad(path / name, f"missing, listed in {STATE_FILE}")
    actual = digests(path, files)
    for name, digest in sorted(actual.items()):
        if digest != recorded[name]:
            raise _bad(path / name, f"changed since it was saved: its sha256 differs from {STATE_FILE}")


def load(path: Path, engine: Any) -> dict[str, Any]:
    """Restore trainable parameters and optimizer state in place; returns the trainer state. RNG
    states are restored separately (:func:`load_rng`), right before training resumes. Every rank reads
    and checks the same files, so a bad checkpoint fails all of them alike."""
    state = read_state(path)
    verify_digests(path, state.pop("digests"), engine.pickled_files(path))
    state.pop("format")
    engine.load(path)
    return state


def _rng_from(file: Path) -> dict[str, Any]:
    """A rank's saved generator states, checked by setting them on throwaway generators."""
    data = _read_json(file)
    try:
        version, internal, gauss = data["python"]
        python = (version, tuple(internal), gauss)
        random.Random().setstate(python)
        kind, keys, pos, has_gauss, cached = data["numpy"]
        numpy = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
        np.random.RandomState().set_state(numpy)
        state = {"python": python, "numpy": numpy, "torch": _tensor(data["torch"])}
        torch.Generator().set_state(state["torch"])
        if "cuda" in data:
            state["cuda"] = _tensor(data["cuda"])
            if torch.cuda.is_available() and len(state["cuda"]) != len(torch.cuda.get_rng_state()):
                raise ValueError("the CUDA generator state has the wrong size")
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RuntimeError) as e:
        raise _bad(file, f"bad random generator state: {e}") from None
    return state


def _tensor(text: Any) -> torch.Tensor:
    if type(text) is not str:
        raise TypeError("a generator state must be a hex string")
    return torch.frombuffer(bytearray.fromhex(text), dtype=torch.uint8)


def load_rng(rt: Runtime, path: Path) -> bool:
    """This rank's generator states; False (and fresh seeding left as is) if the world size changed.
    Every rank checks every rank's file (small), so a bad one fails them all."""
    files = sorted((path / RNG_DIR).glob("rank_*.json"))
    if (path / RNG_DIR / f"rank_{rt.rank}.json") not in files or len(files) != rt.world_size:
        return False
    states = {f.name: _rng_from(f) for f in files}
    mine = states[f"rank_{rt.rank}.json"]
    random.setstate(mine["python"])
    np.random.set_state(mine["numpy"])
    torch.set_rng_state(mine["torch"])
    if "cuda" in mine and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda"])
    return True
