"""Prefill time, decode tokens/s and peak memory: tcllava (TC on) vs transformers' LLaVA-NeXT-Video (vanilla).

    python benchmarks/prefill.py            # 16 frames, a small random LLaVA-NeXT-Video config
    python benchmarks/prefill.py --frames 8

Both models share one random checkpoint (written once with save_pretrained in the llava-hf layout and
loaded by each side), the same input ids and pixels. Each case runs in its own subprocess so that peak
resident memory (growth of the high-water mark over the loaded model and inputs) is its own. Writes
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


def measure(case: str, path: Path, frames: int, new_tokens: int, repeats: int) -> dict:
    import torch
    from transformers import LlavaNextVideoForConditionalGeneration

    from tcllava.model import load_model

    torch.manual_seed(0)
    if case == "hf_llava_next_video":
        model = LlavaNextVideoForConditionalGeneration.from_pretrained(
            path, attn_implementation="sdpa"
        ).eval()
        video_kw = "pixel_values_videos"
        tokens_per_frame = (224 // 14 // 2) ** 2
        video_id = model.config.video_token_index
    else:
        tc = (
            {"gamma": 1.0, "attention_mask_kind": "frame_block_causal"}
            if case == "tcllava_tc"
            else {"gamma": 0.0, "attention_mask_kind": "causal"}
        )
        model = load_model(path, **tc)
        video_kw = "pixel_values_videos"
        tokens_per_frame = model.config.tokens_per_frame
        video_id = model.config.media_token_id
    prompt = (
        [1, 319, 13563, 1546]
        + [video_id] * (frames * tokens_per_frame)
        + [1724, 338, 5199, 29973, 319, 29901]
    )
    input_ids = torch.tensor([prompt])
    pixels = torch.randn(1, frames, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    kwargs = {"input_ids": input_ids, video_kw: pixels}
    prefill, one, many = [], [], []
    with torch.inference_mode(), PeakMemory() as memory:
        for _ in range(repeats):
            start = time.perf_counter()
            model(**kwargs, logits_to_keep=1)
            prefill.append(time.perf_counter() - start)
        # Decode speed = the extra time of N new tokens over 1 new token (both include the prefill).
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(**kwargs, max_new_tokens=1, do_sample=False)
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            out = model.generate(
                **kwargs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
            many.append(time.perf_counter() - start)
    return {
        "case": case,
        "frames": frames,
        "prompt_tokens": len(prompt),
        "prefill_seconds": min(prefill),
        "decode_tokens_per_second": (new_tokens - 1) / max(min(many) - min(one), 1e-9),
        "peak_mib": memory.peak_mib,
        "generated": out[0, len(prompt) :].tolist(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.child[0], Path(args.child[1]), args.frames, args.new_tokens, args.repeats)
        print(json.dumps(result))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp))
        for case in CASES:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                case,
                tmp,
                "--frames",
                str(args.frames),
                "--new-tokens",
                str(args.new_tokens),
                "--repeats",
                str(args.repeats),
            ]
            rows.append(
                json.loads(
                    subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
                )
            )
            r = rows[-1]
            print(
                f"{case:<22} prefill {r['prefill_seconds']:.3f} s  decode {r['decode_tokens_per_second']:.1f} tok/s  "
                f"peak {r['peak_mib']:.0f} MiB",
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
