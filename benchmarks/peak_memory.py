"""Peak resident memory of a block of work, for the benchmark scripts."""

from __future__ import annotations

import resource
import threading
from pathlib import Path


class PeakMemory:
    """Peak growth of resident memory inside the block, sampled every 2 ms from /proc (the process-wide
    high-water mark would be set by model loading, not by the work measured)."""

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())

    @property
    def peak_mib(self) -> float:
        return self.peak - self.base


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
