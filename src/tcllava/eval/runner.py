"""Run a benchmark: shard, decode ahead, generate in batches, stream predictions, resume, merge, score.

Files in `out_dir`:
- `predictions.rank{r}-of{w}.jsonl`: one header line (the run's configuration) then one line per
  sample, appended and flushed as soon as it is known. A rerun skips ids already answered, so an
  interrupted evaluation resumes, and retries the ones recorded with an error (missing video, decode
  timeout): the new attempt is appended and the later line wins. A rerun with a different
  configuration is refused rather than mixed.
- `predictions.jsonl`: all shards merged in benchmark order (each id exactly once).
- `judgements.jsonl` (open-ended benchmarks): one line per judge call, resumable the same way.
- `results.json`, `results.md`, `results.png`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import tcllava
from tcllava.eval.benchmarks import SYNTHETIC_GROUPS, Benchmark, EvalError, EvalInputError, Sample
from tcllava.eval.config import EvalRun
from tcllava.eval.dataset import EvalDataset, keep_lists
from tcllava.eval.extract import EXTRACTION_RULE, EXTRACTION_VERSION, extract_choice
from tcllava.eval.judge import JUDGE_PROMPTS, SCORE_RULE, Judge, JudgeError
from tcllava.eval.predictor import Predictor, describe_predictor
from tcllava.eval.protocols import EvalProtocol
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
        raise EvalInputError(f"bad rank/world size {rank}/{world} (RANK, WORLD_SIZE); need 0 <= rank < world")
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
    kept = (*VIDEOMME_GROUPS, "sub_category", *SYNTHETIC_GROUPS)
    meta = {k: v for k, v in sample.meta.items() if k in kept}
    if meta:
        rec["meta"] = meta
    return rec


def open_shard(path: Path, samples: list[Sample], header: dict[str, Any]) -> list[Sample]:
    """The samples of this shard still to do: not in `path` yet, or recorded there with an error
    (the later line of a retry wins). Writes the header of a new shard file."""
    found, done = read_jsonl(path, repair=True)
    if found is not None:
        _check_same_run(path, found, header)
    elif done:
        raise EvalError(f"{path} has predictions but no header line; move it away and rerun")
    else:
        path.write_text(json.dumps({"_header": header}) + "\n", encoding="utf-8")
    latest = {r["id"]: r for r in done}
    pending = [s for s in samples if s.id not in latest or latest[s.id].get("error")]
    retried = sum(s.id in latest for s in pending)
    if retried:
        print(
            f"[tcllava eval] {path}: retrying {retried} samples that failed before",
            file=sys.stderr,
            flush=True,
        )
    return pending


def run_shard(
    predictor: Predictor, pending: list[Sample], protocol: EvalProtocol, path: Path, run: EvalRun
) -> int:
    """Generate predictions for `pending` (see `open_shard`), appending to `path`; returns how many."""
    if not pending:
        return 0
    dataset = EvalDataset(pending, protocol, run.num_frames, run.subtitle_mode, run.timeout)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=run.batch_size, shuffle=False, num_workers=run.num_workers, collate_fn=keep_lists
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
    """All shards -> one record per sample id, in benchmark order (a retried sample's later line wins);
    refuses mixed runs or gaps."""
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
            by_id[rec["id"]] = rec
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
    judge: Judge,
    kind: str,
    records: list[dict[str, Any]],
    out_dir: Path,
    workers: int = 4,
    max_failures: int = 5,
) -> dict[str, dict[str, Any]]:
    """Judge every record once (resumable); failed judgements are retried on the next run.

    Fails fast instead of letting every question wait out its retries: the endpoint is checked before
    the first call, and `max_failures` failed judgements in a row stop the run (JudgeError)."""
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
    if not jobs:
        return results
    judge.check()

    def one(criterion: str, key: str, fields: dict[str, str]) -> dict[str, Any]:
        try:
            return {"key": f"{criterion}:{key}", **judge.judge(criterion, **fields), "error": None}
        except JudgeError as e:
            return {"key": f"{criterion}:{key}", "error": str(e)}

    in_a_row = 0
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(one, *job) for job in jobs]
        for future in as_completed(futures):
            result = future.result()
            _append(path, [result])
            results[result["key"]] = result
            in_a_row = in_a_row + 1 if result["error"] else 0
            if in_a_row >= max_failures:
                kept = sum(not r.get("error") for r in results.values())
                raise JudgeError(
                    f"stopped after {in_a_row} failed judgements in a row (last: {result['error']}); "
                    f"{kept} judgements are kept in {path} and a rerun resumes from them"
                )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
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


def failures(bench: Benchmark, metrics: dict[str, Any], run: EvalRun, out_dir: Path) -> dict[str, Any]:
    """How many samples (and judgements) failed, against `run.max_error_rate`; `message` says where
    the failures are listed when there are too many (every sample failing is always too many)."""
    if bench.kind == "mcq":
        n, failed = metrics["overall"]["n"], metrics["overall"]["errors"]
    else:
        n, failed = metrics["n"], metrics["errors"]
    criteria = metrics.get("criteria", {}).values()
    judge_failed = sum(c["judge_errors"] for c in criteria)
    judgements = judge_failed + sum(c["judged"] for c in criteria)
    rate = run.max_error_rate
    problems = []
    if n and (failed == n or failed / n > rate):
        problems.append(
            f"{failed} of {n} samples failed (listed with their error in {out_dir / 'predictions.jsonl'})"
        )
    if judgements and (judge_failed == judgements or judge_failed / judgements > rate):
        problems.append(
            f"{judge_failed} of {judgements} judgements failed (listed in {out_dir / 'judgements.jsonl'})"
        )
    message = None
    if problems:
        message = (
            f"{'; '.join(problems)}; allowed: at most {rate:.1%} (--max-error-rate) and never all. "
            "Fix the cause and rerun: failed samples and judgements are retried"
        )
    return {
        "samples_failed": failed,
        "samples": n,
        "judgements_failed": judge_failed,
        "judgements": judgements,
        "max_error_rate": run.max_error_rate,
        "message": message,
    }


def finalize(
    run: EvalRun, bench: Benchmark, protocol: EvalProtocol, world: int, judge: Judge | None = None
) -> dict[str, Any]:
    """Merge all shards, judge if needed, score, and write results.json / .md / .png."""
    out_dir = Path(run.out_dir)
    header, records = merge_shards(bench.samples, out_dir, world)
    if header["protocol"] != protocol.describe():
        raise EvalError(
            f"the predictions in {out_dir} were made with protocol {header['protocol']['name']!r} "
            f"(subtitles={header['protocol']['subtitles']}), not {protocol.name!r}"
        )
    if bench.kind == "mcq":
        groups: tuple[str, ...] = ()
        if bench.name == "videomme":
            groups = VIDEOMME_GROUPS
        elif bench.name == "synthetic":  # by needle depth when the rows carry one
            groups = tuple(f for f in SYNTHETIC_GROUPS if any(f in s.meta for s in bench.samples))
        metrics = score_mcq(records, protocol.denominator, bench.tasks_found, groups)
    else:
        judge = judge or Judge.from_env()
        judgements = run_judge(judge, bench.kind, records, out_dir, run.judge_workers, run.judge_max_failures)
        metrics = score_judged(bench.kind, records, judgements)
    results = _results(bench, protocol, header, metrics, world, judge, run.limit)
    results["failures"] = failures(bench, metrics, run, out_dir)
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


def evaluate(predictor: Predictor, run: EvalRun, judge: Judge | None = None) -> dict[str, Any]:
    """Evaluate `predictor` on `run.benchmark` (mvbench, videomme, synthetic, msvd-qa, msrvtt-qa,
    activitynet-qa, tgif-qa, videochatgpt) from the local copy in `run.data_dir`; write to `run.out_dir`.

    Returns the results dict (also in results.json) once every shard is done; `results["failures"]`
    counts the failed samples and judgements (its `message` is set when they exceed
    `run.max_error_rate`). Under torchrun (RANK/WORLD_SIZE set) each rank does its shard; with
    torch.distributed initialised rank 0 merges after a barrier, otherwise the last rank to finish
    does. A rank that cannot merge yet returns `{"status": "partial", ...}`; run `merge()` (or
    `tcllava eval ... --merge-only`) after all ranks. Likelihood scoring needs a predictor with
    `rank`. Open-ended benchmarks need a `judge` (or the TCLLAVA_JUDGE_* environment variables); it is
    checked to be reachable before any generation, so a dead endpoint fails in seconds, not hours.
    """
    bench = run.load()
    proto = run.eval_protocol()
    rank, world = rank_and_world(run.rank, run.world_size)
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = _header(
        bench, proto, run.num_frames, run.subtitle_mode, describe_predictor(predictor), world, rank
    )
    judge = judge or (Judge.from_env() if run.judged else None)
    path = shard_path(out, rank, world)
    pending = open_shard(path, shard_of(bench.samples, rank, world), header)
    if judge is not None and pending:
        judge.check()  # hours of generation are wasted if the judge turns out to be down afterwards
    run_shard(predictor, pending, proto, path, run)
    distributed = world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed:
        torch.distributed.barrier()
        if rank != 0:
            return {"status": "shard-done", "rank": rank, "world_size": world}
    incomplete = incomplete_shards(bench.samples, out, world)
    if incomplete:
        return {"status": "partial", "rank": rank, "world_size": world, "incomplete_shards": incomplete}
    return finalize(run, bench, proto, world, judge)


def merge(run: EvalRun, judge: Judge | None = None) -> dict[str, Any]:
    """Merge the shard files already in `run.out_dir` (all ranks finished) and write the results."""
    out = Path(run.out_dir)
    worlds = {int(p.name.split("-of")[1].split(".")[0]) for p in out.glob("predictions.rank*-of*.jsonl")}
    if len(worlds) != 1:
        raise EvalError(f"{out}: expected shard files of one world size, found {sorted(worlds) or 'none'}")
    return finalize(run, run.load(), run.eval_protocol(), worlds.pop(), judge)
