"""`EvalRun`: everything that describes one evaluation run, checked once when it is built.

Both entry points (`evaluate()`/`merge()` and `tcllava eval`) take one of these, so a bad setting is
refused the same way from Python and from the command line, before any data is read or model loaded.
Light imports only: the CLI builds it before torch is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcllava.eval.benchmarks import BENCHMARKS, OPEN_QA, Benchmark, EvalInputError, load_benchmark
from tcllava.eval.protocols import PROTOCOL_NAMES, SCORINGS, EvalProtocol, get_protocol
from tcllava.eval.subtitles import SUBTITLE_MODES

JUDGED = (*OPEN_QA, "videochatgpt")
# Frame samplings that make sense for evaluation (tcllava.video also has "random", for training).
EVAL_SAMPLINGS = ("middle", "uniform", "mvbench")
# The `tcllava eval` flag of each field, so one message serves both the Python API and the CLI.
FLAGS = {
    "benchmark": "BENCH",
    "protocol": "--protocol",
    "num_frames": "--frames",
    "batch_size": "--batch-size",
    "num_workers": "--num-workers",
    "limit": "--limit",
    "subtitles": "--subtitles",
    "subtitle_mode": "--subtitle-mode",
    "sampling": "--sampling",
    "scoring": "--scoring",
    "judge_workers": "--judge-workers",
    "max_error_rate": "--max-error-rate",
    "judge_max_failures": "--judge-max-failures",
}


def _name(field: str) -> str:
    flag = FLAGS.get(field)
    return f"{field} ({flag})" if flag else field


def _check_int(field: str, value: Any, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise EvalInputError(f"{_name(field)} must be an integer >= {low}, got {value!r}")


def _check_choice(field: str, value: Any, choices: tuple[str, ...], optional: bool = True) -> None:
    if (optional and value is None) or value in choices:
        return
    raise EvalInputError(f"{_name(field)}: unknown value {value!r}; choose from {', '.join(choices)}")


@dataclass(frozen=True)
class EvalRun:
    """What to evaluate and how; the model (a `Predictor`) and the judge are passed beside it.

    `limit`: only the first N rows of each task; `sampling` overrides the protocol's frame sampling;
    `scoring` "likelihood" ranks the options by the model's log-probability of each whole answer;
    `rank`/`world_size` default to torchrun's RANK/WORLD_SIZE; `timeout`: seconds to decode one video.
    `max_error_rate`: the share of samples (or judgements) that may fail before the run counts as failed
    (every sample failing always does); `judge_max_failures`: judge calls failing in a row before the
    run stops.
    """

    benchmark: str
    data_dir: str | Path
    out_dir: str | Path
    protocol: str | None = None
    num_frames: int = 16
    batch_size: int = 1
    num_workers: int = 2
    limit: int | None = None
    subtitles: bool = False
    subtitle_mode: str = "frames"
    sampling: str | None = None
    scoring: str | None = None
    judge_workers: int = 4
    rank: int | None = None
    world_size: int | None = None
    timeout: float = 60.0
    max_error_rate: float = 0.05
    judge_max_failures: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        _check_choice("benchmark", self.benchmark, BENCHMARKS, optional=False)
        _check_choice("protocol", self.protocol, PROTOCOL_NAMES)
        _check_choice("sampling", self.sampling, EVAL_SAMPLINGS)
        _check_choice("scoring", self.scoring, SCORINGS)
        _check_choice("subtitle_mode", self.subtitle_mode, SUBTITLE_MODES, optional=False)
        _check_int("num_frames", self.num_frames, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("num_workers", self.num_workers, 0)
        _check_int("limit", self.limit, 1, optional=True)
        _check_int("judge_workers", self.judge_workers, 1)
        _check_int("judge_max_failures", self.judge_max_failures, 1)
        _check_int("world_size", self.world_size, 1, optional=True)
        _check_int("rank", self.rank, 0, optional=True)
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise EvalInputError(f"rank must be below world_size, got rank {self.rank} of {self.world_size}")
        if not isinstance(self.timeout, int | float) or not math.isfinite(self.timeout) or self.timeout <= 0:
            raise EvalInputError(f"timeout must be a number of seconds > 0, got {self.timeout!r}")
        rate = self.max_error_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise EvalInputError(f"{_name('max_error_rate')} must be a fraction in [0, 1], got {rate!r}")
        if self.subtitles and self.benchmark != "videomme":
            raise EvalInputError(
                f"{_name('subtitles')}: subtitles exist only for videomme, not {self.benchmark}"
            )
        if self.judged and self.protocol not in (None, "official"):
            raise EvalInputError(
                f"{_name('protocol')}: {self.benchmark} has one protocol, official (the question as asked, "
                "scored by an LLM judge)"
            )
        if self.judged and self.scoring == "likelihood":
            raise EvalInputError(
                f"{_name('scoring')}: {self.benchmark} is open-ended; likelihood scoring needs options"
            )

    @property
    def judged(self) -> bool:
        """Open-ended: answers are scored by an LLM judge."""
        return self.benchmark in JUDGED

    def eval_protocol(self) -> EvalProtocol:
        return get_protocol(self.benchmark, self.protocol, self.subtitles, self.sampling, self.scoring)

    def load(self) -> Benchmark:
        return load_benchmark(self.benchmark, self.data_dir, self.limit)
