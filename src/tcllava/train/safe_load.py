"""Reading the engines' checkpoint files without running code from them.

``torch.distributed.checkpoint`` unpickles its ``.metadata`` file with plain :mod:`pickle` and the
non-tensor values of a state dict (learning rates, betas, ...) with ``torch.load(weights_only=False)``;
DeepSpeed reads its shards with ``torch.load(weights_only=False)`` too. A tampered file would run
arbitrary code on resume. Here the DCP metadata goes through an unpickler that only builds DCP's own
metadata classes, its values and DeepSpeed's shards through ``torch.load(weights_only=True)`` with the few
DeepSpeed classes its shards hold allowed. Imported by the engines when they load, not before.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from tcllava.model import CheckpointError

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED = {
    (_DCP_METADATA, "Metadata"),
    (_DCP_METADATA, "TensorStorageMetadata"),
    (_DCP_METADATA, "BytesStorageMetadata"),
    (_DCP_METADATA, "ChunkStorageMetadata"),
    (_DCP_METADATA, "TensorProperties"),
    (_DCP_METADATA, "MetadataIndex"),
    (_DCP_METADATA, "StorageMeta"),
    (_DCP_METADATA, "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which tcllava does not load")


def read_dcp_metadata(file: Path) -> Metadata:
    """DCP's ``.metadata``, unpickled with only DCP's metadata classes (and torch sizes/dtypes) allowed."""
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except OSError as e:
        raise CheckpointError(f"{file}: cannot be read ({e.strerror or e})") from None
    except Exception as e:  # any malformed pickle: UnpicklingError, EOFError, TypeError, ...
        raise CheckpointError(f"{file}: not a tcllava checkpoint state ({e})") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{file}: not a tcllava checkpoint state (holds {type(metadata).__name__})")
    return metadata


class SafeReader(FileSystemReader):
    """A DCP reader whose metadata is read by :func:`read_dcp_metadata` (tensors already are read with
    ``weights_only=True`` by DCP itself)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        name = ".metadata" if rank is None else f"__{rank}.metadata"  # DCP's global / rank-local names
        metadata = read_dcp_metadata(Path(self.path) / name)
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class WeightsOnlyPlanner(DefaultLoadPlanner):
    """Non-tensor values (``BYTE_IO`` items) are unpickled with ``weights_only=True``; the result, made of
    plain types only, is handed on re-serialized, so DCP's own placement logic stays in charge."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as e:
            raise CheckpointError(
                f"{self.directory}: not a tcllava checkpoint state (value {read_item.dest_index.fqn}: "
                f"{_first_line(e)})"
            ) from None
        again = io.BytesIO()
        torch.save(obj, again)
        again.seek(0)
        super().load_bytes(read_item, again)


def load_dcp(state: dict[str, Any], directory: Path) -> None:
    """``dcp.load`` with the safe reader and planner. Every rank reads the metadata first, so that a bad
    file fails them all alike with its own message; DCP reports a failure inside as a
    ``CheckpointException`` (a BaseException listing each rank's error): its CheckpointError is raised."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    read_dcp_metadata(directory / ".metadata")
    try:
        dcp.load(state, storage_reader=SafeReader(directory), planner=WeightsOnlyPlanner(directory))
    except CheckpointException as e:
        ours = [exc for exc, _ in e.failures.values() if isinstance(exc, CheckpointError)]
        if ours:
            raise ours[0] from None
        raise


def deepspeed_globals() -> list[Any]:
    """The DeepSpeed classes its ZeRO shards hold (checked with ZeRO-2/3, deepspeed 0.19): a loss scaler
    (plain attributes), the ZeRO stage (an int enum) and parameter fragment addresses (a dataclass)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def deepspeed_weights_only(ds_engine: Any) -> Iterator[None]:
    """While loading, DeepSpeed's checkpoint engine reads each file with ``weights_only=True``. Every
    file it reads (model states, optimizer partitions) goes through ``checkpoint_engine.load``."""
    if ds_engine.load_universal_checkpoint():  # that path reads files with torch.load(weights_only=False)
        raise ValueError(
            "DeepSpeed's checkpoint.load_universal is not supported on resume (it unpickles its files); "
            "remove it from the DeepSpeed config"
        )
    reader = ds_engine.checkpoint_engine
    allowed = deepspeed_globals()

    def load(path: str, map_location: Any = None) -> Any:
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: not a tcllava checkpoint state ({_first_line(e)})") from None

    reader.load = load  # an instance attribute, shadowing the class's method
    try:
        yield
    finally:
        del reader.load


def _first_line(e: Exception) -> str:
    """The useful part of torch's long weights_only message (the global it refused), else its first line."""
    text = str(e)
    # torch says "Unsupported global: GLOBAL x.y" or "Trying to load unsupported GLOBAL x.y"
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return f"it holds {refused.group(1)}, which tcllava does not load"
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__
