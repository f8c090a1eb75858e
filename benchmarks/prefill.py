"""Prefill time, decode tokens/s and peak memory: tcllava (TC on) vs transformers' LLaVA-NeXT-Video (vanilla).

    python benchmarks/prefill.py            # 16 frames, a small random LLaVA-NeXT-Video config
    python benchmarks/prefill.py --frames 8

Both models share one random checkpoint (written once with save_pretrained in the llava-hf layout and
loaded by each side), the same input ids and pixels. Times: all cases in one process, interleaved
round-robin, best of --repeats. Peak memory: each case alone in a fresh process (resident growth over the
loaded model and inputs). Writes
benchmarks/results/prefill.json and prefill.md; ratios are to the vanilla transformers model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak_memory import PeakMemory

RESULTS = Path(__file__).parent / "results"
CASES = {
    "hf_llava_next_video": "transformers LlavaNextVideo (vanilla)",
    "tcllava_vanilla": "tcllava, gamma 0 + causal",
    "tcllava_tc": "tcllava, gamma 1 + frame_block_causal",
}


def write_checkpoint(path: Path) -> None:
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
    )

    vision = CLIPVisionConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=224,
        patch_size=14,
        projection_dim=256,
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=8,
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=8192,
    )
    config = LlavaNextVideoConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=32001,
        video_token_index=32000,
        spatial_pool_stride=2,
        image_grid_pinpoints=[[224, 224]],
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    LlavaNextVideoForConditionalGeneration(config).save_pretrained(path)


def build(case: str, path: Path, frames: int):
    """(model, inputs, prompt length) for one case; all cases share the checkpoint, ids and pixels."""
    import torch
    from transformers import LlavaNextVideoForConditionalGeneration

    from tcllava.model import load_model

    if case == "hf_llava_next_video":
        model = LlavaNextVideoForConditionalGeneration.from_pretrained(
            path, attn_implementation="sdpa"
        ).eval()
        tokens_per_frame, video_id = (224 // 14 // 2) ** 2, model.config.video_token_index
    else:
        tc = (
            {"gamma": 1.0, "mask": "frame_block_causal"}
            if case == "tcllava_tc"
            else {"gamma": 0.0, "mask": "causal"}
        )
        model = load_model(path, **tc)
        tokens_per_frame, video_id = model.config.tokens_per_frame, model.config.media_token_id
    prompt = (
        [1, 319, 13563, 1546]
        + [video_id] * (frames * tokens_per_frame)
        + [1724, 338, 5199, 29973, 319, 29901]
    )
    pixels = torch.randn(1, frames, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": torch.tensor([prompt]), "pixel_values_videos": pixels}, len(prompt)


def measure_times(path: Path, frames: int, new_tokens: int, repeats: int) -> dict:
    """All cases in one process, interleaved round-robin so that machine noise hits each alike.
    Decode speed = the extra time of N new tokens over 1 new token (both include the prefill)."""
    import torch

    cases = {case: build(case, path, frames) for case in CASES}
    prefill = {c: [] for c in cases}
    one = {c: [] for c in cases}
    many = {c: [] for c in cases}
    generated = {}
    with torch.inference_mode():
        for round_ in range(repeats + 1):  # round 0 warms up and is not counted
            for case, (model, inputs, _) in cases.items():
                start = time.perf_counter()
                model(**inputs, logits_to_keep=1)
                t_prefill = time.perf_counter() - start
                start = time.perf_counter()
                model.generate(**inputs, max_new_tokens=1, do_sample=False)
                t_one = time.perf_counter() - start
                start = time.perf_counter()
                out = model.generate(
                    **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
                )
                t_many = time.perf_counter() - start
                if round_:
                    prefill[case].append(t_prefill)
                    one[case].append(t_one)
                    many[case].append(t_many)
                generated[case] = out[0, cases[case][2] :].tolist()
    return {
        case: {
            "case": case,
            "frames": frames,
            "prompt_tokens": cases[case][2],
            "prefill_seconds": min(prefill[case]),
            "decode_tokens_per_second": (new_tokens - 1) / max(min(many[case]) - min(one[case]), 1e-9),
            "generated": generated[case],
        }
        for case in cases
    }


def measure_memory(case: str, path: Path, frames: int, new_tokens: int) -> float:
    """Peak resident growth of one prefill + generation, alone in a fresh process."""
    import torch

    model, inputs, _ = build(case, path, frames)
    with torch.inference_mode(), PeakMemory() as memory:
        model(**inputs, logits_to_keep=1)
        model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return memory.peak_mib


def _child(*args: str) -> dict | float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, metavar=("WHAT", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, path = args.child[0], Path(args.child[1])
        if what == "times":
            print(json.dumps(measure_times(path, args.frames, args.new_tokens, args.repeats)))
        else:
            print(json.dumps(measure_memory(what, path, args.frames, args.new_tokens)))
        return 0
    common = [
        "--frames",
        str(args.frames),
        "--new-tokens",
        str(args.new_tokens),
        "--repeats",
        str(args.repeats),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp))
        timing = _child("times", tmp, *common)
        rows = []
        for case in CASES:
            row = dict(timing[case], peak_mib=_child(case, tmp, *common))
            rows.append(row)
            print(
                f"{case:<22} prefill {row['prefill_seconds']:.3f} s  decode {row['decode_tokens_per_second']:.1f} tok/s  "
                f"peak {row['peak_mib']:.0f} MiB",
                flush=True,
            )
    floor = rows[0]
    for r in rows:
        r["prefill_ratio"] = r["prefill_seconds"] / floor["prefill_seconds"]
        r["decode_ratio"] = r["decode_tokens_per_second"] / floor["decode_tokens_per_second"]
    # With vanilla settings tcllava must generate exactly what transformers generates.
    same_tokens = rows[1]["generated"] == floor["generated"]
    import torch

    report = {
        "benchmark": "prefill + greedy decode, batch 1, fp32, CPU",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "vanilla_tokens_identical": same_tokens,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prefill.json").write_text(json.dumps(report, indent=2))
    lines = [
        "| model | frames | prompt tokens | prefill s | x vanilla | decode tok/s | x vanilla | peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {CASES[r['case']]} | {r['frames']} | {r['prompt_tokens']} | {r['prefill_seconds']:.3f} | "
            f"{r['prefill_ratio']:.2f} | {r['decode_tokens_per_second']:.1f} | {r['decode_ratio']:.2f} | "
            f"{r['peak_mib']:.0f} |"
        )
    lines.append(f"\nVanilla tcllava generates the same tokens as transformers: {same_tokens}.")
    (args.out / "prefill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
