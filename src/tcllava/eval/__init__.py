"""tcllava.eval: benchmarks (MVBench, Video-MME, synthetic, open-ended QA, Video-ChatGPT) behind one
`evaluate()`; the model is reached only through the `Predictor` protocol."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "EvalRun": "tcllava.eval.config",
    "evaluate": "tcllava.eval.runner",
    "merge": "tcllava.eval.runner",
    "Prompt": "tcllava.eval.predictor",
    "Predictor": "tcllava.eval.predictor",
    "extract_choice": "tcllava.eval.extract",
    "EXTRACTION_RULE": "tcllava.eval.extract",
    "get_protocol": "tcllava.eval.protocols",
    "load_benchmark": "tcllava.eval.benchmarks",
    "Judge": "tcllava.eval.judge",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    # Lazy so that `tcllava eval --help` does not import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tcllava.eval' has no attribute {name!r}")
