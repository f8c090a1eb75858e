"""Forward+backward time and peak memory of TC attention kernels vs causal SDPA (the floor).

    python benchmarks/attention.py                 # 2k, 4k, 8k, 16k tokens (a few minutes on 2 cores)
    python benchmarks/attention.py --lengths 2048  # one length

Sequences are videos of 144-token frames between text (13 to 113 frames), 8 heads of 64, fp32, batch 1,
mask frame_block_causal. Times: all kernels of one length in one process, interleaved round-robin, best
of --repeats. Peak memory: one forward+backward per kernel alone in a fresh process, as growth of
resident memory over the inputs.
Writes benchmarks/results/attention.json and attention.md; ratios are to causal SDPA in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from peak_memory import PeakMemory

RESULTS = Path(__file__).parent / "results"
TOKENS_PER_FRAME, HEADS, HEAD_DIM, TEXT = 144, 8, 64, 64
KERNELS = {
    "causal_sdpa": "SDPA is_causal (floor, no TC mask)",
    "sdpa_dense_mask": "SDPA + dense TC mask (transformers default)",
    "eager_dense_mask": "eager + 4D float mask",
    "tcllava_prefix": "tcllava exact prefix kernel",
}
# Eager materialises several [H, L, L] fp32 tensors: beyond this it does not fit in 24 GiB.
EAGER_MAX_LENGTH = 8192


def frames_for(length: int) -> int:
    return max(1, round((length - 2 * TEXT) / TOKENS_PER_FRAME))


def _setup(length: int):
    import torch

    from tcllava.attention import FrameLayout

    torch.manual_seed(0)
    frames = frames_for(length)
    row = [-1] * TEXT + [f for f in range(frames) for _ in range(TOKENS_PER_FRAME)] + [-1] * TEXT
    frame_ids = torch.tensor([row])
    tokens = frame_ids.shape[1]
    layout = FrameLayout(frame_ids, torch.ones_like(frame_ids), "frame_block_causal")
    q, k, v = (torch.randn(1, HEADS, tokens, HEAD_DIM, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, HEADS, tokens, HEAD_DIM)
    layout.groups  # noqa: B018  (the plan is built once per forward and shared by all layers)
    return frames, tokens, layout, (q, k, v), grad


def _step(kernel: str, layout, qkv, grad) -> None:
    import torch.nn.functional as F

    from tcllava.attention import attend

    q, k, v = qkv
    for t in qkv:
        t.grad = None
    if kernel == "causal_sdpa":
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        out = attend(
            q,
            k,
            v,
            layout,
            kernel={"sdpa_dense_mask": "sdpa", "eager_dense_mask": "eager", "tcllava_prefix": "prefix"}[
                kernel
            ],
        )
    out.backward(grad)


def measure_times(kernels: list[str], length: int, repeats: int) -> dict:
    """All kernels of one length in one process, interleaved round-robin so that machine noise hits
    each alike; the best of ``repeats`` counts."""
    frames, tokens, layout, qkv, grad = _setup(length)
    times: dict[str, list[float]] = {k: [] for k in kernels}
    for _ in range(repeats):
        for kernel in kernels:
            start = time.perf_counter()
            _step(kernel, layout, qkv, grad)
            times[kernel].append(time.perf_counter() - start)
    return {
        "frames": frames,
        "tokens": tokens,
        "seconds": {k: min(v) for k, v in times.items()},
        "seconds_median": {k: statistics.median(v) for k, v in times.items()},
    }


def measure_memory(kernel: str, length: int) -> float:
    """Peak resident growth of one forward+backward, alone in a fresh process."""
    _, _, layout, qkv, grad = _setup(length)
    with PeakMemory() as memory:
        _step(kernel, layout, qkv, grad)
    return memory.peak_mib


def _child(*args: str) -> dict | float:
    cmd = [sys.executable, __file__, "--child", *args]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, length = args.child[0], int(args.child[1])
        if what == "times":
            print(json.dumps(measure_times(args.child[2].split(","), length, args.repeats)))
        else:
            print(json.dumps(measure_memory(what, length)))
        return 0

    rows = []
    for length in args.lengths:
        kernels = [k for k in KERNELS if k != "eager_dense_mask" or length <= EAGER_MAX_LENGTH]
        timing = _child("times", str(length), ",".join(kernels), "--repeats", str(args.repeats))
        for kernel in KERNELS:
            if kernel not in kernels:
                rows.append(
                    {
                        "kernel": kernel,
                        "tokens": timing["tokens"],
                        "length": length,
                        "skipped": "exceeds memory",
                    }
                )
                continue
            row = {
                "kernel": kernel,
                "length": length,
                "tokens": timing["tokens"],
                "frames": timing["frames"],
                "seconds": timing["seconds"][kernel],
                "seconds_median": timing["seconds_median"][kernel],
                "peak_mib": _child(kernel, str(length)),
            }
            row["time_ratio_to_causal"] = row["seconds"] / timing["seconds"]["causal_sdpa"]
            rows.append(row)
            print(
                f"L={row['tokens']:>6} {kernel:<18} {row['seconds']:.3f} s  x{row['time_ratio_to_causal']:.2f}  "
                f"peak {row['peak_mib']:.0f} MiB",
                flush=True,
            )
    import torch

    report = {
        "benchmark": "attention forward+backward, frame_block_causal, fp32, batch 1",
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "tokens_per_frame": TOKENS_PER_FRAME,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention.json").write_text(json.dumps(report, indent=2))
    lines = [
        "| tokens | frames | kernel | fwd+bwd s | x causal SDPA | peak MiB |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if "seconds" not in r:
            lines.append(f"| {r['tokens']} | | {KERNELS[r['kernel']]} | skipped ({r['skipped']}) | | |")
            continue
        lines.append(
            f"| {r['tokens']} | {r['frames']} | {KERNELS[r['kernel']]} | {r['seconds']:.3f} | "
            f"{r['time_ratio_to_causal']:.2f} | {r['peak_mib']:.0f} |"
        )
    (args.out / "attention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
