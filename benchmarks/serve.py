"""`tcllava serve` under 1, 4 and 16 concurrent clients vs the same requests one by one through model.chat.

    python benchmarks/serve.py                          # 32 requests per run, 3 repeats (a few minutes)
    python benchmarks/serve.py --requests 16 --repeats 1

The model is a random TC-LLaVA of the demo's size (64 px frames, 8 frames of 16 visual tokens, a 4-layer
LLM of width 128), the requests are greedy questions about 8 synthetic benchmark videos (each a data: URL,
32 new tokens at most). The server is `tcllava serve --no-page` in a subprocess; each client is a thread
that streams its answer over HTTP (httpx), sends its next request as soon as one is answered, and records
latency and time to the first token. The baseline loads the same checkpoint in this process and answers
the same requests one after another with ``model.chat`` (time to first token through a streamer); both
sides run torch on one CPU thread. Every served answer is checked to be the baseline's, token for token.
Runs interleave (baseline, 1, 4, 16 clients) in each repeat; the table gives min / median / max over them.
Writes benchmarks/results/serve.json and serve.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# torch's CPU threads on both sides. One: on this shared 2-core machine two OpenMP threads per process vary
# the time of one step by up to 10x with the other agents' load; one thread measures the batching.
THREADS = 1
CLIENTS = (1, 4, 16)
TASKS = (
    "action_sequence",
    "moving_direction",
    "state_change",
    "scene_transition",
    "object_shuffle",
    "reverse_playback",
    "object_color",
    "object_count",
)


def build_model(path: Path) -> list[tuple[Path, str]]:
    """The demo-sized random checkpoint and one synthetic video per task with its question."""
    import torch

    from tcllava.data.synthetic import make_samples, write_mp4
    from tcllava.model import TCLlavaForConditionalGeneration
    from tcllava.model.factory import build_word_tokenizer
    from tcllava.recipes.tiny_model import (
        PROMPT_WORDS,
        TinySizes,
        demo_config,
        save_checkpoint,
        template_texts,
    )

    sizes = TinySizes()
    samples = [
        make_samples(task, 1, "test", seed=0, num_frames=sizes.frames, size=sizes.size)[0] for task in TASKS
    ]
    texts = (
        PROMPT_WORDS
        + template_texts()
        + [s.question for s in samples]
        + [c for s in samples for c in s.candidates]
    )
    tokenizer = build_word_tokenizer(texts)
    torch.manual_seed(0)
    model = TCLlavaForConditionalGeneration(demo_config(sizes, tokenizer, "plain"))
    save_checkpoint(model, tokenizer, sizes, path / "model")
    videos = []
    for task, sample in zip(TASKS, samples, strict=True):
        video = path / f"{task}.mp4"
        write_mp4(video, sample.frames, fps=4)
        videos.append((video, f"{sample.question} Options: {', '.join(sample.candidates)}."))
    return videos


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_by_one(model, requests: list[tuple[Path, str]], max_tokens: int) -> dict:
    """The baseline: ``model.chat`` for each request in turn, in this process."""

    class FirstToken:
        def __init__(self) -> None:
            self.calls, self.first = 0, None

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2 and self.first is None:  # the first call carries the prompt
                self.first = time.perf_counter()

        def end(self) -> None:
            pass

    answers, latencies, ttfts = [], [], []
    start = time.perf_counter()
    for video, question in requests:
        begin = time.perf_counter()
        streamer = FirstToken()
        answers.append(
            model.chat(video, question, max_new_tokens=max_tokens, do_sample=False, streamer=streamer)
        )
        latencies.append(time.perf_counter() - begin)
        ttfts.append((streamer.first or time.perf_counter()) - begin)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "answers": answers, "latencies": latencies, "ttfts": ttfts}


def ask(client, url: str, body: dict) -> tuple[str, float, float]:
    """One streamed request: (answer, latency, time to first content)."""
    begin = time.perf_counter()
    first = None
    text = ""
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            content = choices[0].get("delta", {}).get("content")
            if content:
                first = first or time.perf_counter()
                text += content
    end = time.perf_counter()
    return text, end - begin, (first or end) - begin


def served(url: str, bodies: list[dict], clients: list) -> dict:
    """One thread per client (an open ``httpx.Client``, made before the clock starts: building one loads
    CA certificates, tens of ms) shares the requests; each sends its next when its last is answered."""
    answers: list[str | None] = [None] * len(bodies)
    latencies: list[float] = [0.0] * len(bodies)
    ttfts: list[float] = [0.0] * len(bodies)
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()

    def client_loop(client) -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            answers[i], latencies[i], ttfts[i] = ask(client, url, bodies[i])

    threads = [threading.Thread(target=client_loop, args=(client,)) for client in clients]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall_s": time.perf_counter() - start, "answers": answers, "latencies": latencies, "ttfts": ttfts}


class Server:
    """`tcllava serve --no-page --port 0` in a subprocess; its log lines are kept (for the batch sizes)."""

    def __init__(self, model: Path, max_batch: int) -> None:
        command = [
            sys.executable,
            "-m",
            "tcllava",
            "serve",
            "--no-page",
            "--port",
            "0",
            "--model",
            f"bench={model}",
        ]
        command += ["--max-batch", str(max_batch), "--max-frames", "16", "--threads", str(THREADS)]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.url = None
        ready = threading.Event()

        def read() -> None:
            for line in self.process.stderr:
                self.lines.append(line.rstrip())
                if "listening on " in line:
                    self.url = line.split("listening on ")[1].split()[0]
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(600) or self.url is None:
            raise RuntimeError("the server did not start:\n" + "\n".join(self.lines[-20:]))

    def batches_since(self, mark: int) -> list[int]:
        return [int(x.split("batch=")[1].split()[0]) for x in self.lines[mark:] if " batch=" in x]

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32, help="requests per run (the same set each run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import httpx
    import torch

    from tcllava.model import load

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory(prefix="tcllava-bench-serve-") as folder:
        videos = build_model(Path(folder))
        requests = [videos[i % len(videos)] for i in range(args.requests)]
        bodies = [
            {
                "model": "bench",
                "temperature": 0,
                "max_tokens": args.max_tokens,
                "stream": True,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "video_url",
                                "video_url": {
                                    "url": "data:video/mp4;base64,"
                                    + base64.b64encode(v.read_bytes()).decode()
                                },
                            },
                            {"type": "text", "text": q},
                        ],
                    }
                ],
            }
            for v, q in requests
        ]
        model, _ = load(Path(folder) / "model")
        server = Server(Path(folder) / "model", max_batch=max(CLIENTS))
        pool = [httpx.Client() for _ in range(max(CLIENTS))]
        try:
            served(server.url, bodies[: max(CLIENTS)], pool)  # warm-up of both sides, connections opened
            one_by_one(model, requests[:2], args.max_tokens)
            runs: dict[str, list[dict]] = {"one_by_one": [], **{str(c): [] for c in CLIENTS}}
            for repeat in range(args.repeats):
                runs["one_by_one"].append(one_by_one(model, requests, args.max_tokens))
                for clients in CLIENTS:
                    mark = len(server.lines)
                    run = served(server.url, bodies, pool[:clients])
                    time.sleep(0.2)  # the last log lines
                    batches = server.batches_since(mark)
                    run["mean_batch"] = statistics.mean(batches) if batches else 0.0
                    runs[str(clients)].append(run)
                    print(f"repeat {repeat + 1}: {clients} clients {run['wall_s']:.2f} s", file=sys.stderr)
                print(
                    f"repeat {repeat + 1}: one by one {runs['one_by_one'][-1]['wall_s']:.2f} s",
                    file=sys.stderr,
                )
        finally:
            for client in pool:
                client.close()
            server.close()

    reference = runs["one_by_one"][0]["answers"]
    equal = all(run["answers"] == reference for group in runs.values() for run in group)
    baseline = [args.requests / run["wall_s"] for run in runs["one_by_one"]]
    rows = {"one_by_one": _row(runs["one_by_one"], args.requests, baseline)}
    for clients in CLIENTS:
        rows[str(clients)] = _row(runs[str(clients)], args.requests, baseline)
    result = {
        "benchmark": "serve",
        "model": "random TC-LLaVA, demo size: 64 px, 8 frames x 16 visual tokens, LLM 4 layers x 128",
        "requests_per_run": args.requests,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "greedy_answers_equal_one_by_one": equal,
        "rows": rows,
        "machine": {
            "python": platform.python_version(),
            "cpus": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "serve.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if equal else 1


def _row(runs: list[dict], requests: int, baseline: list[float]) -> dict:
    """Per run: throughput (and its ratio to the baseline run of the same repeat), latency and TTFT."""
    throughput = [requests / run["wall_s"] for run in runs]
    return {
        "throughput_rps": summary(throughput),
        "x_one_by_one": summary([t / b for t, b in zip(throughput, baseline, strict=True)]),
        "latency_p50_s": summary([percentile(run["latencies"], 0.5) for run in runs]),
        "latency_p95_s": summary([percentile(run["latencies"], 0.95) for run in runs]),
        "ttft_p50_s": summary([percentile(run["ttfts"], 0.5) for run in runs]),
        "ttft_p95_s": summary([percentile(run["ttfts"], 0.95) for run in runs]),
        "mean_batch": summary([run.get("mean_batch", 1.0) for run in runs]),
    }


def markdown(result: dict) -> str:
    def cell(stats: dict, digits: int = 2) -> str:
        return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"

    lines = [
        "| clients | req/s | x one by one | p50 latency s | p95 latency s | p50 TTFT s | p95 TTFT s | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["rows"].items():
        label = "one by one (model.chat)" if name == "one_by_one" else f"{name} (server)"
        lines.append(
            f"| {label} | {cell(row['throughput_rps'])} | {cell(row['x_one_by_one'])} | {cell(row['latency_p50_s'], 3)} "
            f"| {cell(row['latency_p95_s'], 3)} | {cell(row['ttft_p50_s'], 3)} | {cell(row['ttft_p95_s'], 3)} "
            f"| {cell(row['mean_batch'], 1)} |"
        )
    lines += [
        "",
        f"Median (min-max) over {result['repeats']} repeats of {result['requests_per_run']} greedy requests "
        f"(at most {result['max_tokens']} new tokens) on the {result['model']}; CPU, {result['machine']['cpus']} threads.",
        f"Every served answer equals the one-by-one answer: {result['greedy_answers_equal_one_by_one']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
