"""Samples/s and peak memory of one training step, TC-LLaVA vs vanilla LLaVA, on small configs.

    python benchmarks/train_step.py                  # both shapes, a few minutes on 2 CPU cores
    python benchmarks/train_step.py --shapes small   # one shape
    python benchmarks/train_step.py --threads 1      # CPU time of one thread: robust to other processes
    python benchmarks/train_step.py --device cuda    # on a GPU (bf16 autocast)

A step is what the recipe does per optimizer step (tcllava.train): forward with the token-normalised
loss, backward, gradient clipping, AdamW. Both variants are the same model built by the recipe's own
``build_model`` from one checkpoint, differing only in TC attention (vanilla: gamma 0 and the causal
mask, which runs PyTorch's fused causal SDPA; TC: gamma 1 and frame_block_causal, the exact prefix kernel
on CPU). Times interleave the two variants in one process (the order alternates every round) after
warm-up steps, so that machine noise hits both alike; each round gives TC's step time over vanilla's of
the same round, reported as min / median / max over the rounds. Peak memory is measured for each variant
alone in a fresh process. Batches are pre-built (no video decoding) and rows have equal lengths (no
padding). Writes benchmarks/results/train_step.json and train_step.md (train_step_<N>thread.* with
--threads N). Target: TC within 1.05x of vanilla.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spread import spread

RESULTS = Path(__file__).parent / "results"
VARIANTS = {"vanilla": {"gamma": 0.0, "mask": "causal"}, "tc": {"gamma": 1.0, "mask": "frame_block_causal"}}
# name: (frames, image size, patch, tokens per frame side, text hidden, text layers, batch)
SHAPES = {
    "small": (8, 64, 8, 8, 256, 4, 2),  # 8 frames x 64 tokens: the CPU demo's scale
    "pllava": (16, 96, 8, 12, 256, 4, 1),  # 16 frames x 144 tokens = 2,304 visual tokens, as PLLaVA
}
WORDS = "what happens in the video first then last a red ball rolls left and stops"


def build(shape: str, root: Path, variant: str, device: str):
    """(model, optimizer, batch, config) built with the recipe's own functions."""
    import torch

    from tcllava.model import Message, TCLlavaForConditionalGeneration, TCLlavaProcessor
    from tcllava.model.factory import build_image_processor, build_word_tokenizer, tiny_config
    from tcllava.train import TrainConfig
    from tcllava.train.trainable import build_model, build_optimizer

    frames, image, patch, side, hidden, layers, batch_size = SHAPES[shape]
    ckpt = root / shape
    if not (ckpt / "config.json").is_file():
        tok = build_word_tokenizer([WORDS])
        config = tiny_config(
            len(tok),
            tok.convert_tokens_to_ids("<image>"),
            image_size=image,
            patch_size=patch,
            vision_hidden=64,
            text_hidden=hidden,
            text_layers=layers,
            heads=hidden // 32,
            pool_shape=(0, side, side),
            chat_template="plain",
        )
        torch.manual_seed(0)
        TCLlavaForConditionalGeneration(config).save_pretrained(ckpt)
        TCLlavaProcessor(tok, build_image_processor(image), config, num_frames=frames).save_pretrained(ckpt)
    config = TrainConfig(
        model=str(ckpt),
        output_dir=str(root / "unused"),
        data=[{"path": "unused.json"}],
        num_frames=frames,
        max_steps=1,
        batch_size=batch_size,
        llm="full",
        vision="frozen",
        lr=1e-4,
        attention=dict(VARIANTS[variant]),
    )
    torch.manual_seed(0)
    model = build_model(config).to(device)
    optimizer = build_optimizer(model, config)
    processor = TCLlavaProcessor.from_pretrained(ckpt, config=model.config)
    messages = [
        Message("user", "<video>\nwhat happens in the video first ?"),
        Message("assistant", "a red ball rolls left and stops"),
    ]
    generator = torch.Generator().manual_seed(0)
    clips = [
        torch.randint(0, 256, (frames, image, image, 3), dtype=torch.uint8, generator=generator)
        for _ in range(batch_size)
    ]
    encoded = [processor.encode(processor.render(messages, add_generation_prompt=False), [c]) for c in clips]
    batch = processor.collate(encoded, padding_side="right")
    batch = {k: v.to(device) if hasattr(v, "to") else [p.to(device) for p in v] for k, v in batch.items()}
    return model, optimizer, batch, config


def step(model, optimizer, batch, device: str) -> None:
    import contextlib

    import torch

    tokens = (batch["labels"][:, 1:] != -100).sum().float()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    with autocast:
        loss = model(**batch, num_items_in_batch=tokens, use_cache=False).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()


def measure_times(shape: str, root: Path, device: str, repeats: int) -> dict:
    import torch

    built = {v: build(shape, root, v, device) for v in VARIANTS}
    for v in VARIANTS:  # warm-up: allocator, kernel choice, optimizer state
        for _ in range(3):
            step(*built[v][:3], device)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    # With one thread: the process's CPU time, which waiting for a core (other processes) does not inflate.
    clock = time.process_time if device == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
    for round_ in range(repeats):
        for v in list(VARIANTS)[:: 1 if round_ % 2 == 0 else -1]:
            start = clock()
            step(*built[v][:3], device)
            times[v].append(clock() - start)
    batch = built["tc"][2]
    media = int((batch["input_ids"] == built["tc"][0].config.media_token_id).sum())
    ratios = [t / b for t, b in zip(times["tc"], times["vanilla"], strict=True)]
    return {
        "tokens_per_sample": int(batch["input_ids"].shape[1]),
        "visual_tokens_per_sample": media // batch["input_ids"].shape[0],
        "batch": int(batch["input_ids"].shape[0]),
        "parameters_m": round(sum(p.numel() for p in built["tc"][0].parameters()) / 1e6, 2),
        "seconds": {v: statistics.median(t) for v, t in times.items()},
        "seconds_all": times,
        "ratio": spread(ratios),
    }


def measure_memory(shape: str, root: Path, variant: str, device: str) -> float:
    """Peak memory growth (MiB) of two training steps over the built model and batch."""
    import torch

    model, optimizer, batch, _ = build(shape, root, variant, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            step(model, optimizer, batch, device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        step(model, optimizer, batch, device)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024


def _child(*args: str) -> dict | float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        what, shape, root = args.child[:3]
        if what == "times":
            print(json.dumps(measure_times(shape, Path(root), args.device, args.repeats)))
        else:
            print(json.dumps(measure_memory(shape, Path(root), what, args.device)))
        return 0

    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for shape in args.shapes:
            options = ["--device", args.device, "--threads", str(args.threads)]
            timing = _child("times", shape, root, "--repeats", str(args.repeats), *options)
            for variant in VARIANTS:
                seconds = timing["seconds"][variant]
                row = {
                    "shape": shape,
                    "variant": variant,
                    "frames": SHAPES[shape][0],
                    "tokens_per_sample": timing["tokens_per_sample"],
                    "visual_tokens_per_sample": timing["visual_tokens_per_sample"],
                    "batch": timing["batch"],
                    "parameters_m": timing["parameters_m"],
                    "step_seconds": seconds,
                    "samples_per_s": timing["batch"] / seconds,
                    "ratio_to_vanilla": timing["ratio"] if variant == "tc" else spread([1.0]),
                    "peak_mib": _child(variant, shape, root, *options),
                }
                rows.append(row)
                print(
                    f"{shape:<7} {variant:<8} {row['tokens_per_sample']:>5} tok  {seconds:.3f} s/step  "
                    f"{row['samples_per_s']:.2f} samples/s  x{row['ratio_to_vanilla']['median']:.3f} "
                    f"({row['ratio_to_vanilla']['median_ci95'][0]:.3f}-{row['ratio_to_vanilla']['median_ci95'][1]:.3f}) "
                    f"[{row['ratio_to_vanilla']['min']:.3f}, {row['ratio_to_vanilla']['max']:.3f}]  "
                    f"peak {row['peak_mib']:.0f} MiB",
                    flush=True,
                )
    report = {
        "benchmark": "one training step (forward, backward, clip, AdamW), LLM trained fully, vision frozen",
        "device": args.device,
        "precision": "bf16 autocast" if args.device == "cuda" else "fp32",
        "repeats": args.repeats,
        "clock": "process CPU time" if args.device == "cpu" and torch.get_num_threads() == 1 else "wall time",
        "statistic": "per round, TC's step time over vanilla's of the same round: min / median / max and a "
        "distribution-free 95% interval of the median (benchmarks/spread.py)",
        "target": "TC step time within 1.05x of vanilla",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        # The machine is shared: its 1-minute load average (runnable threads) before and after the run.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "train_step" if not args.threads else f"train_step_{args.threads}thread"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"Training step, TC-LLaVA vs vanilla ({report['device']}, {report['precision']}, {report['threads']} "
        f"threads, {report['clock']}, {args.repeats} interleaved rounds, machine load {report['load_average'][0]} -> "
        f"{report['load_average'][1]}); `python benchmarks/train_step.py`. x vanilla: per round, median "
        "(95% interval of the median) [min, max] over the rounds.",
        "",
        "| shape | variant | tokens/sample (visual) | batch | params (M) | s/step (median) | samples/s | x vanilla | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["ratio_to_vanilla"]
        lines.append(
            f"| {r['shape']} | {r['variant']} | {r['tokens_per_sample']} ({r['visual_tokens_per_sample']}) | "
            f"{r['batch']} | {r['parameters_m']} | {r['step_seconds']:.3f} | {r['samples_per_s']:.2f} | "
            f"{ratio['median']:.3f} ({ratio['median_ci95'][0]:.3f}-{ratio['median_ci95'][1]:.3f}) "
            f"[{ratio['min']:.3f}, {ratio['max']:.3f}] | {r['peak_mib']:.0f} |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
