"""The GPU paths verified and measured in one prepared run (docs/gpu.md).

    make gpu                                        # on a CUDA machine: benchmarks/results/gpu.json + gpu.md
    python benchmarks/gpu.py --tiny --out /tmp/gpu  # the same code on CPU in seconds (tests/test_gpu_script.py)
    python benchmarks/gpu.py --sections model       # one section again

Three sections, each in its own try/except (an error, a compile failure or an OOM is recorded with its text
and the next section runs) and each with a time budget (a section stops starting new cases when its
budget is spent). The JSON is rewritten after every case, so a run killed by a timeout keeps what it
measured; progress lines carry the elapsed time.

1. ``correctness``: every kernel the dispatcher can pick (``choose_kernel``: flex, prefix, sdpa, eager,
   decode, causal) through ``attend`` on random padded multi-video layouts, against an fp64 reference
   written here from the readable ``dense_mask``: outputs and q/k/v gradients, fp32 and bf16. Then a small
   random TC-LLaVA: prefill + step-by-step decoding (``generate``, batch 4, different left padding) against
   one full forward pass over the generated sequences.
2. ``attention``: forward + backward, 32 heads x 128, 144-token frames, 8k-64k tokens: the TC kernel vs
   causal SDPA (flash) vs SDPA with the dense mask transformers would build, interleaved in one process,
   warm-up and compile times apart, and each one's peak memory.
3. ``model``: a 7B-shaped LLaVA-NeXT-Video (Vicuna-7B LLM, CLIP ViT-L/14-336 tower) with random weights,
   saved with save_pretrained and loaded by ``tcllava.model.load_model`` (which maps the llava-hf layout):
   TC off must generate transformers' tokens; prefill time, decode tokens/s and a LoRA training step with
   gradient checkpointing (batch 1 and 4) of TC-LLaVA (gamma 1, frame_block_causal, PLLaVA pooling) vs
   transformers' own model.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from peak_memory import PeakMemory
from tcllava.attention import FrameLayout, attend, choose_kernel, dense_mask
from tcllava.attention import kernels as tc_kernels

RESULTS = Path(__file__).parent / "results"
SECTION_NAMES = ("correctness", "attention", "model")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Largest absolute error allowed against the fp64 reference (the bf16 one is the issue's target).
ERROR_BOUNDS = {"float32": 1e-4, "bfloat16": 5e-2}
# Text ids around the video of the model section's prompt (random weights: any ids below the media ids).
PROMPT_BEFORE, PROMPT_AFTER = [1, 319, 613, 546], [724, 338, 199, 973, 319, 901]
# Bytes per mask element that SDPA with a dense TC mask needs at its peak: the [T, T] bool mask and the
# temporaries dense_mask()/FrameLayout.dense() build (about 8 bool tensors), plus a bf16 bias inside SDPA.
DENSE_BYTES_PER_ELEMENT = 12


@dataclass(frozen=True)
class Scale:
    """Every size the run uses: FULL on a GPU, TINY for the CPU test of the same code."""

    name: str
    # correctness: random layouts, kernels through the dispatcher
    check_batch: int = 3
    check_heads: int = 8
    check_kv_heads: int = 4
    check_head_dim: int = 64
    check_frame_tokens: int = 144
    check_frames: tuple[int, ...] = (3, 2)  # frames of a sample's two videos
    check_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    # correctness: the small TC-LLaVA decoded step by step
    decode_image: int = 96
    decode_patch: int = 8
    decode_hidden: int = 256
    decode_layers: int = 4
    decode_heads: int = 4
    decode_new_tokens: int = 8
    # attention speed
    heads: int = 32
    head_dim: int = 128
    frame_tokens: int = 144
    lengths: tuple[int, ...] = (8192, 16384, 32768, 65536)
    repeats: int = 5
    speed_dtype: str = "bfloat16"
    target_min_tokens: int = 16384  # the <= 1.15x target counts from this length on
    # model
    model_shape: str = "7b"
    model_dtype: str = "bfloat16"
    frames: int = 16
    new_tokens: int = 32
    train_batches: tuple[int, ...] = (1, 4)
    lora_rank: int = 128
    model_repeats: int = 3
    # seconds per section; unused time passes on to the next ones
    budgets: dict[str, float] = field(
        default_factory=lambda: {"correctness": 100.0, "attention": 140.0, "model": 210.0}
    )


FULL = Scale("full")
TINY = Scale(
    "tiny",
    check_heads=4,
    check_kv_heads=2,
    check_head_dim=32,
    check_frame_tokens=8,
    decode_image=32,
    decode_patch=8,
    decode_hidden=64,
    decode_layers=2,
    decode_heads=2,
    decode_new_tokens=4,
    heads=4,
    head_dim=32,
    frame_tokens=16,
    lengths=(256, 512),
    repeats=2,
    speed_dtype="float32",  # bf16 attention is emulated and slow on CPUs (docs/method.md 6)
    target_min_tokens=512,
    model_shape="tiny",
    model_dtype="float32",
    frames=4,
    new_tokens=4,
    train_batches=(1, 2),
    lora_rank=8,
    model_repeats=1,
    budgets={"correctness": 60.0, "attention": 30.0, "model": 60.0},
)


class Run:
    """The report being built, the clocks, and writing both files after every step."""

    def __init__(self, args: argparse.Namespace, scale: Scale, device: torch.device) -> None:
        self.scale, self.device, self.out = scale, device, args.out
        self.start = time.perf_counter()
        self.end = self.start + args.budget
        self.planned = self.start  # where the budgets of the sections so far end
        self.section_end = self.end
        self.report: dict = {
            "benchmark": "GPU paths of tcllava: kernels vs fp64, attention speed, 7B-shaped model vs transformers",
            "mode": scale.name,
            "device": device_name(device),
            "device_type": device.type,
            "device_memory_gib": (
                round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
                if device.type == "cuda"
                else None
            ),
            "command": " ".join(sys.argv),
            "versions": versions(),
            "budget_seconds": args.budget,
            "settings": asdict(scale),
            "sections": {},
            "errors": {},
            "notes": [],
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f} s] {message}", flush=True)

    def begin(self, section: str) -> None:
        """A section may run to the end of its budget counted from the run's start (so time left over by
        earlier sections passes on), but gets at least half its own budget, within the run's."""
        now = time.perf_counter()
        self.planned += self.scale.budgets[section]
        self.section_end = min(self.end, max(self.planned, now + self.scale.budgets[section] / 2))
        self.log(f"section {section}: up to {self.section_end - now:.0f} s")

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.section_end

    def save(self) -> None:
        self.report["wall_seconds"] = round(self.elapsed(), 1)
        self.report["targets"] = targets(self.report, self.scale)
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (
            ("gpu.json", json.dumps(self.report, indent=2)),
            ("gpu.md", markdown(self.report)),
        ):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text + "\n")
            os.replace(tmp, self.out / name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str | None]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    out["transformers"] = transformers.__version__
    for name in ("triton", "peft", "accelerate"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory growth of ``fn`` over what was allocated before it (GPU allocator, or resident memory)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)
    with PeakMemory() as memory:
        fn()
    return round(memory.peak_mib, 1)


def dynamo_counters() -> dict:
    """torch.compile's counts so far (graphs compiled, frames, recompiles): a flex kernel that fell back to
    eager or recompiled per shape shows here."""
    from torch._dynamo.utils import counters

    return {group: dict(counters[group]) for group in ("stats", "frames", "recompiles") if counters[group]}


def free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# 1. correctness
# ---------------------------------------------------------------------------------------------------

# (name, mask kind, left padding, queries (None: all tokens; n: the last n, text, over a cache), kernels)
CASES = (
    ("videos_padded", "frame_block_causal", True, None, ("auto", "flex", "prefix", "sdpa", "eager")),
    ("decode_1", "frame_block_causal", True, 1, ("auto", "sdpa", "eager")),
    ("videos_full_visual", "full_visual", True, None, ("auto", "eager")),
    ("videos_frame_block", "frame_block", True, None, ("auto", "eager")),
    ("videos_padded_causal", "causal", True, None, ("auto", "flex", "prefix", "sdpa")),
    ("videos_unpadded_causal", "causal", False, None, ("auto", "flex", "prefix")),
    ("decode_3", "frame_block_causal", True, 3, ("auto", "flex", "prefix", "sdpa")),
)


def expected_kernel(mask: str, padded: bool, queries: int | None, device: torch.device) -> str:
    """What the dispatcher should pick (docs/method.md 1.3), written out independently of choose_kernel."""
    if queries is not None:
        return "decode"
    if mask in ("full_visual", "frame_block"):
        return "sdpa"
    if mask == "causal" and not padded:
        return "causal"
    return "flex" if device.type == "cuda" else "prefix"


def check_rows(scale: Scale, rng: random.Random) -> list[list[int]]:
    """Frame-id rows (-1 text): text, a video, text, a second video, text; one sample's first video is a
    single image. Frames are numbered over the whole row."""
    rows = []
    for b in range(scale.check_batch):
        row, frame = [], 0
        for v, frames in enumerate(scale.check_frames):
            row += [-1] * rng.randint(1, 9)
            for _ in range(1 if (b, v) == (1, 0) else frames):
                row += [frame] * scale.check_frame_tokens
                frame += 1
        rows.append(row + [-1] * rng.randint(1, 9))
    return rows


def check_layout(rows: list[list[int]], mask: str, padded: bool, queries: int | None, device) -> FrameLayout:
    """Rows brought to one length by left padding (or, unpadded, by more leading text), plus ``queries``
    text tokens at the end when decoding. Lengths are kept off multiples of 128 (flex's block size)."""
    length = max(map(len, rows)) + 1
    length += 1 if (length + (queries or 0)) % 128 == 0 else 0
    ids, real = [], []
    for row in rows:
        pad = length - len(row)
        ids.append([-1] * pad + row + [-1] * (queries or 0))
        real.append([not padded] * pad + [True] * (len(row) + (queries or 0)))
    frame_ids = torch.tensor(ids, device=device)
    return FrameLayout(frame_ids, torch.tensor(real, device=device), mask, query_length=queries)


def reference_attention(q, k, v, layout: FrameLayout, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over the keys ``dense_mask`` allows, in the inputs' dtype (fp64 here).
    Rows with no allowed key (padding queries) give 0."""
    allowed = dense_mask(layout.frame_ids, layout.mask, layout.real)[:, None, layout.query_start :]
    has_key = allowed.any(-1, keepdim=True)
    allowed = allowed | ~has_key  # keeps softmax finite; those rows are zeroed below
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v) * has_key


def run_kernel(kernel: str, q, k, v, layout: FrameLayout, scale: float) -> torch.Tensor:
    if kernel == "prefix_generic":  # the prefix kernel's path for devices other than the CPU
        return tc_kernels._groups_generic(
            q, tc_kernels._repeat_kv(k, q.shape[1]), tc_kernels._repeat_kv(v, q.shape[1]), layout, scale
        )
    return attend(q, k, v, layout, scale=scale, kernel=kernel)


def check_kernels(run: Run) -> None:
    """Outputs and gradients of every kernel against the fp64 reference, on the same inputs."""
    scale, device = run.scale, run.device
    rows_out = run.report.setdefault("correctness", {}).setdefault("kernels", [])
    rows = check_rows(scale, random.Random(0))
    for name, mask, padded, queries, kernels in CASES:
        layout = check_layout(rows, mask, padded, queries, device)
        cpu_layout = check_layout(rows, mask, padded, queries, torch.device("cpu"))
        if device.type == "cpu" and "prefix" in kernels:
            kernels = (*kernels, "prefix_generic")
        chosen = choose_kernel(torch.empty(0, device=device), layout)  # reads the query's device only
        for dtype_name in scale.check_dtypes:
            if run.out_of_time():
                rows_out.append({"case": name, "dtype": dtype_name, "skipped": "section time budget"})
                continue
            dtype = DTYPES[dtype_name]
            gen = torch.Generator().manual_seed(len(rows_out))
            b, t, qn = layout.frame_ids.shape[0], layout.total_length, layout.query_length
            shapes = [(b, scale.check_heads, qn), (b, scale.check_kv_heads, t), (b, scale.check_kv_heads, t)]
            base = [torch.randn(*s, scale.check_head_dim, generator=gen).to(dtype) for s in shapes]
            # The loss never reads padding query rows: their upstream gradient is zero. Scaled so that the
            # gradients are O(1) like the outputs (bf16's spacing at 4-8 alone would be 0.03-0.06).
            grad = (
                torch.randn(b, scale.check_heads, qn, scale.check_head_dim, generator=gen).mul(0.25).to(dtype)
            )
            real_queries = layout.real[:, layout.query_start :].cpu()[:, None, :, None]
            grad = grad * real_queries
            sm_scale = 1.0 / math.sqrt(scale.check_head_dim)
            ref_in = [x.double().requires_grad_() for x in base]
            ref_out = reference_attention(*ref_in, cpu_layout, sm_scale)
            ref_out.backward(grad.double())
            ref_grads = [x.grad for x in ref_in]
            for kernel in kernels:
                row = {"case": name, "mask": mask, "queries": qn, "tokens": t, "dtype": dtype_name}
                row.update(
                    kernel=kernel, chosen=chosen, expected=expected_kernel(mask, padded, queries, device)
                )
                row["runs"] = chosen if kernel == "auto" else kernel
                try:
                    row.update(
                        compare_kernel(kernel, base, grad, layout, sm_scale, ref_out, ref_grads, device)
                    )
                except Exception as e:  # one kernel's failure (a compile error, say) must not hide the others
                    row["error"] = f"{type(e).__name__}: {e}"[:2000]
                rows_out.append(row)
            run.log(
                f"correctness {name} {dtype_name}: "
                + ", ".join(
                    f"{r['kernel']} {r.get('max_abs_err', r.get('error', '?'))}"
                    for r in rows_out[-len(kernels) :]
                )
            )
            run.save()
    for dtype_name in scale.check_dtypes:
        errors = [r["max_abs_err"] for r in rows_out if r.get("dtype") == dtype_name and "max_abs_err" in r]
        run.report[f"max_abs_err_{'fp32' if dtype_name == 'float32' else 'bf16'}"] = max(errors, default=None)


def compare_kernel(kernel, base, grad, layout, sm_scale, ref_out, ref_grads, device) -> dict:
    """Largest absolute errors of one kernel's output (real query rows) and q/k/v gradients, and the
    largest error relative to each tensor's largest reference value."""
    # Uncompiled flex on CPU is a forward-only reference (no backward there, docs/method.md 6).
    backward = not (device.type == "cpu" and kernel == "flex")
    inputs = [x.detach().clone().to(device).requires_grad_(backward) for x in base]  # fresh .grad
    with torch.set_grad_enabled(backward):
        out = run_kernel(kernel, *inputs, layout, sm_scale)
        if backward:
            out.backward(grad.to(device))
    real_queries = layout.real[:, layout.query_start :].cpu()[:, None, :, None]
    pairs = [(out.detach().double().cpu() * real_queries, ref_out.detach())]
    if backward:
        pairs += [(x.grad.double().cpu(), r) for x, r in zip(inputs, ref_grads, strict=True)]
    errors = [float((got - ref).abs().max()) for got, ref in pairs]
    result = {
        "out_err": errors[0],
        "grad_err": max(errors[1:]) if backward else None,
        "rel_err": round(
            max(e / max(float(ref.abs().max()), 1e-12) for e, (_, ref) in zip(errors, pairs, strict=True)), 8
        ),
        "ref_max_abs": round(max(float(ref.abs().max()) for _, ref in pairs), 4),
        "nan": any(bool(got.isnan().any()) for got, _ in pairs),
    }
    if not backward:
        result["backward"] = "not on CPU"
    result["max_abs_err"] = float("inf") if result["nan"] else round(max(errors), 8)
    return result


def check_decode(run: Run) -> None:
    """A small random TC-LLaVA: ``generate`` (prefill, then one cached step per token) against one full
    forward pass over the generated sequences, batch 4 with different left padding (two videos, a video,
    an image, text only). The logits of each step must match the full pass's at the same position, so a
    token may differ only where the full pass's top two logits are closer than that difference."""
    from tcllava.model import TCLlavaForConditionalGeneration
    from tcllava.model.factory import tiny_config

    scale, device = run.scale, run.device
    grid = scale.decode_image // scale.decode_patch
    media, vocab, pad = 500, 512, 0
    config = tiny_config(
        vocab,
        media,
        image_size=scale.decode_image,
        patch_size=scale.decode_patch,
        text_hidden=scale.decode_hidden,
        text_layers=scale.decode_layers,
        heads=scale.decode_heads,
        pool_shape=(0, grid, grid),
        tc_attention={"gamma": 1.0, "mask": "frame_block_causal"},
    )
    dtype = DTYPES[scale.model_dtype]
    torch.manual_seed(0)
    with torch.device(device):
        model = TCLlavaForConditionalGeneration._from_config(config, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(0)

    def text(n: int) -> list[int]:
        return torch.randint(10, 400, (n,), generator=gen).tolist()

    def clip(frames: int) -> torch.Tensor:
        return torch.randn(frames, 3, scale.decode_image, scale.decode_image, generator=gen).to(device, dtype)

    tokens = grid * grid
    rows = [
        (text(5) + [media] * (4 * tokens) + text(3), [clip(4)]),
        (text(2) + [media] * (2 * tokens) + text(6) + [media] * (2 * tokens) + text(2), [clip(2), clip(2)]),
        (text(9) + [media] * tokens + text(4), [clip(1)]),
        (text(7), []),
    ]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([[pad] * (length - len(ids)) + ids for ids, _ in rows], device=device)
    mask = torch.tensor([[0] * (length - len(ids)) + [1] * len(ids) for ids, _ in rows], device=device)
    pixels = [c for _, clips in rows for c in clips]
    n = scale.decode_new_tokens
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            pixel_values_videos=pixels,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=pad,
            output_logits=True,
            return_dict_in_generate=True,
        )
        sequences = out.sequences
        full_mask = torch.cat([mask, torch.ones_like(sequences[:, length:])], 1)
        full = model(input_ids=sequences, attention_mask=full_mask, pixel_values_videos=pixels).logits
    steps = torch.stack(out.logits, 1).float()  # [B, n, V]
    full = full[:, length - 1 : length - 1 + n].float()
    diff = float((steps - full).abs().max())
    generated = sequences[:, length:]
    top = full.max(-1).values
    chosen = full.gather(-1, generated[..., None])[..., 0]
    mismatch = generated != full.argmax(-1)
    not_near_tie = mismatch & (top - chosen > 2 * diff)
    run.report.setdefault("correctness", {})["decode"] = {
        "dtype": scale.model_dtype,
        "batch": len(rows),
        "prompt_lengths": [len(ids) for ids, _ in rows],
        "new_tokens": n,
        "prefill_kernel": "flex" if device.type == "cuda" else "prefix",
        "max_logit_diff": round(diff, 6),
        "max_abs_logit": round(float(full.abs().max()), 4),
        "tokens_identical": not bool(mismatch.any()),
        "token_mismatches": int(mismatch.sum()),
        "mismatches_not_near_tie": int(not_near_tie.sum()),
    }
    run.log(f"correctness decode: {run.report['correctness']['decode']}")
    run.save()


def section_correctness(run: Run) -> None:
    check_kernels(run)
    if run.out_of_time():
        run.report["correctness"]["decode"] = {"skipped": "section time budget"}
        return
    check_decode(run)


# ---------------------------------------------------------------------------------------------------
# 2. attention speed
# ---------------------------------------------------------------------------------------------------

TEXT_AROUND = 64


def speed_layout(length: int, frame_tokens: int, device: torch.device) -> tuple[int, FrameLayout]:
    """One sample of exactly ``length`` tokens: 64 text tokens, as many whole frames as fit, text."""
    frames = max(1, (length - 2 * TEXT_AROUND) // frame_tokens)
    tail = length - TEXT_AROUND - frames * frame_tokens
    row = [-1] * TEXT_AROUND + [f for f in range(frames) for _ in range(frame_tokens)] + [-1] * tail
    frame_ids = torch.tensor([row], device=device)
    return frames, FrameLayout(frame_ids, torch.ones_like(frame_ids, dtype=torch.bool), "frame_block_causal")


def causal_sdpa(q, k, v, backend: str):
    if backend == "flash" and q.device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def dense_fits(length: int, device: torch.device) -> tuple[bool, str]:
    need = DENSE_BYTES_PER_ELEMENT * length * length
    if device.type != "cuda":
        return True, ""
    free = torch.cuda.mem_get_info(device)[0]
    if need > 0.9 * free:
        gib = 2**30
        return (
            False,
            f"needs about {need / gib:.0f} GiB (the [T, T] mask and temporaries), {free / gib:.0f} free",
        )
    return True, ""


def measure_length(run: Run, length: int) -> dict:
    scale, device = run.scale, run.device
    dtype = DTYPES[scale.speed_dtype]
    frames, layout = speed_layout(length, scale.frame_tokens, device)
    row: dict = {"tokens": length, "frames": frames, "dtype": scale.speed_dtype, "skipped": {}}
    torch.manual_seed(0)
    qkv = [
        torch.randn(1, scale.heads, length, scale.head_dim, device=device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    ]
    grad = torch.randn_like(qkv[0])
    row["tc_kernel"] = choose_kernel(qkv[0], layout)
    # Built once per forward and shared by all layers: timed apart from the per-layer kernel.
    if row["tc_kernel"] == "flex":
        row["tc_setup"] = "flex BlockMask"
        row["tc_setup_seconds"] = round(timed(lambda: layout.block_mask(qkv[0].device), device), 4)
    else:
        row["tc_setup"] = "prefix query groups"
        row["tc_setup_seconds"] = round(timed(lambda: layout.groups, device), 4)
    fns: dict[str, Callable] = {
        "tc": lambda q, k, v: attend(q, k, v, layout),
        "causal_flash": lambda q, k, v: causal_sdpa(q, k, v, "flash"),
        "causal_default": lambda q, k, v: causal_sdpa(q, k, v, "default"),
    }
    fits, why = dense_fits(length, device)
    if fits:  # built once per forward by transformers, like the block mask: timed apart
        dense = {}
        row["dense_mask_seconds"] = round(timed(lambda: dense.update(m=layout.dense()[:, None]), device), 4)
        fns["sdpa_dense"] = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dense["m"])
    else:
        row["skipped"]["sdpa_dense"] = why

    def step(name: str) -> None:
        for t in qkv:
            t.grad = None
        fns[name](*qkv).backward(grad)

    first: dict[str, float] = {}
    for name in list(fns):  # the first call compiles (flex) and warms up the allocator and kernels
        try:
            first[name] = timed(lambda n=name: step(n), device)
            timed(lambda n=name: step(n), device)
        except torch.OutOfMemoryError as e:
            row["skipped"][name] = f"out of memory: {str(e)[:300]}"
            del fns[name]
            if name == "sdpa_dense":
                dense.clear()
            free_memory()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(scale.repeats):  # interleaved, so that clock and thermal drift hit every kernel alike
        for name in fns:
            times[name].append(timed(lambda n=name: step(n), device))
    row["seconds"] = {name: round(statistics.median(t), 5) for name, t in times.items()}
    row["seconds_min"] = {name: round(min(t), 5) for name, t in times.items()}
    row["first_call_seconds"] = {name: round(t, 3) for name, t in first.items()}
    row["compile_seconds"] = round(max(0.0, first.get("tc", 0.0) - row["seconds"].get("tc", 0.0)), 3)
    row["peak_mib"] = {name: peak_mib(lambda n=name: step(n), device) for name in fns}
    causal = row["seconds"]["causal_flash"]
    row["ratio_vs_causal"] = round(row["seconds"]["tc"] / causal, 4)
    if "sdpa_dense" in row["seconds"]:
        row["dense_ratio_vs_causal"] = round(row["seconds"]["sdpa_dense"] / causal, 4)
    # Attention FLOPs of the causal floor (forward 2 matmuls over half the scores, backward 2.5x that).
    flops = 4 * length * length * scale.heads * scale.head_dim / 2 * 3.5
    row["causal_tflops"] = round(flops / causal / 1e12, 1)
    return row


def section_attention(run: Run) -> None:
    rows = run.report.setdefault("attention", [])
    for length in run.scale.lengths:
        if run.out_of_time():
            rows.append({"tokens": length, "skipped": {"all": "section time budget"}})
            continue
        try:
            rows.append(measure_length(run, length))
        except Exception as e:  # a failure at one length (a compile error, an OOM) keeps the other lengths
            rows.append({"tokens": length, "error": f"{type(e).__name__}: {e}"[:2000]})
        free_memory()
        row = rows[-1]
        run.log(
            f"attention {length}: x{row.get('ratio_vs_causal', '?')} causal, seconds {row.get('seconds', row.get('error'))}"
        )
        run.save()


# ---------------------------------------------------------------------------------------------------
# 3. the 7B-shaped model against transformers
# ---------------------------------------------------------------------------------------------------


def llava_next_video_config(shape: str):
    """LLaVA-NeXT-Video-7B's shape (Vicuna-7B LLM, CLIP ViT-L/14-336 tower, 2 x 2 pooling) or a tiny one."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig

    if shape == "7b":
        vision = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        )
        text = LlamaConfig(
            vocab_size=32064,  # Vicuna's 32000 + LLaVA-NeXT-Video-7B's added tokens (video 32000, image 32001)
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        )
    else:
        vision = CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=7,
            projection_dim=64,
        )
        text = LlamaConfig(
            vocab_size=1024,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=4096,
        )
    return LlavaNextVideoConfig(
        vision_config=vision,
        text_config=text,
        video_token_index=text.vocab_size - 64,
        image_token_index=text.vocab_size - 63,
        spatial_pool_stride=2,
        image_grid_pinpoints=[[vision.image_size, vision.image_size]],
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


def scratch_dir(need_bytes: int) -> Path:
    """A temporary folder for the checkpoint: /dev/shm (memory) when it has room, else the temp dir."""
    for root in ("/dev/shm", tempfile.gettempdir()):
        if os.path.isdir(root) and shutil.disk_usage(root).free > 1.5 * need_bytes:
            return Path(tempfile.mkdtemp(prefix="tcllava-gpu-", dir=root))
    raise RuntimeError(f"no temporary folder has {1.5 * need_bytes / 2**30:.0f} GiB free for the checkpoint")


def add_lora(model, rank: int):
    """PLLaVA's LoRA (alpha 32, dropout 0.05, q_proj and v_proj of the LLM only) with non-reentrant
    gradient checkpointing, as tcllava.train does; returns the optimizer over the adapter."""
    from peft import LoraConfig, get_peft_model

    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    lora = LoraConfig(
        r=rank, lora_alpha=32, lora_dropout=0.05, target_modules=r".*language_model\..*\.(q_proj|v_proj)"
    )
    torch.manual_seed(0)
    get_peft_model(model, lora)  # injects the adapter into ``model`` itself
    model.train()
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def section_model(run: Run) -> None:
    from transformers import LlavaNextVideoForConditionalGeneration

    from tcllava.model import load_model

    scale, device = run.scale, run.device
    dtype = DTYPES[scale.model_dtype]
    result = run.report.setdefault("model", {"shape": scale.model_shape, "dtype": scale.model_dtype})
    config = llava_next_video_config(scale.model_shape)
    grid = config.vision_config.image_size // config.vision_config.patch_size
    side = grid // config.spatial_pool_stride
    size = config.vision_config.image_size

    # Random weights, made where they run and in their dtype: a 7B model built on the CPU first takes minutes.
    seconds = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        hf = LlavaNextVideoForConditionalGeneration._from_config(
            copy.deepcopy(config), dtype=dtype, attn_implementation="sdpa"
        ).eval()
    sync(device)
    result["build_seconds"] = round(time.perf_counter() - seconds, 1)
    result["parameters_b"] = round(sum(p.numel() for p in hf.parameters()) / 1e9, 3)
    need = sum(p.numel() * p.element_size() for p in hf.parameters())
    folder = scratch_dir(need)
    try:
        result["checkpoint_gib"] = round(need / 2**30, 2)
        result["save_seconds"] = round(timed(lambda: hf.save_pretrained(folder), device), 1)
        run.log(f"model: built {result['parameters_b']}B parameters, saved to {folder}")
        seconds = time.perf_counter()
        with torch.device(device):  # the llava-hf layout mapped by tcllava's own loader
            tc = load_model(folder, dtype=dtype, gamma=0.0, mask="causal").to(device)
        sync(device)
        result["load_seconds"] = round(time.perf_counter() - seconds, 1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result["rope_inv_freq_dtype"] = {
        name: str(dict(m.named_buffers())[key].dtype)
        for name, m, key in (
            ("transformers", hf, "model.language_model.rotary_emb.inv_freq"),
            ("tcllava", tc, "language_model.model.rotary_emb.inv_freq"),
        )
    }
    run.log(f"model: loaded by tcllava in {result['load_seconds']} s")
    run.save()
    # One tcllava model, two settings: vanilla (what load_model gave: gamma 0, causal, the source's pooling
    # before the projector) and TC-LLaVA (gamma 1, frame_block_causal, PLLaVA's pooling after it).
    settings = {
        "tc_off": {"gamma": 0.0, "mask": "causal"} | pooling(tc.config),
        "tc": {
            "gamma": 1.0,
            "mask": "frame_block_causal",
            "pool_shape": [16, side, side],
            "pool_position": "after_projector",
        },
    }
    models = {"hf": (hf, None), "tc_off": (tc, settings["tc_off"]), "tc": (tc, settings["tc"])}

    def use(case: str):
        model, chosen = models[case]
        if chosen is not None:
            model.config.apply_overrides(**chosen)
        return model

    ids = PROMPT_BEFORE + [config.video_token_index] * (scale.frames * side * side) + PROMPT_AFTER
    result.update(frames=scale.frames, prompt_tokens=len(ids), tokens_per_frame=side * side)
    gen = torch.Generator().manual_seed(0)

    def inputs(batch: int) -> dict:
        pixels = torch.randn(batch, scale.frames, 3, size, size, generator=gen).to(device, dtype)
        return {"input_ids": torch.tensor([ids] * batch, device=device), "pixel_values_videos": pixels}

    measure_inference(run, use, inputs(1), result)
    if run.out_of_time():
        result["train"] = {"skipped": "section time budget"}
        return
    measure_training(run, use, models, inputs, len(PROMPT_AFTER), result)


def pooling(config) -> dict:
    return {"pool_shape": list(config.pool_shape), "pool_position": config.pool_position}


def measure_inference(run: Run, use: Callable, batch: dict, result: dict) -> None:
    """Vanilla tokens, then prefill and decode interleaved over the three cases (round 0 warms up)."""
    scale, device = run.scale, run.device
    n = scale.new_tokens

    def generate(model, tokens: int):
        return model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    cases = ("hf", "tc_off", "tc")
    prefill: dict[str, list[float]] = {c: [] for c in cases}
    one: dict[str, list[float]] = {c: [] for c in cases}
    many: dict[str, list[float]] = {c: [] for c in cases}
    first: dict[str, float] = {}
    generated: dict[str, list[int]] = {}
    last_logits: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for round_ in range(scale.model_repeats + 1):
            for case in cases:
                model = use(case)
                out: dict = {}
                t_prefill = timed(lambda m=model, o=out: o.update(p=m(**batch, logits_to_keep=1)), device)
                t_one = timed(lambda m=model: generate(m, 1), device)
                t_many = timed(lambda m=model, o=out: o.update(g=generate(m, n)), device)
                if round_ == 0:  # warm-up (and, for tc, the flex compile): kept apart
                    first[case] = round(t_prefill, 3)
                    generated[case] = out["g"][0, batch["input_ids"].shape[1] :].tolist()
                    last_logits[case] = out["p"].logits[:, -1].float()
                else:
                    prefill[case].append(t_prefill)
                    one[case].append(t_one)
                    many[case].append(t_many)
            run.log(f"model inference round {round_}")
            if run.out_of_time() and round_ >= 1:
                break
        peaks = {case: peak_mib(lambda c=case: use(c)(**batch, logits_to_keep=1), device) for case in cases}
    rows = {}
    for case in cases:
        rows[case] = {
            "prefill_seconds": round(min(prefill[case]), 4),
            "first_prefill_seconds": first[case],
            "decode_tokens_per_second": round((n - 1) / max(min(many[case]) - min(one[case]), 1e-9), 2),
            "prefill_peak_mib": peaks[case],
            "generated": generated[case],
        }
    result["inference"] = rows
    result["vanilla_tokens_identical"] = generated["tc_off"] == generated["hf"]
    result["vanilla_logit_max_diff"] = round(
        float((last_logits["tc_off"] - last_logits["hf"]).abs().max()), 6
    )
    run.report["vanilla_tokens_identical"] = result["vanilla_tokens_identical"]
    run.report["prefill_ratio"] = round(rows["tc"]["prefill_seconds"] / rows["hf"]["prefill_seconds"], 4)
    run.report["decode_ratio"] = round(
        rows["tc"]["decode_tokens_per_second"] / rows["hf"]["decode_tokens_per_second"], 4
    )
    run.log(
        f"model inference: prefill x{run.report['prefill_ratio']}, decode x{run.report['decode_ratio']}, "
        f"vanilla tokens identical {result['vanilla_tokens_identical']}"
    )
    run.save()


def measure_training(
    run: Run, use: Callable, models: dict, inputs: Callable, answer: int, result: dict
) -> None:
    """One LoRA step (forward with the loss, backward, AdamW) per case, batch 1 and 4, interleaved."""
    scale, device = run.scale, run.device
    optimizers = {"hf": add_lora(models["hf"][0], scale.lora_rank)}
    optimizers["tc"] = optimizers["tc_off"] = add_lora(models["tc"][0], scale.lora_rank)
    cases = ("hf", "tc_off", "tc")

    def step(case: str, batch: dict) -> None:
        loss = use(case)(**batch, use_cache=False).loss
        loss.backward()
        optimizers[case].step()
        optimizers[case].zero_grad(set_to_none=True)

    rows = result.setdefault("train", [])
    ratios = run.report.setdefault("train_step_ratio", {})
    for size in scale.train_batches:
        if run.out_of_time():
            rows.append({"batch": size, "skipped": "section time budget"})
            continue
        batch = inputs(size)
        labels = torch.full_like(batch["input_ids"], -100)
        labels[:, -answer:] = batch["input_ids"][:, -answer:]
        batch["labels"] = labels
        row: dict = {"batch": size, "tokens_per_sample": batch["input_ids"].shape[1]}
        try:
            first = {case: round(timed(lambda c=case, b=batch: step(c, b), device), 3) for case in cases}
            times: dict[str, list[float]] = {c: [] for c in cases}
            for _ in range(scale.model_repeats):
                for case in cases:
                    times[case].append(timed(lambda c=case, b=batch: step(c, b), device))
            row["first_step_seconds"] = first
            row["step_seconds"] = {c: round(statistics.median(t), 4) for c, t in times.items()}
            row["peak_mib"] = {c: peak_mib(lambda c=c, b=batch: step(c, b), device) for c in cases}
            row["ratio"] = round(row["step_seconds"]["tc"] / row["step_seconds"]["hf"], 4)
            ratios[str(size)] = row["ratio"]
        except Exception as e:  # batch 4 running out of memory keeps batch 1's figures
            row["error"] = f"{type(e).__name__}: {e}"[:2000]
            free_memory()
        rows.append(row)
        run.log(f"model train batch {size}: {row.get('step_seconds', row.get('error'))}")
        run.save()


SECTIONS: dict[str, Callable[[Run], None]] = {
    "correctness": section_correctness,
    "attention": section_attention,
    "model": section_model,
}


# ---------------------------------------------------------------------------------------------------
# targets and the markdown report
# ---------------------------------------------------------------------------------------------------


def targets(report: dict, scale: Scale) -> list[dict]:
    """The issue's targets, pass/fail (None: not measured). Reported, never asserted."""
    rows = []

    def add(name: str, value, target: str, ok: bool | None) -> None:
        rows.append({"name": name, "value": value, "target": target, "pass": ok})

    long = [
        r["ratio_vs_causal"]
        for r in report.get("attention", [])
        if "ratio_vs_causal" in r and r["tokens"] >= scale.target_min_tokens
    ]
    worst = max(long, default=None)
    add(
        f"TC attention fwd+bwd vs causal flash SDPA, {scale.target_min_tokens} tokens and above",
        worst,
        "<= 1.15",
        None if worst is None else worst <= 1.15,
    )
    for key, name, target, ok in (
        ("prefill_ratio", "prefill time vs transformers", "<= 1.05", lambda v: v <= 1.05),
        ("decode_ratio", "decode tokens/s vs transformers", ">= 0.95", lambda v: v >= 0.95),
    ):
        value = report.get(key)
        add(name, value, target, None if value is None else ok(value))
    train = report.get("train_step_ratio") or {}
    worst_train = max(train.values(), default=None)
    add(
        f"LoRA train step vs transformers (batch {', '.join(train) or '-'})",
        worst_train,
        "<= 1.05",
        None if worst_train is None else worst_train <= 1.05,
    )
    kernel_rows = report.get("correctness", {}).get("kernels", [])
    failed = [r for r in kernel_rows if "error" in r or r.get("nan")]
    for short, dtype in (("bf16", "bfloat16"), ("fp32", "float32")):
        value = report.get(f"max_abs_err_{short}")
        add(
            f"{short} kernels vs fp64 reference (largest abs error)",
            value,
            f"<= {ERROR_BOUNDS[dtype]:g}",
            None if value is None else value <= ERROR_BOUNDS[dtype] and not failed,
        )
    wrong = [
        r for r in kernel_rows if "chosen" in r and r["kernel"] == "auto" and r["chosen"] != r["expected"]
    ]
    add(
        "every kernel ran and the dispatcher chose as documented",
        f"{len(failed)} failed, {len(wrong)} wrong choices",
        "0, 0",
        None if not kernel_rows else not failed and not wrong,
    )
    decode = report.get("correctness", {}).get("decode", {})
    value = decode.get("mismatches_not_near_tie")
    add(
        "cached decode = full forward (tokens off a near tie)",
        value,
        "0",
        None if value is None else value == 0,
    )
    value = report.get("vanilla_tokens_identical")
    add("TC off generates transformers' tokens", value, "True", value)
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    v = report["versions"]
    lines = [
        f"# tcllava on {report['device']} ({report['mode']} run)",
        "",
        f"torch {v['torch']} (CUDA {v['cuda']}), transformers {v['transformers']}, triton {v['triton']}, "
        f"peft {v['peft']}; wall time {report.get('wall_seconds')} s of a {report['budget_seconds']} s budget. "
        "Written by `benchmarks/gpu.py` (docs/gpu.md).",
        "",
        "| target | value | wanted | result |",
        "|---|---:|---:|---|",
    ]
    verdict = {True: "pass", False: "FAIL", None: "not measured"}
    for t in report.get("targets", []):
        lines.append(f"| {t['name']} | {_fmt(t['value'])} | {t['target']} | {verdict[t['pass']]} |")
    lines += ["", "| section | status | seconds |", "|---|---|---:|"]
    for name, s in report["sections"].items():
        lines.append(f"| {name} | {s['status']} | {s['seconds']} |")
    kernels = report.get("correctness", {}).get("kernels", [])
    if kernels:
        lines += [
            "",
            "Kernels against the fp64 reference (largest absolute error of output and q/k/v gradients):",
            "",
            "| case | dtype | kernel (runs) | out err | grad err | note |",
            "|---|---|---|---:|---:|---|",
        ]
        for r in kernels:
            note = r.get("error") or r.get("skipped") or r.get("backward") or ""
            kernel = f"{r.get('kernel', '')} ({r.get('runs', '')})" if "kernel" in r else ""
            lines.append(
                f"| {r['case']} | {r['dtype']} | {kernel} | {_fmt(r.get('out_err'))} | "
                f"{_fmt(r.get('grad_err'))} | {note[:120]} |"
            )
    decode = report.get("correctness", {}).get("decode")
    if decode:
        lines += ["", f"Small TC-LLaVA, cached decoding vs full forward: `{json.dumps(decode)}`"]
    attention = report.get("attention", [])
    if attention:
        lines += [
            "",
            "Attention forward + backward (median seconds; x = ratio to causal flash SDPA):",
            "",
            "| tokens | frames | TC kernel | TC s | causal flash s | causal default s | dense-mask SDPA s | "
            "TC x | dense x | compile s | TC peak MiB | causal peak MiB | dense peak MiB | note |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in attention:
            s, p = r.get("seconds", {}), r.get("peak_mib", {})
            note = r.get("error") or "; ".join(f"{k}: {w}" for k, w in r.get("skipped", {}).items())
            lines.append(
                f"| {r['tokens']} | {r.get('frames', '')} | {r.get('tc_kernel', '')} | {_fmt(s.get('tc'), 4)} | "
                f"{_fmt(s.get('causal_flash'), 4)} | {_fmt(s.get('causal_default'), 4)} | "
                f"{_fmt(s.get('sdpa_dense'), 4)} | {_fmt(r.get('ratio_vs_causal'))} | "
                f"{_fmt(r.get('dense_ratio_vs_causal'))} | {_fmt(r.get('compile_seconds'))} | "
                f"{_fmt(p.get('tc'))} | {_fmt(p.get('causal_flash'))} | {_fmt(p.get('sdpa_dense'))} | {note[:160]} |"
            )
    model = report.get("model", {})
    if model.get("inference"):
        lines += [
            "",
            f"Model ({model['shape']}, {model['parameters_b']}B parameters, {model['dtype']}, {model['frames']} frames, "
            f"{model['prompt_tokens']} prompt tokens; build {model.get('build_seconds')} s, save "
            f"{model.get('save_seconds')} s, tcllava load {model.get('load_seconds')} s). tc_off: tcllava with gamma 0, "
            "causal, the source's pooling; tc: gamma 1, frame_block_causal, PLLaVA pooling.",
            "",
            "| case | prefill s | first prefill s | decode tok/s | prefill peak MiB |",
            "|---|---:|---:|---:|---:|",
        ]
        for case, r in model["inference"].items():
            lines.append(
                f"| {case} | {_fmt(r['prefill_seconds'], 4)} | {_fmt(r['first_prefill_seconds'])} | "
                f"{_fmt(r['decode_tokens_per_second'])} | {_fmt(r['prefill_peak_mib'])} |"
            )
    train = model.get("train")
    if isinstance(train, list) and train:
        lines += ["", "| batch | case | step s | first step s | peak MiB |", "|---:|---|---:|---:|---:|"]
        for r in train:
            if "step_seconds" not in r:
                lines.append(f"| {r['batch']} | | {r.get('error') or r.get('skipped')} | | |")
                continue
            for case, seconds in r["step_seconds"].items():
                lines.append(
                    f"| {r['batch']} | {case} | {_fmt(seconds, 4)} | {_fmt(r['first_step_seconds'][case])} | "
                    f"{_fmt(r['peak_mib'][case])} |"
                )
    for name, text in report["errors"].items():
        lines += ["", f"Error in {name}:", "", "```", text.strip()[-1500:], "```"]
    for note in report["notes"]:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny shapes on the CPU, in seconds (needs --out)"
    )
    parser.add_argument("--out", type=Path, help=f"folder for gpu.json and gpu.md (default: {RESULTS})")
    parser.add_argument("--sections", nargs="+", choices=SECTION_NAMES, default=list(SECTION_NAMES))
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default: 450, tiny 150)")
    parser.add_argument("--device", help="cuda (default) or, with --tiny, cpu (default) or cuda")
    args = parser.parse_args(argv)
    if args.tiny and args.out is None:
        parser.exit(2, "gpu.py: --tiny needs --out DIR (tiny figures never go to benchmarks/results)\n")
    if args.budget is not None and not args.budget > 0:
        parser.exit(2, f"gpu.py: --budget must be a number of seconds > 0, got {args.budget}\n")
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.exit(2, f"gpu.py: --device must be cpu, cuda or cuda:N, got {args.device!r}\n")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, "gpu.py: no CUDA device here; --tiny runs the same code on the CPU\n")
    if args.device == "cpu" and not args.tiny:
        parser.exit(2, "gpu.py: the full run needs a CUDA device; use --tiny on the CPU\n")
    args.out = args.out or RESULTS
    args.budget = args.budget or (150.0 if args.tiny else 450.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = TINY if args.tiny else FULL
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:  # "cuda:0", the name q.device gives (cache keys)
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cpu":
        # Tiny shapes gain nothing from threads, and on a shared CPU spinning worker threads made the tiny
        # run 10x slower.
        torch.set_num_threads(1)
    run = Run(args, scale, device)
    if device.type == "cuda":
        # The compiled flex kernel is specialised to each shape (dynamic=False): this run compiles it for
        # about 13 shapes, past dynamo's default limit of 8, after which it would run uncompiled (O(T^2)).
        run.report["notes"].append(
            f"torch._dynamo.config.recompile_limit raised from {torch._dynamo.config.recompile_limit} to 64 "
            "for this run (each new sequence shape recompiles the flex kernel)"
        )
        torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
    run.log(f"{scale.name} run on {run.report['device']}, sections {', '.join(args.sections)}")
    for name in args.sections:
        run.begin(name)
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                SECTIONS[name](run)
                status = "ok"
            except Exception:  # recorded, and the next section runs: one failure must not lose the rest
                status = "error"
                run.report["errors"][name] = traceback.format_exc()[-6000:]
                run.log(f"section {name} failed:\n{run.report['errors'][name]}")
        # Kept for the post-mortem of a one-shot run (e.g. "flex_attention called without torch.compile").
        messages = sorted({f"{w.category.__name__}: {str(w.message)[:300]}" for w in caught})
        if messages:
            run.report.setdefault("warnings", {})[name] = messages[:20]
        run.report.setdefault("dynamo", {})[name] = dynamo_counters()
        free_memory()
        run.report["sections"][name] = {"status": status, "seconds": round(time.perf_counter() - started, 1)}
        run.save()
    print(markdown(run.report), flush=True)
    run.log(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
