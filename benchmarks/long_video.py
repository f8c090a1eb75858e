"""Memory and time of the exact TC attention kernels on long videos: does the cost grow as it should?

    python benchmarks/long_video.py                     # the default grid (minutes on 2 shared cores)
    python benchmarks/long_video.py --frames 512 --tokens 144 --forward-max 80000   # the longest case

A TC-LLaVA prompt at one attention layer: 64 text tokens, F frames of m visual tokens (16: the demo's
pooling; 144: PLLaVA's 12 x 12), 64 text tokens; 8 heads of 64, fp32, batch 1, frame_block_causal. Kernels:
what the dispatcher runs for it on CPU (the exact prefix kernel), causal SDPA (the floor: no TC mask), and
SDPA with the dense TC mask (transformers' default) while the mask is small enough (--dense-max tokens).
Passes: the forward (prefill, no autograd) up to --forward-max tokens, forward+backward (training) up to
--backward-max tokens.

Each (size, pass, kernel) runs in a child forked from this process after it has imported torch and
tcllava and run nothing, so the child's growth of resident memory over its inputs (after a warm-up call on
two frames) is the case's own peak; the first call gives the peak and the first time, more calls follow
while they fit in --budget seconds (at most --repeats in all). Writes benchmarks/results/long_video.json
and long_video.md: per case min/median/max seconds and peak MiB; per (m, pass, kernel) the growth
exponent p of cost ~ F^p fitted over frame counts, the cost per frame at the longest vs the shortest
length, and the memory slope in MiB per frame.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from peak_memory import PeakMemory
from tcllava.attention import FrameLayout, attend, choose_kernel

RESULTS = Path(__file__).parent / "results"
HEADS, HEAD_DIM, TEXT = 8, 64, 64
KERNELS = {
    "dispatcher": "tcllava dispatcher (exact prefix kernel on CPU)",
    "causal_sdpa": "SDPA is_causal (floor, no TC mask)",
    "sdpa_dense_mask": "SDPA + dense TC mask (transformers default)",
}
PASSES = {"forward": "forward (prefill)", "forward_backward": "forward+backward (training)"}


def _inputs(frames: int, per_frame: int, backward: bool):
    torch.manual_seed(0)
    row = [-1] * TEXT + [f for f in range(frames) for _ in range(per_frame)] + [-1] * TEXT
    frame_ids = torch.tensor([row])
    layout = FrameLayout(frame_ids, torch.ones_like(frame_ids), "frame_block_causal")
    layout.groups  # noqa: B018  (the plan is built once per forward and shared by all layers)
    qkv = [torch.randn(1, HEADS, len(row), HEAD_DIM, requires_grad=backward) for _ in range(3)]
    grad = torch.randn(1, HEADS, len(row), HEAD_DIM) if backward else None
    return layout, qkv, grad


def _step(kernel: str, layout: FrameLayout, qkv: list[torch.Tensor], grad: torch.Tensor | None) -> None:
    q, k, v = qkv
    with torch.set_grad_enabled(grad is not None):
        if kernel == "causal_sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = attend(q, k, v, layout, kernel="auto" if kernel == "dispatcher" else "sdpa")
        if grad is not None:
            out.backward(grad)
            for t in qkv:
                t.grad = None


def measure(kernel: str, frames: int, per_frame: int, backward: bool, repeats: int, budget: float) -> dict:
    """One case, in a fresh child: peak memory of the first call, then the times of all calls."""
    warm = _inputs(2, per_frame, backward)
    _step(kernel, *warm)  # thread pool and kernels initialised outside the measurement
    del warm
    layout, qkv, grad = _inputs(frames, per_frame, backward)
    picked = choose_kernel(qkv[0], layout) if kernel == "dispatcher" else kernel
    with PeakMemory() as memory:
        start = time.perf_counter()
        _step(kernel, layout, qkv, grad)
        times = [time.perf_counter() - start]
    while len(times) < repeats and sum(times) + times[0] <= budget:
        start = time.perf_counter()
        _step(kernel, layout, qkv, grad)
        times.append(time.perf_counter() - start)
    return {"seconds": times, "peak_mib": memory.peak_mib, "ran": picked, "threads": torch.get_num_threads()}


def _child(conn, *args) -> None:
    try:
        conn.send(measure(*args))
    except Exception as e:  # reported as the row's error, so one failed case does not stop the grid
        conn.send({"error": f"{type(e).__name__}: {e}"})
    conn.close()


def in_fresh_process(*args) -> dict:
    """``measure(*args)`` in a forked child; a child killed (out of memory) is reported, not raised."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, *args))
    child.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = {"error": "the child process died (out of memory?)"}
    child.join()
    return result


def provenance() -> dict:
    """The commit and the attention code measured (its files' sha256, and whether they differ from the
    commit), so numbers taken while kernels change can be told apart."""
    import tcllava.attention

    root = Path(tcllava.attention.__file__).parent
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in sorted(root.glob("*.py"))}

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return run.stdout.strip() if run.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": git("status", "--porcelain", "."),
        "files": files,
    }


def fit(rows: list[dict], key: str) -> dict:
    """Growth of ``key`` over frame counts: exponent p of a least-squares fit of log(value) on log(F) (and
    between the two longest lengths alone, where fixed costs no longer hide it), the cost per frame at the
    longest vs the shortest length, and the least-squares slope per frame."""
    points = [(r["frames"], r[key]) for r in rows if r.get(key) and r[key] > 0]
    if len(points) < 2:
        return {}
    xs, ys = [math.log(f) for f, _ in points], [math.log(v) for _, v in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    exponent = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    fs, vs = [f for f, _ in points], [v for _, v in points]
    mf, mv = statistics.fmean(fs), statistics.fmean(vs)
    slope = sum((f - mf) * (v - mv) for f, v in zip(fs, vs, strict=True)) / sum((f - mf) ** 2 for f in fs)
    (f0, v0), (fp, vp), (f1, v1) = points[0], points[-2], points[-1]
    return {
        "exponent": exponent,
        "exponent_longest": math.log(v1 / vp) / math.log(f1 / fp),
        "per_frame_ratio": (v1 / f1) / (v0 / f0),
        "slope_per_frame": slope,
        "frames": [f0, f1],
    }


def markdown(report: dict) -> str:
    lines = [
        "# Attention on long videos: the exact kernels' time and memory",
        "",
        f"{report['heads']} heads x {report['head_dim']}, fp32, batch 1, frame_block_causal, "
        f"{TEXT} + {TEXT} text tokens; torch {report['torch']}, {report['threads']} threads, "
        f"{report['machine']}; attention code of {report['attention_code']['commit'][:7]}"
        + (" with uncommitted changes" if report["attention_code"]["uncommitted"] else "")
        + ". Peak MiB: growth of resident memory over the inputs, one call in a fresh process. Times: "
        "seconds per call, min / median / max of the calls made.",
        "",
        "| tokens/frame | frames | tokens | pass | kernel | s min | s median | s max | calls | x causal "
        "| peak MiB |",
        "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        head = f"| {r['per_frame']} | {r['frames']} | {r['tokens']} | {r['pass']} | {r['kernel']} |"
        if "error" in r or "skipped" in r:
            lines.append(f"{head} {r.get('error') or r['skipped']} | | | | | |")
            continue
        ratio = "-" if r.get("x_causal") is None else f"{r['x_causal']:.2f}"
        lines.append(
            f"{head} {r['s_min']:.3f} | {r['s_median']:.3f} | {r['s_max']:.3f} | {r['calls']} | {ratio} | "
            f"{r['peak_mib']:.0f} |"
        )
    lines += [
        "",
        "## Growth with the number of frames",
        "",
        "Exponent p of cost ~ frames^p (1: linear, 2: quadratic) fitted over the frame counts measured, "
        "and between the two longest alone (p last); per-frame ratio: cost per frame at the longest length "
        "over the cost per frame at the shortest (1 for linear growth); memory slope: least-squares MiB per "
        "frame.",
        "",
        "| tokens/frame | pass | kernel | frames | time p | time p last | time per-frame ratio | memory p "
        "| memory p last | memory per-frame ratio | MiB per frame |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in report["growth"]:
        t, m = g["time"], g["memory"]
        if not t or not m:
            continue
        lines.append(
            f"| {g['per_frame']} | {g['pass']} | {g['kernel']} | {t['frames'][0]}-{t['frames'][1]} | "
            f"{t['exponent']:.2f} | {t['exponent_longest']:.2f} | {t['per_frame_ratio']:.1f} | "
            f"{m['exponent']:.2f} | {m['exponent_longest']:.2f} | {m['per_frame_ratio']:.2f} | "
            f"{m['slope_per_frame']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 144], help="visual tokens per frame")
    parser.add_argument("--forward-max", type=int, default=40000, help="longest sequence for the forward")
    parser.add_argument("--backward-max", type=int, default=10000, help="longest for forward+backward")
    parser.add_argument("--dense-max", type=int, default=20000, help="longest for the dense-mask SDPA")
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    parser.add_argument("--passes", nargs="+", choices=list(PASSES), default=list(PASSES))
    parser.add_argument("--repeats", type=int, default=5, help="calls per case at most")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of calls per case, about")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--from-json", type=Path, help="only redo the growth fits and tables of a run's JSON")
    args = parser.parse_args()
    if args.from_json:
        write(json.loads(args.from_json.read_text()), args.out)
        return 0

    rows = []
    for per_frame in args.tokens:
        for frames in args.frames:
            tokens = 2 * TEXT + frames * per_frame
            for name, limit in (("forward", args.forward_max), ("forward_backward", args.backward_max)):
                if tokens > limit or name not in args.passes:
                    continue
                causal = None
                for kernel in args.kernels:
                    row = {"per_frame": per_frame, "frames": frames, "tokens": tokens, "pass": name}
                    row["kernel"] = kernel
                    if kernel == "sdpa_dense_mask" and tokens > args.dense_max:
                        rows.append({**row, "skipped": f"skipped (over {args.dense_max} tokens)"})
                        continue
                    found = in_fresh_process(
                        kernel, frames, per_frame, name == "forward_backward", args.repeats, args.budget
                    )
                    if "error" in found:
                        rows.append({**row, "error": found["error"]})
                        print(
                            f"{per_frame:>4} x {frames:>4} {name:<16} {kernel:<16} {found['error']}",
                            flush=True,
                        )
                        continue
                    times = found["seconds"]
                    row.update(
                        s_min=min(times),
                        s_median=statistics.median(times),
                        s_max=max(times),
                        calls=len(times),
                        seconds=times,
                        peak_mib=found["peak_mib"],
                        ran=found["ran"],
                        threads=found["threads"],
                    )
                    causal = row["s_min"] if kernel == "causal_sdpa" else causal
                    rows.append(row)
                    print(
                        f"{per_frame:>4} x {frames:>4} = {tokens:>6} tokens {name:<16} {kernel:<16} "
                        f"{row['s_min']:.3f} s ({len(times)} calls)  peak {row['peak_mib']:.0f} MiB",
                        flush=True,
                    )
                for row in rows:
                    same = (row["per_frame"], row["frames"], row["pass"]) == (per_frame, frames, name)
                    if same and "s_min" in row and causal:
                        row["x_causal"] = row["s_min"] / causal
    report = {
        "benchmark": "TC attention on long videos: time and peak memory by frame count",
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "text_tokens": 2 * TEXT,
        "torch": torch.__version__,
        "threads": next((r["threads"] for r in rows if "threads" in r), None),
        "machine": platform.processor() or platform.machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "attention_code": provenance(),
        "rows": rows,
    }
    write(report, args.out)
    return 0


def growth(rows: list[dict]) -> list[dict]:
    """:func:`fit` of time and memory per (tokens per frame, pass, kernel) measured."""
    cases = list(dict.fromkeys((r["per_frame"], r["pass"], r["kernel"]) for r in rows if "s_min" in r))
    out = []
    for per_frame, name, kernel in cases:
        case = [r for r in rows if (r["per_frame"], r["pass"], r["kernel"]) == (per_frame, name, kernel)]
        case = [r for r in case if "s_min" in r]
        out.append(
            {
                "per_frame": per_frame,
                "pass": name,
                "kernel": kernel,
                "time": fit(case, "s_min"),
                "memory": fit(case, "peak_mib"),
            }
        )
    return out


def write(report: dict, out: Path) -> None:
    report["growth"] = growth(report["rows"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "long_video.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "long_video.md").write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
