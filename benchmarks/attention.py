"""Forward+backward time and peak memory of TC attention kernels vs causal SDPA (the floor).

    python benchmarks/attention.py                 # 2k, 4k, 8k, 16k tokens (a few minutes on 2 cores)
    python benchmarks/attention.py --lengths 2048  # one length

Sequences are videos of 144-token frames between text (16 to 112 frames), 8 heads of 64, fp32, batch 1,
mask frame_block_causal. Each (kernel, length) runs in a fresh subprocess so that its peak resident memory
can be read without interference; peak memory is the growth of resident memory over the inputs.
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


def measure(kernel: str, length: int, repeats: int) -> dict:
    """Runs inside the subprocess."""
    import torch
    import torch.nn.functional as F

    from tcllava.attention import FrameLayout, attend

    torch.manual_seed(0)
    frames = frames_for(length)
    row = [-1] * TEXT + [f for f in range(frames) for _ in range(TOKENS_PER_FRAME)] + [-1] * TEXT
    frame_ids = torch.tensor([row])
    tokens = frame_ids.shape[1]
    layout = FrameLayout(frame_ids, torch.ones_like(frame_ids), "frame_block_causal")
    q, k, v = (torch.randn(1, HEADS, tokens, HEAD_DIM, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, HEADS, tokens, HEAD_DIM)
    run = {
        "causal_sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "sdpa_dense_mask": lambda: attend(q, k, v, layout, kernel="sdpa"),
        "eager_dense_mask": lambda: attend(q, k, v, layout, kernel="eager"),
        "tcllava_prefix": lambda: attend(q, k, v, layout, kernel="prefix"),
    }[kernel]
    layout.groups  # noqa: B018  (the plan is built once per forward and shared by all layers)
    times = []
    with PeakMemory() as memory:
        for _ in range(repeats):
            for t in (q, k, v):
                t.grad = None
            start = time.perf_counter()
            run().backward(grad)
            times.append(time.perf_counter() - start)
    return {
        "kernel": kernel,
        "tokens": tokens,
        "frames": frames,
        "seconds": min(times),
        "seconds_median": statistics.median(times),
        "peak_mib": memory.peak_mib,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, metavar=("KERNEL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.repeats)))
        return 0

    rows = []
    for length in args.lengths:
        for kernel in KERNELS:
            if kernel == "eager_dense_mask" and length > EAGER_MAX_LENGTH:
                rows.append({"kernel": kernel, "tokens": None, "length": length, "skipped": "exceeds memory"})
                continue
            cmd = [sys.executable, __file__, "--child", kernel, str(length), "--repeats", str(args.repeats)]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            result["length"] = length
            rows.append(result)
            print(
                f"L={length:>6} {kernel:<18} {result['seconds']:.3f} s  peak {result['peak_mib']:.0f} MiB",
                flush=True,
            )
    floor = {r["length"]: r for r in rows if r["kernel"] == "causal_sdpa"}
    for r in rows:
        if "seconds" in r:
            r["time_ratio_to_causal"] = r["seconds"] / floor[r["length"]]["seconds"]
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
            lines.append(f"| ~{r['length']} | | {KERNELS[r['kernel']]} | skipped ({r['skipped']}) | | |")
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
