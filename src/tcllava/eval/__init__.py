"""tcllava.eval: benchmarks (MVBench, Video-MME, synthetic, open-ended QA, Video-ChatGPT) behind one
`evaluate()`; the model is reached only through the `Predictor` protocol."""

from __future__ import annotations

from tcllava import lazy_exports

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
__getattr__ = lazy_exports(__name__, _LAZY)
