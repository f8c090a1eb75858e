"""What a run tells while it trains: a progress bar (loss, lr, tokens/s, ETA), ``metrics.jsonl`` and
TensorBoard when it is installed. Only rank 0 writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class Monitor:
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        enabled: bool,
        progress: bool,
        tensorboard: bool,
    ) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.bar = None
        self.tb = None
        if not enabled:
            return
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True
            )
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # optional: pip install tcllava[tensorboard]
                self.tb = None

    def truncate(self, last_step: int) -> None:
        """Drop records after ``last_step`` (logged by a run that died after its last checkpoint), so a
        resumed run's file reads as if it had never stopped."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line and json.loads(line).get("step", 0) <= last_step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def step(self, record: dict[str, Any], log: bool) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(record["step"] - self.bar.n)
            loss = record.get("loss")
            self.bar.set_postfix(
                loss="-" if loss is None else f"{loss:.4f}",
                lr=f"{record['lr']:.2e}",
                tok_s=f"{record.get('tokens_per_s', 0):.0f}",
                refresh=False,
            )
        if log:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tb is not None:
                for key, value in record.items():
                    if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                        self.tb.add_scalar(f"train/{key}", value, record["step"])

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
