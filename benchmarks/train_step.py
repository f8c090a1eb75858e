"""Samples/s and peak memory of one training step, TC-LLaVA vs vanilla LLaVA, on small configs.

    python benchmarks/train_step.py                  # both shapes, a minute or two on 2 CPU cores
    python benchmarks/train_step.py --shapes small   # one shape
    python benchmarks/train_step.py --device cuda    # on a GPU (bf16 autocast)

A step is what the recipe does per optimizer step (tcllava.train): forward with the token-normalised
loss, backward, gradient clipping, AdamW. Both variants are the same model built by the recipe's own
``build_model`` from one checkpoint, differing only in TC attention (vanilla: gamma 0 and the causal
mask, which runs PyTorch's fused causal SDPA; TC: gamma 1 and frame_block_causal, the exact prefix kernel
on CPU). Times interleave the two variants round-robin in one process so that machine noise hits both
alike (median of ``--repeats``); peak memory is measured for each variant alone in a fresh process.
Batches are pre-built (no video decoding) and rows have equal lengths (no padding).
Writes benchmarks/results/train_step.json and train_step.md. Target: TC within 1.1x of vanilla.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
        **VARIANTS[variant],
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
    built = {v: build(shape, root, v, device) for v in VARIANTS}
    for v in VARIANTS:  # warm-up: allocator, kernel choice, optimizer state
        for _ in range(2):
            step(*built[v][:3], device)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for v in VARIANTS:
            start = time.perf_counter()
            step(*built[v][:3], device)
            times[v].append(time.perf_counter() - start)
    batch = built["tc"][2]
    media = int((batch["input_ids"] == built["tc"][0].config.media_token_id).sum())
    return {
        "tokens_per_sample": int(batch["input_ids"].shape[1]),
        "visual_tokens_per_sample": media // batch["input_ids"].shape[0],
        "batch": int(batch["input_ids"].shape[0]),
        "parameters_m": round(sum(p.numel() for p in built["tc"][0].parameters()) / 1e6, 2),
        "seconds": {v: statistics.median(t) for v, t in times.items()},
        "seconds_all": times,
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
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, shape, root = args.child[:3]
        if what == "times":
            print(json.dumps(measure_times(shape, Path(root), args.device, args.repeats)))
        else:
            print(json.dumps(measure_memory(shape, Path(root), what, args.device)))
        return 0

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as root:
        for shape in args.shapes:
            timing = _child("times", shape, root, "--repeats", str(args.repeats), "--device", args.device)
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
                    "time_ratio_to_vanilla": seconds / timing["seconds"]["vanilla"],
                    "best_ratio_to_vanilla": min(timing["seconds_all"][variant])
                    / min(timing["seconds_all"]["vanilla"]),
                    "peak_mib": _child(variant, shape, root, "--device", args.device),
                }
                rows.append(row)
                print(
                    f"{shape:<7} {variant:<8} {row['tokens_per_sample']:>5} tok  {seconds:.3f} s/step  "
                    f"{row['samples_per_s']:.2f} samples/s  x{row['time_ratio_to_vanilla']:.3f}  peak {row['peak_mib']:.0f} MiB",
                    flush=True,
                )
    report = {
        "benchmark": "one training step (forward, backward, clip, AdamW), LLM trained fully, vision frozen",
        "device": args.device,
        "precision": "bf16 autocast" if args.device == "cuda" else "fp32",
        "repeats": args.repeats,
        "target": "TC step time within 1.1x of vanilla",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_step.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"Training step, TC-LLaVA vs vanilla ({report['device']}, {report['precision']}, {report['threads']} threads, "
        f"median of {args.repeats}); `python benchmarks/train_step.py`",
        "",
        "| shape | variant | tokens/sample (visual) | batch | params (M) | s/step | samples/s | x vanilla (median) | x vanilla (best) | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['variant']} | {r['tokens_per_sample']} ({r['visual_tokens_per_sample']}) | {r['batch']} | "
            f"{r['parameters_m']} | {r['step_seconds']:.3f} | {r['samples_per_s']:.2f} | {r['time_ratio_to_vanilla']:.3f} | "
            f"{r['best_ratio_to_vanilla']:.3f} | "
            f"{r['peak_mib']:.0f} |"
        )
    (args.out / "train_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
