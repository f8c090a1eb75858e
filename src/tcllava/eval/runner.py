"""Run a benchmark: shard, decode ahead, generate in batches, stream predictions, resume, merge, score.

Files in `out_dir`:
- `predictions.rank{r}-of{w}.jsonl`: one header line (the run's configuration) then one line per
  sample, appended and flushed as soon as it is known. A rerun skips ids already there, so an
  interrupted evaluation resumes; a rerun with a different configuration is refused rather than mixed.
- `predictions.jsonl`: all shards merged in benchmark order (each id exactly once).
- `judgements.jsonl` (open-ended benchmarks): one line per judge call, resumable the same way.
- `results.json`, `results.md`, `results.png`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import tcllava
from tcllava.eval.benchmarks import Benchmark, EvalError, Sample, load_benchmark
from tcllava.eval.dataset import EvalDataset, keep_lists
from tcllava.eval.extract import EXTRACTION_RULE, EXTRACTION_VERSION, extract_choice
from tcllava.eval.judge import JUDGE_PROMPTS, SCORE_RULE, Judge, JudgeError
from tcllava.eval.predictor import Predictor, describe_predictor
from tcllava.eval.protocols import EvalProtocol, get_protocol
from tcllava.eval.report import write_reports
from tcllava.eval.scoring import judge_jobs, score_judged, score_mcq
from tcllava.eval.subtitles import SUBTITLE_RULE

# Header fields that must agree for predictions to be reused or merged.
_RUN_KEY = ("benchmark", "protocol", "num_frames", "subtitle_mode", "model", "data_sha256", "world_size")
VIDEOMME_GROUPS = ("duration", "domain", "task_type")


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values, else torchrun's RANK / WORLD_SIZE, else a single process."""
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    rank = rank if rank is not None else int(os.environ.get("RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise EvalError(f"bad rank/world size {rank}/{world}")
    return rank, world


def shard_of(samples: list[Sample], rank: int, world: int) -> list[Sample]:
    """Strided, so every rank gets a mix of tasks (and of video lengths)."""
    return samples[rank::world]


def shard_path(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / f"predictions.rank{rank}-of{world}.jsonl"


def read_jsonl(path: Path, repair: bool = False) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header, records) of a log. A torn last line (process killed mid-write) is ignored; with
    `repair` (only for the caller's own shard, never another rank's live file) it is cut from the file."""
    if not path.exists():
        return None, []
    lines = path.read_text(encoding="utf-8").splitlines()
    header, records, good = None, [], []
    for k, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if k < len(lines) - 1:
                raise EvalError(f"{path}:{k + 1}: corrupt line in the middle of the file") from None
            if repair:
                _write_atomic(path, "".join(g + "\n" for g in good))
            break
        good.append(line)
        if k == 0 and "_header" in obj:
            header = obj["_header"]
        else:
            records.append(obj)
    return header, records


def _write_atomic(path: Path, text: str) -> None:
    """Write beside, then rename: readers never see half a file, concurrent writers never collide."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _append(path: Path, objs: Iterable[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for obj in objs:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        f.flush()


def _check_same_run(path: Path, found: dict[str, Any], expected: dict[str, Any]) -> None:
    diff = [k for k in _RUN_KEY if found.get(k) != expected.get(k)]
    if diff:
        raise EvalError(
            f"{path} holds predictions of a different run (differs in: {', '.join(diff)}); "
            "use a fresh --out directory or delete the old predictions"
        )


def _record(
    sample: Sample, prediction: str | None, error: str | None, scores: list[float] | None = None
) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": sample.id, "task": sample.task, "prediction": prediction}
    if scores is not None:
        rec["option_scores"] = scores
    if sample.options:
        letter = None if error else extract_choice(prediction, sample.options)
        rec.update(
            {
                "extracted": letter,
                "truth": sample.answer,
                "correct": None if error else letter == sample.answer,
            }
        )
    else:
        rec.update({"question": sample.question, "truth": sample.answer})
    rec["error"] = error
    meta = {k: v for k, v in sample.meta.items() if k in VIDEOMME_GROUPS or k == "sub_category"}
    if meta:
        rec["meta"] = meta
    return rec


def run_shard(
    predictor: Predictor,
    samples: list[Sample],
    protocol: EvalProtocol,
    path: Path,
    header: dict[str, Any],
    num_frames: int,
    batch_size: int,
    num_workers: int,
    subtitle_mode: str,
    timeout: float,
) -> int:
    """Generate predictions for the samples not yet in `path`; returns how many were done now."""
    found, done = read_jsonl(path, repair=True)
    if found is not None:
        _check_same_run(path, found, header)
    elif done:
        raise EvalError(f"{path} has predictions but no header line; move it away and rerun")
    else:
        path.write_text(json.dumps({"_header": header}) + "\n", encoding="utf-8")
    done_ids = {r["id"] for r in done}
    pending = [s for s in samples if s.id not in done_ids]
    if not pending:
        return 0
    dataset = EvalDataset(pending, protocol, num_frames, subtitle_mode, timeout)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=max(1, batch_size), shuffle=False, num_workers=num_workers, collate_fn=keep_lists
    )
    order = {s.id: k for k, s in enumerate(pending)}
    count = 0
    progress = tqdm(total=len(pending), desc=path.stem, unit="sample", disable=None)  # quiet unless a tty
    for batch in loader:
        failed = [_record(item["sample"], None, item["error"]) for item in batch if item["error"]]
        ready = [item for item in batch if not item["error"]]
        outputs: list[str] = []
        scores: list[list[float] | None] = [None] * len(ready)
        if ready and protocol.scoring == "likelihood":
            outputs, scores = _rank_options(predictor, protocol, ready)
        elif ready:
            outputs = predictor.generate([i["clip"] for i in ready], [i["prompt"] for i in ready])
        if len(outputs) != len(ready):
            raise EvalError(f"predictor returned {len(outputs)} answers for {len(ready)} prompts")
        records = failed + [
            _record(i["sample"], str(o), None, sc) for i, o, sc in zip(ready, outputs, scores, strict=True)
        ]
        _append(path, sorted(records, key=lambda r: order[r["id"]]))
        count += len(records)
        progress.update(len(records))
    progress.close()
    return count


def _rank_options(
    predictor: Predictor, protocol: EvalProtocol, items: list[dict[str, Any]]
) -> tuple[list[str], list[list[float]]]:
    """Likelihood scoring: each option's whole answer is scored; the best one becomes the prediction,
    written "(B) text" so that the usual extraction reads it."""
    rank = getattr(predictor, "rank", None)
    if not callable(rank):
        raise EvalError(
            f"{type(predictor).__name__} has no rank(clips, prompts, continuations) method, so it cannot "
            "score options by likelihood; use scoring='generate'"
        )
    options = [i["sample"].options for i in items]
    continuations = [[protocol.continuation(k, o) for k, o in enumerate(opts)] for opts in options]
    scores = rank([i["clip"] for i in items], [i["prompt"] for i in items], continuations)
    if [len(s) for s in scores] != [len(c) for c in continuations]:
        raise EvalError("predictor.rank returned a score list that does not match the options")
    best = [max(range(len(s)), key=s.__getitem__) for s in scores]
    outputs = [f"({chr(ord('A') + b)}) {opts[b]}" for b, opts in zip(best, options, strict=True)]
    return outputs, [[float(x) for x in s] for s in scores]


def incomplete_shards(samples: list[Sample], out_dir: Path, world: int) -> list[int]:
    missing = []
    for r in range(world):
        path = shard_path(out_dir, r, world)
        _, records = read_jsonl(path)
        if {s.id for s in shard_of(samples, r, world)} - {rec["id"] for rec in records}:
            missing.append(r)
    return missing


def merge_shards(
    samples: list[Sample], out_dir: Path, world: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All shards -> one record per sample id, in benchmark order; refuses mixed runs or gaps."""
    header: dict[str, Any] | None = None
    by_id: dict[str, dict[str, Any]] = {}
    for r in range(world):
        path = shard_path(out_dir, r, world)
        h, records = read_jsonl(path)
        if h is None:
            raise EvalError(f"{path} is missing or has no header; run rank {r} first")
        if header is None:
            header = h
        _check_same_run(path, h, header)
        for rec in records:
            by_id.setdefault(rec["id"], rec)  # a duplicate (rerun race) is the same sample; keep the first
    wanted = [s.id for s in samples]
    missing = [i for i in wanted if i not in by_id]
    extra = sorted(set(by_id) - set(wanted))
    if missing or extra:
        raise EvalError(
            f"merge in {out_dir}: {len(missing)} ids missing (e.g. {missing[:3]}), "
            f"{len(extra)} unexpected (e.g. {extra[:3]})"
        )
    assert header is not None
    merged = [by_id[i] for i in wanted]
    sample_by_id = {s.id: s for s in samples}
    for rec in merged:  # re-extract so the merged file always reflects the current extraction rule
        s = sample_by_id[rec["id"]]
        if s.options and not rec.get("error"):
            rec["extracted"] = extract_choice(rec["prediction"], s.options)
            rec["correct"] = rec["extracted"] == s.answer
    _write_atomic(
        out_dir / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged)
    )
    return header, merged


def run_judge(
    judge: Judge, kind: str, records: list[dict[str, Any]], out_dir: Path, workers: int = 4
) -> dict[str, dict[str, Any]]:
    """Judge every record once (resumable); failed judgements are retried on the next run."""
    path = out_dir / "judgements.jsonl"
    found, done = read_jsonl(path, repair=True)
    if found is None:
        path.write_text(json.dumps({"_header": {"judge": judge.identity()}}) + "\n", encoding="utf-8")
    elif found.get("judge") != judge.identity():
        raise EvalError(
            f"{path} was made by judge {found.get('judge')}, not {judge.identity()}; "
            "use a fresh --out directory or delete it"
        )
    results = {d["key"]: d for d in done}  # later lines win
    jobs = [j for j in judge_jobs(kind, records) if results.get(f"{j[0]}:{j[1]}", {"error": 1}).get("error")]

    def one(criterion: str, key: str, fields: dict[str, str]) -> dict[str, Any]:
        try:
            return {"key": f"{criterion}:{key}", **judge.judge(criterion, **fields), "error": None}
        except JudgeError as e:
            return {"key": f"{criterion}:{key}", "error": str(e)}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(one, *job) for job in jobs]
        for future in as_completed(futures):
            result = future.result()
            _append(path, [result])
            results[result["key"]] = result
    return results


def _results(
    bench: Benchmark,
    protocol: EvalProtocol,
    header: dict[str, Any],
    metrics: dict[str, Any],
    world: int,
    judge: Judge | None,
    limit: int | None,
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": bench.name,
        "kind": bench.kind,
        "metrics": metrics,
        "model": header.get("model"),
        "protocol": {**protocol.describe(), "prompt_example": header.get("prompt_example")},
        "num_frames": header["num_frames"],
        "limit": limit,
        "sampling": protocol.sampling,
        "subtitle_mode": header.get("subtitle_mode"),
        "subtitle_rule": SUBTITLE_RULE if protocol.subtitles else None,
        "extraction_version": EXTRACTION_VERSION,
        "extraction_rule": EXTRACTION_RULE if bench.kind == "mcq" else None,
        "tasks_found": bench.tasks_found,
        "tasks_missing": bench.tasks_missing,
        "data": {"dir": str(bench.root), "sha256": bench.file_hashes(), "num_samples": len(bench.samples)},
        "tcllava_version": tcllava.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "world_size": world,
    }
    if judge is not None:
        kinds = ["qa"] if bench.kind == "openqa" else [c for c in JUDGE_PROMPTS if c != "qa"]
        results["judge"] = {
            **judge.identity(),
            "prompts": {k: JUDGE_PROMPTS[k] for k in kinds},
            "score_rule": SCORE_RULE,
        }
    return results


def finalize(
    bench: Benchmark,
    protocol: EvalProtocol,
    out_dir: Path,
    world: int,
    judge: Judge | None = None,
    judge_workers: int = 4,
    limit: int | None = None,
) -> dict[str, Any]:
    """Merge all shards, judge if needed, score, and write results.json / .md / .png."""
    header, records = merge_shards(bench.samples, out_dir, world)
    if header["protocol"] != protocol.describe():
        raise EvalError(
            f"the predictions in {out_dir} were made with protocol {header['protocol']['name']!r} "
            f"(subtitles={header['protocol']['subtitles']}), not {protocol.name!r}"
        )
    if bench.kind == "mcq":
        groups = VIDEOMME_GROUPS if bench.name == "videomme" else ()
        metrics = score_mcq(records, protocol.denominator, bench.tasks_found, groups)
    else:
        judge = judge or Judge.from_env()
        metrics = score_judged(
            bench.kind, records, run_judge(judge, bench.kind, records, out_dir, judge_workers)
        )
    results = _results(bench, protocol, header, metrics, world, judge, limit)
    write_reports(results, out_dir)
    return results


def _header(
    bench: Benchmark,
    protocol: EvalProtocol,
    num_frames: int,
    subtitle_mode: str | None,
    model: dict[str, Any],
    world: int,
    rank: int,
) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(bench.file_hashes(), sort_keys=True).encode()).hexdigest()
    example = (
        protocol.prompt(bench.samples[0], "" if protocol.subtitles else None).to_dict()
        if bench.samples
        else None
    )
    header = {
        "benchmark": bench.name,
        "protocol": protocol.describe(),
        "num_frames": num_frames,
        "subtitle_mode": subtitle_mode if protocol.subtitles else None,
        "model": model,
        "data_sha256": digest,
        "world_size": world,
        "rank": rank,
        "prompt_example": example,
    }
    return json.loads(json.dumps(header, default=str))  # as it will read back from the file


def evaluate(
    predictor: Predictor,
    benchmark: str,
    data_dir: str | Path,
    out_dir: str | Path,
    protocol: str | None = None,
    num_frames: int = 16,
    batch_size: int = 1,
    num_workers: int = 2,
    limit: int | None = None,
    *,
    subtitles: bool = False,
    subtitle_mode: str = "frames",
    sampling: str | None = None,
    scoring: str | None = None,
    judge: Judge | None = None,
    judge_workers: int = 4,
    rank: int | None = None,
    world_size: int | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Evaluate `predictor` on `benchmark` (mvbench, videomme, synthetic, msvd-qa, msrvtt-qa,
    activitynet-qa, tgif-qa, videochatgpt) from the local copy in `data_dir`; write to `out_dir`.

    Returns the results dict (also in results.json) once every shard is done. Under torchrun
    (RANK/WORLD_SIZE set) each rank does its shard; with torch.distributed initialised rank 0 merges
    after a barrier, otherwise the last rank to finish does. A rank that cannot merge yet returns
    `{"status": "partial", ...}`; run `merge()` (or `tcllava eval ... --merge-only`) after all ranks.
    `limit`: the first N rows of each task; `sampling` overrides the protocol's frame sampling
    (tcllava.video: middle, uniform, mvbench); `scoring` "likelihood" ranks the options by the model's
    log-probability of each whole answer instead of generating (the predictor needs `rank`). Open-ended benchmarks need a `judge` (or the
    TCLLAVA_JUDGE_* environment variables).
    """
    bench = load_benchmark(benchmark, data_dir, limit)
    proto = get_protocol(benchmark, protocol, subtitles, sampling, scoring)
    rank, world = rank_and_world(rank, world_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = _header(bench, proto, num_frames, subtitle_mode, describe_predictor(predictor), world, rank)
    run_shard(
        predictor,
        shard_of(bench.samples, rank, world),
        proto,
        shard_path(out, rank, world),
        header,
        num_frames,
        batch_size,
        num_workers,
        subtitle_mode,
        timeout,
    )
    distributed = world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        torch.distributed.barrier()
        if rank != 0:
            return {"status": "shard-done", "rank": rank, "world_size": world}
    pending = incomplete_shards(bench.samples, out, world)
    if pending:
        return {"status": "partial", "rank": rank, "world_size": world, "incomplete_shards": pending}
    return finalize(bench, proto, out, world, judge, judge_workers, limit)


def merge(
    benchmark: str,
    data_dir: str | Path,
    out_dir: str | Path,
    protocol: str | None = None,
    limit: int | None = None,
    *,
    subtitles: bool = False,
    sampling: str | None = None,
    scoring: str | None = None,
    judge: Judge | None = None,
    judge_workers: int = 4,
) -> dict[str, Any]:
    """Merge the shard files already in `out_dir` (all ranks finished) and write the results."""
    out = Path(out_dir)
    worlds = {int(p.name.split("-of")[1].split(".")[0]) for p in out.glob("predictions.rank*-of*.jsonl")}
    if len(worlds) != 1:
        raise EvalError(f"{out}: expected shard files of one world size, found {sorted(worlds) or 'none'}")
    bench = load_benchmark(benchmark, data_dir, limit)
    proto = get_protocol(benchmark, protocol, subtitles, sampling, scoring)
    return finalize(bench, proto, out, worlds.pop(), judge, judge_workers, limit)
