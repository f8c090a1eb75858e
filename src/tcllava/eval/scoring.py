"""From per-sample prediction records to the numbers, with the counts each number rests on."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from tcllava.eval.benchmarks import VIDEOCHATGPT_FILES


def _pct(num: int, den: int) -> float | None:
    return 100.0 * num / den if den else None


def mcq_stats(records: Iterable[dict[str, Any]], denominator: str) -> dict[str, Any]:
    """Counts and accuracy for a set of multiple-choice records.

    `errors` (video could not be decoded) never enter a denominator. `denominator="all"` keeps every
    decoded sample (unparseable = wrong); `"non-empty"` also drops empty generations (lmms-eval).
    `accuracy_all` is always the "all" number, so protocols can be compared on the same footing.
    """
    n = errors = unparseable = empty = correct = 0
    for r in records:
        n += 1
        if r.get("error"):
            errors += 1
            continue
        if not (r.get("prediction") or "").strip():
            empty += 1
        if r.get("extracted") is None:
            unparseable += 1
        correct += bool(r.get("correct"))
    excluded = empty if denominator == "non-empty" else 0
    den = n - errors - excluded
    return {
        "n": n,
        "errors": errors,
        "unparseable": unparseable,
        "empty": empty,
        "excluded": excluded,
        "denominator": den,
        "correct": correct,
        "accuracy": _pct(correct, den),
        "accuracy_all": _pct(correct, n - errors),
    }


def _grouped(
    records: list[dict[str, Any]],
    key: Callable[[dict[str, Any]], Any],
    denominator: str,
    order: list[str] | None = None,
) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[str(key(r))].append(r)
    names = [t for t in (order or []) if t in groups] + sorted(g for g in groups if g not in (order or []))
    return {g: mcq_stats(groups[g], denominator) for g in names}


def score_mcq(
    records: list[dict[str, Any]], denominator: str, task_order: list[str], group_fields: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Per task, the mean over tasks ("average", MVBench's headline), all samples pooled ("overall"),
    and per metadata field (Video-MME: duration, domain, task_type; synthetic: the needle's depth) over
    the records whose metadata has that field (a None value is a group of its own)."""
    tasks = _grouped(records, lambda r: r["task"], denominator, task_order)
    accs = [t["accuracy"] for t in tasks.values() if t["accuracy"] is not None]
    out: dict[str, Any] = {
        "tasks": tasks,
        "average": sum(accs) / len(accs) if accs else None,
        "average_over_tasks": len(accs),
        "overall": mcq_stats(records, denominator),
    }
    if group_fields:
        out["groups"] = {
            f: _grouped(
                [r for r in records if f in (r.get("meta") or {})], lambda r, f=f: r["meta"][f], denominator
            )
            for f in group_fields
        }
    return out


# Which judge criteria apply to which records, per benchmark kind.
def judge_jobs(kind: str, records: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, str]]]:
    """(criterion, key, prompt fields) for every judgement the records need; records with a video
    error are skipped (they are counted as errors, not judged)."""
    jobs = []
    ok = {r["id"]: r for r in records if not r.get("error")}
    for r in records:
        if r.get("error"):
            continue
        fields = {"question": r["question"], "answer": r["truth"], "prediction": r["prediction"]}
        if kind == "openqa":
            jobs.append(("qa", r["id"], fields))
        elif r["task"] == "generic":
            jobs += [(c, r["id"], fields) for c in ("correctness", "detail", "context")]
        elif r["task"] == "temporal":
            jobs.append(("temporal", r["id"], fields))
        elif r["task"] == "consistency" and r["id"].endswith("/q1"):
            other = ok.get(r["id"][:-3] + "/q2")
            if other is not None:
                fields = {**fields, "question2": other["question"], "prediction2": other["prediction"]}
                jobs.append(("consistency", r["id"][:-3], fields))
    return jobs


def score_judged(
    kind: str, records: list[dict[str, Any]], judgements: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Open-ended QA: accuracy = yes / (yes + no) and mean score (Video-ChatGPT's definitions).
    Video-ChatGPT benchmark: mean 0-5 score per criterion. Judge failures are counted, not scored."""
    jobs = judge_jobs(kind, records)
    errors = sum(1 for r in records if r.get("error"))
    by_criterion: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for criterion, key, _ in jobs:
        by_criterion[criterion].append(judgements.get(f"{criterion}:{key}", {"error": "not judged"}))
    out: dict[str, Any] = {"n": len(records), "errors": errors, "criteria": {}}
    for criterion, results in by_criterion.items():
        good = [j for j in results if not j.get("error")]
        stats: dict[str, Any] = {
            "judged": len(good),
            "judge_errors": len(results) - len(good),
            "score": sum(j["score"] for j in good) / len(good) if good else None,
        }
        if criterion == "qa":
            yes = sum(j.get("pred") == "yes" for j in good)
            no = sum(j.get("pred") == "no" for j in good)
            stats.update({"yes": yes, "no": no, "accuracy": _pct(yes, yes + no)})
        out["criteria"][criterion] = stats
    if kind == "videochatgpt":
        expected = [
            c for c in ("correctness", "detail", "context", "temporal", "consistency") if c in out["criteria"]
        ]
        out["criteria"] = {c: out["criteria"][c] for c in expected}
        out["tasks_present"] = sorted({r["task"] for r in records}, key=list(VIDEOCHATGPT_FILES).index)
    return out
