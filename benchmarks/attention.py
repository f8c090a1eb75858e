"""Forward+backward time and peak memory of TC attention kernels vs causal SDPA (the floor).

    python benchmarks/attention.py                    # 512 to 16k tokens and the demo's shape (~10 min on 2 cores)
    python benchmarks/attention.py --lengths 2048     # one length
    python benchmarks/attention.py --threads 1        # CPU time of one thread: robust to other processes

Sequences are videos of 144-token frames between text (3 to 113 frames), 8 heads of 64, fp32, batch 1,
mask frame_block_causal. The demo's shape: batch 16, 8 frames of 16 tokens between text, answers of
different lengths right-padded to about 200 tokens, 4 heads of 32; there vanilla (the causal mask with
padding) runs the prefix kernel too, and causal SDPA on the unpadded batch is the floor.
Times: all kernels of one shape in one process, interleaved round-robin (the order rotates every round)
after a warm-up round; each round gives every kernel's ratio to causal SDPA of the same round, reported as
min / median / max over the rounds. The prefix kernel's plan (its groups and masks) is built once per
forward and shared by every layer; it is built before timing and its own cost reported as ``plan_ms``.
Peak memory: one forward+backward per kernel alone in a fresh process, as growth of resident memory over
the inputs. Writes benchmarks/results/attention.json and attention.md (attention_<N>thread.* with
--threads N).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from peak_memory import PeakMemory
from spread import spread

RESULTS = Path(__file__).parent / "results"
TOKENS_PER_FRAME, HEADS, HEAD_DIM, TEXT = 144, 8, 64, 64
# The demo's training batch (tcllava demo): samples, frames, tokens per frame, heads, head size.
DEMO = {"batch": 16, "frames": 8, "tokens_per_frame": 16, "heads": 4, "head_dim": 32}
KERNELS = {
    "causal_sdpa": "SDPA is_causal (floor, no TC mask)",
    "sdpa_dense_mask": "SDPA + dense TC mask (transformers default)",
    "eager_dense_mask": "eager + 4D float mask",
    "tcllava_prefix": "tcllava exact prefix kernel",
    "vanilla_padded": "vanilla: causal mask with padding (prefix kernel)",
}
LENGTH_KERNELS = ["causal_sdpa", "sdpa_dense_mask", "eager_dense_mask", "tcllava_prefix"]
DEMO_KERNELS = ["causal_sdpa", "sdpa_dense_mask", "vanilla_padded", "tcllava_prefix"]
# Eager materialises several [H, L, L] fp32 tensors: beyond this it does not fit in 24 GiB.
EAGER_MAX_LENGTH = 8192
TARGET = 1.05


def frames_for(length: int) -> int:
    return max(1, round((length - 2 * TEXT) / TOKENS_PER_FRAME))


def _rows(shape: str) -> tuple[list[list[int]], int, int]:
    """(frame-id rows before padding, heads, head size) of a shape: a length, or "demo"."""
    if shape == "demo":
        rng = random.Random(0)
        video = [f for f in range(DEMO["frames"]) for _ in range(DEMO["tokens_per_frame"])]
        rows = [[-1] * 40 + video + [-1] * rng.randint(10, 40) for _ in range(DEMO["batch"])]
        return rows, DEMO["heads"], DEMO["head_dim"]
    frames = frames_for(int(shape))
    row = [-1] * TEXT + [f for f in range(frames) for _ in range(TOKENS_PER_FRAME)] + [-1] * TEXT
    return [row], HEADS, HEAD_DIM


def _setup(shape: str):
    import torch

    torch.manual_seed(0)
    rows, heads, dim = _rows(shape)
    tokens = max(map(len, rows))
    frame_ids = torch.tensor([r + [-1] * (tokens - len(r)) for r in rows])
    real = torch.tensor([[1] * len(r) + [0] * (tokens - len(r)) for r in rows])
    batch = len(rows)
    # Laid out [B, T, H, D] in memory and viewed [B, H, T, D], as a transformers layer passes them.
    q, k, v = (torch.randn(batch, tokens, heads, dim).transpose(1, 2).requires_grad_() for _ in range(3))
    grad = torch.randn(batch, tokens, heads, dim).transpose(1, 2)
    return frame_ids, real, (q, k, v), grad, len({f for f in rows[0] if f >= 0})


def _layout(kernel: str, frame_ids, real):
    import torch

    from tcllava.attention import FrameLayout

    if kernel == "vanilla_padded":
        layout = FrameLayout(frame_ids, real, "causal")
    else:
        layout = FrameLayout(frame_ids, real, "frame_block_causal")
    layout.prefix_plan(torch.float32, torch.device("cpu"))  # built once per forward, shared by all layers
    return layout


def _step(kernel: str, layout, qkv, grad) -> None:
    import torch.nn.functional as F

    from tcllava.attention import attend

    q, k, v = qkv
    for t in qkv:
        t.grad = None
    if kernel == "causal_sdpa":
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        # vanilla_padded: what the dispatcher picks for the causal mask with padding (the prefix kernel).
        name = {"sdpa_dense_mask": "sdpa", "eager_dense_mask": "eager", "vanilla_padded": "auto"}.get(
            kernel, "prefix"
        )
        out = attend(q, k, v, layout, kernel=name)
    out.backward(grad)


def _clock():
    """Wall time; with one thread the process's CPU time, which time spent waiting for a core (other
    processes on a shared machine) does not inflate."""
    import torch

    return time.process_time if torch.get_num_threads() == 1 else time.perf_counter


def measure_times(kernels: list[str], shape: str, repeats: int) -> dict:
    """All kernels of one shape in one process, interleaved round-robin (rotating order) after a warm-up
    round; per round, each kernel's time over causal SDPA's time of the same round."""
    frame_ids, real, qkv, grad, frames = _setup(shape)
    layouts = {k: _layout(k, frame_ids, real) for k in kernels}
    plan_seconds = []
    for _ in range(5):
        start = time.perf_counter()
        _layout("tcllava_prefix", frame_ids, real)
        plan_seconds.append(time.perf_counter() - start)
    times: dict[str, list[float]] = {k: [] for k in kernels}
    clock = _clock()
    for round_ in range(repeats + 1):
        order = kernels[round_ % len(kernels) :] + kernels[: round_ % len(kernels)]
        for kernel in order:
            start = clock()
            _step(kernel, layouts[kernel], qkv, grad)
            if round_:
                times[kernel].append(clock() - start)
    causal = times["causal_sdpa"]
    return {
        "tokens": int(frame_ids.shape[1]),
        "batch": int(frame_ids.shape[0]),
        "frames": frames,
        "plan_ms": 1e3 * statistics.median(plan_seconds),
        "seconds": {k: spread(v) for k, v in times.items()},
        "ratio": {k: spread([t / c for t, c in zip(v, causal, strict=True)]) for k, v in times.items()},
    }


def measure_memory(kernel: str, shape: str) -> float:
    """Peak resident growth of one forward+backward, alone in a fresh process."""
    frame_ids, real, qkv, grad, _ = _setup(shape)
    layout = _layout(kernel, frame_ids, real)
    with PeakMemory() as memory:
        _step(kernel, layout, qkv, grad)
    return memory.peak_mib


def _child(*args: str) -> dict | float:
    cmd = [sys.executable, __file__, "--child", *args]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--no-demo", action="store_true", help="skip the demo's shape")
    parser.add_argument("--repeats", type=int, default=0, help="rounds per shape (default: by length)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        what, shape = args.child[0], args.child[1]
        if what == "times":
            print(json.dumps(measure_times(args.child[2].split(","), shape, args.repeats)))
        else:
            print(json.dumps(measure_memory(what, shape)))
        return 0

    shapes = [str(n) for n in args.lengths] + ([] if args.no_demo else ["demo"])
    load_before = os.getloadavg()[0]
    rows = []
    for shape in shapes:
        if shape == "demo":
            kernels = DEMO_KERNELS
        else:
            kernels = [k for k in LENGTH_KERNELS if k != "eager_dense_mask" or int(shape) <= EAGER_MAX_LENGTH]
        # Short shapes are fast and noisy: more rounds.
        repeats = args.repeats or (40 if shape == "demo" else max(7, min(40, 40 * 2048 // int(shape))))
        child = ["--repeats", str(repeats), "--threads", str(args.threads)]
        timing = _child("times", shape, ",".join(kernels), *child)
        for kernel in kernels:
            row = {
                "shape": "demo" if shape == "demo" else "video",
                "kernel": kernel,
                "length": None if shape == "demo" else int(shape),
                "tokens": timing["tokens"],
                "batch": timing["batch"],
                "frames": timing["frames"],
                "repeats": repeats,
                "seconds": timing["seconds"][kernel],
                "ratio_to_causal": timing["ratio"][kernel],
                "peak_mib": _child(kernel, shape, "--threads", str(args.threads)),
            }
            if kernel == "tcllava_prefix":
                row["plan_ms"] = timing["plan_ms"]
            rows.append(row)
            ratio = row["ratio_to_causal"]
            print(
                f"{shape:>6} T={row['tokens']:>6} {kernel:<18} {row['seconds']['median']:.4f} s  "
                f"x{ratio['median']:.3f} ({ratio['median_ci95'][0]:.3f}-{ratio['median_ci95'][1]:.3f}) "
                f"[{ratio['min']:.3f}, {ratio['max']:.3f}]  peak {row['peak_mib']:.0f} MiB",
                flush=True,
            )
        if shape != "demo" and int(shape) > EAGER_MAX_LENGTH:
            rows.append(
                {
                    "shape": "video",
                    "kernel": "eager_dense_mask",
                    "length": int(shape),
                    "skipped": "exceeds memory",
                }
            )

    report = {
        "benchmark": "attention forward+backward, frame_block_causal, fp32",
        "shapes": {
            "video": f"batch 1, {HEADS} heads x {HEAD_DIM}, {TOKENS_PER_FRAME}-token frames between {TEXT} text "
            "tokens on each side",
            "demo": f"batch {DEMO['batch']}, {DEMO['heads']} heads x {DEMO['head_dim']}, {DEMO['frames']} frames "
            f"x {DEMO['tokens_per_frame']} tokens, right-padded",
        },
        "clock": "process CPU time" if torch.get_num_threads() == 1 else "wall time",
        "statistic": "per round ratio to causal SDPA of the same round: min / median / max over the rounds and a "
        "distribution-free 95% interval of the median (benchmarks/spread.py)",
        "target": f"tcllava_prefix median ratio <= {TARGET} from 512 tokens up",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        # The machine is shared: its 1-minute load average (runnable threads) before and after the run.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "attention" if not args.threads else f"attention_{args.threads}thread"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"Attention forward+backward, fp32, {report['threads']} threads, {report['clock']} (machine load "
        f"{report['load_average'][0]} -> {report['load_average'][1]}); `python benchmarks/attention.py`. "
        "Ratio: per round to causal SDPA of the same round, median (95% interval of the median) [min, max] "
        "over the rounds.",
        "",
        "| shape | tokens | kernel | fwd+bwd s (median) | x causal SDPA | rounds | peak MiB |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        shape = "demo" if r["shape"] == "demo" else f"{r['length']}"
        if "seconds" not in r:
            lines.append(f"| {shape} | | {KERNELS[r['kernel']]} | skipped ({r['skipped']}) | | | |")
            continue
        ratio = r["ratio_to_causal"]
        name = KERNELS[r["kernel"]] + (f" (plan {r['plan_ms']:.1f} ms per forward)" if "plan_ms" in r else "")
        lines.append(
            f"| {shape} | {r['tokens']}{' x ' + str(r['batch']) if r['batch'] > 1 else ''} | {name} | "
            f"{r['seconds']['median']:.4f} | {ratio['median']:.3f} ({ratio['median_ci95'][0]:.3f}-"
            f"{ratio['median_ci95'][1]:.3f}) [{ratio['min']:.3f}, {ratio['max']:.3f}] | "
            f"{r['repeats']} | {r['peak_mib']:.0f} |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
