"""Open-ended QA and Video-ChatGPT scoring against a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tcllava.eval import EvalRun, evaluate
from tcllava.eval.judge import JUDGE_PROMPTS, Judge, JudgeError, parse_judgement
from tcllava.video import write_video


class FakeJudgeServer:
    """Answers /v1/chat/completions with `reply(body)`; the first `fail_first` calls get HTTP 500."""

    def __init__(self, reply, fail_first: int = 0) -> None:
        self.requests: list[tuple[dict, dict]] = []
        self.fail_first = fail_first
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.requests.append((body, dict(self.headers)))
                    failing = len(server.requests) <= server.fail_first
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                if failing:
                    self.send_error(500, "overloaded")
                    return
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply(body)}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, *args) -> None:
                pass

        lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeJudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Scripted:
    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def generate(self, clips, prompts):
        return [next(a for q, a in self.answers.items() if q in p.user) for p in prompts]


def video(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, np.zeros((16, 32, 32, 3), np.uint8), 8)


def qa_reply(body: dict) -> str:
    """Judge 'yes' with score 4 when the predicted answer contains the reference, else 'no', 1."""
    user = body["messages"][1]["content"]
    answer = user.split("Correct Answer: ")[1].split("\n")[0]
    predicted = user.split("Predicted Answer: ")[1].split("\n")[0]
    return "{'pred': 'yes', 'score': 4}" if answer in predicted else "{'pred': 'no', 'score': 1}"


def test_open_qa_judge_request_parsing_identity_and_resume(tmp_path, monkeypatch) -> None:
    data = tmp_path / "msvd"
    video(data / "videos" / "vid1.avi")
    video(data / "videos" / "vid2.avi")
    rows = [
        {"video": "vid1", "question": "what is the man doing?", "answer": "cooking", "question_id": "q1"},
        {"video": "vid1", "question": "who is in the kitchen?", "answer": "man", "question_id": "q2"},
        {"video": "vid2", "question": "what animal runs?", "answer": "dog", "question_id": "q3"},
        {"video": "nowhere", "question": "what is lost?", "answer": "video", "question_id": "q4"},
    ]
    (data / "test_qa.json").write_text(json.dumps(rows))
    predictor = Scripted({"man doing": "he is cooking pasta", "kitchen": "nobody", "animal": "a dog runs"})

    with FakeJudgeServer(qa_reply, fail_first=1) as server:
        monkeypatch.setenv("TCLLAVA_JUDGE_URL", server.url)
        monkeypatch.setenv("TCLLAVA_JUDGE_MODEL", "judge-7b")
        monkeypatch.setenv("TCLLAVA_JUDGE_API_KEY", "sk-test")
        judge = Judge.from_env(backoff=0.01)
        res = evaluate(
            predictor, EvalRun("msvd-qa", data, tmp_path / "out", num_workers=0, judge_workers=1), judge
        )

        qa = res["metrics"]["criteria"]["qa"]
        assert qa == {
            "judged": 3,
            "judge_errors": 0,
            "score": 3.0,
            "yes": 2,
            "no": 1,
            "accuracy": pytest.approx(200 / 3),
        }
        assert res["metrics"]["n"] == 4 and res["metrics"]["errors"] == 1
        assert len(server.requests) == 4  # one HTTP 500, retried, then three judgements

        body, headers = server.requests[-1]
        assert body["model"] == "judge-7b" and body["temperature"] == 0.0
        assert body["messages"][0] == {"role": "system", "content": JUDGE_PROMPTS["qa"]["system"]}
        assert headers["Authorization"] == "Bearer sk-test"
        users = sorted(b["messages"][1]["content"] for b, _ in server.requests[1:])
        assert users[0].startswith(
            "Please evaluate the following video-based question-answer pair:\n\n"
            "Question: what animal runs?\nCorrect Answer: dog\nPredicted Answer: a dog runs\n\n"
            "Provide your evaluation only as a yes/no and score"
        )

        saved = json.loads((tmp_path / "out" / "results.json").read_text())
        assert saved["judge"]["url"] == server.url + "/chat/completions"
        assert saved["judge"]["model"] == "judge-7b" and "sk-test" not in json.dumps(saved)
        assert saved["judge"]["prompts"]["qa"] == JUDGE_PROMPTS["qa"]
        assert saved["protocol"]["user_template"] == "<video>\n{question}"

        # Rerun: predictions and judgements are reused, the judge is not called again.
        again = evaluate(predictor, EvalRun("msvd-qa", data, tmp_path / "out", num_workers=0), judge)
        assert len(server.requests) == 4 and again["metrics"] == res["metrics"]


def test_videochatgpt_criteria_scores(tmp_path) -> None:
    data = tmp_path / "vcg"
    video(data / "Test_Videos" / "v_abc.mp4")
    (data / "generic_qa.json").write_text(
        json.dumps(
            [
                {"video_name": "v_abc", "Q": "Describe the video.", "A": "A man cooks."},
                {"video_name": "v_abc", "Q": "What happens?", "A": "Cooking."},
            ]
        )
    )
    (data / "temporal_qa.json").write_text(
        json.dumps([{"video_name": "v_abc", "Q": "What first?", "A": "Eggs."}])
    )
    (data / "consistency_qa.json").write_text(
        json.dumps([{"video_name": "v_abc", "Q1": "Who cooks?", "Q2": "Who is cooking?", "A": "A man."}])
    )
    scores = {
        "factual accuracy": 3,
        "detail orientation": 2,
        "contextual understanding": 5,
        "temporal understanding": 1,
        "consistency of": 4,
    }

    def reply(body: dict) -> str:
        system = body["messages"][0]["content"]
        score = next(v for k, v in scores.items() if f"evaluating the {k}" in system)
        return f"{{''score': {score}}}" if score == 5 else f"{{'score': {score}}}"

    predictor = Scripted(
        {
            "Describe": "a man cooking",
            "What happens": "cooking",
            "What first": "eggs",
            "Who cooks": "the chef",
            "Who is cooking": "a man",
        }
    )
    with FakeJudgeServer(reply) as server:
        res = evaluate(
            predictor,
            EvalRun("videochatgpt", data, tmp_path / "out", num_workers=0),
            Judge(server.url, "judge"),
        )
        criteria = res["metrics"]["criteria"]
        assert {k: v["score"] for k, v in criteria.items()} == {
            "correctness": 3.0,
            "detail": 2.0,
            "context": 5.0,
            "temporal": 1.0,
            "consistency": 4.0,
        }
        assert criteria["correctness"]["judged"] == 2 and criteria["consistency"]["judged"] == 1
        consistency = next(
            b for b, _ in server.requests if "evaluating the consistency" in b["messages"][0]["content"]
        )
        user = consistency["messages"][1]["content"]
        assert "Question 1: Who cooks?\nQuestion 2: Who is cooking?\nCorrect Answer: A man.\n" in user
        assert "Predicted Answer to Question 1: the chef\nPredicted Answer to Question 2: a man\n" in user
        assert len(server.requests) == 2 * 3 + 1 + 1


def test_judge_failures_raise_clear_errors(monkeypatch) -> None:
    with FakeJudgeServer(lambda body: "I refuse to answer in the format.") as server:
        judge = Judge(server.url + "/chat/completions", "j", max_retries=2, backoff=0.0)
        with pytest.raises(JudgeError, match="no score"):
            judge.judge("qa", question="q", answer="a", prediction="p")
        assert len(server.requests) == 3
    monkeypatch.delenv("TCLLAVA_JUDGE_URL", raising=False)
    with pytest.raises(JudgeError, match="TCLLAVA_JUDGE_URL"):
        Judge.from_env()


@pytest.mark.parametrize(
    ("reply", "verdict", "expected"),
    [
        ("{'pred': 'yes', 'score': 4.8}", True, {"pred": "yes", "score": 4}),
        ("Sure! {'pred': 'no', 'score': 0}", True, {"pred": "no", "score": 0}),
        ('{"pred": "Yes", "score": "5"}', True, {"pred": "yes", "score": 5}),
        ("{''score': 3}", False, {"score": 3}),
        ("score: 2", False, {"score": 2}),
    ],
)
def test_parse_judgement(reply: str, verdict: bool, expected: dict) -> None:
    assert parse_judgement(reply, want_verdict=verdict) == expected


def test_parse_judgement_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_judgement("great answer", want_verdict=False)
    with pytest.raises(ValueError):
        parse_judgement("{'score': 3}", want_verdict=True)


def closed_port() -> int:
    """A local port nothing listens on (bound to find a free one, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msvd(data: Path, n: int) -> None:
    video(data / "videos" / "vid1.avi")
    rows = [
        {"video": "vid1", "question": f"what is {i}?", "answer": "x", "question_id": f"q{i}"}
        for i in range(n)
    ]
    (data / "test_qa.json").write_text(json.dumps(rows))


class NoGeneration(Scripted):
    def generate(self, clips, prompts):
        raise AssertionError("generation must not start with the judge down")


def test_dead_judge_endpoint_fails_before_any_generation(tmp_path, monkeypatch, capsys) -> None:
    """The endpoint is checked first: a dead judge costs one refused connection, not ~62 s of retries per
    question followed by `score None` and exit 0."""
    from tcllava.cli import main

    msvd(tmp_path / "msvd", 3)
    made = []

    class FakeModelPredictor(NoGeneration):
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            made.append(cls({}))
            return made[-1]

    module = types.ModuleType("tcllava.eval.model_predictor")
    module.ModelPredictor = FakeModelPredictor
    monkeypatch.setitem(sys.modules, "tcllava.eval.model_predictor", module)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    argv = [
        "eval",
        "msvd-qa",
        "--model",
        "m",
        "--data",
        str(tmp_path / "msvd"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main([*argv, "--num-workers", "0", "--judge-url", url, "--judge-model", "j"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tcllava eval: judge endpoint {url}/chat/completions is not reachable (")
    assert "--judge-url" in err and len(err.splitlines()) == 1
    assert made == []  # refused before the model is even loaded

    # The Python API checks too, before generating.
    run = EvalRun("msvd-qa", tmp_path / "msvd", tmp_path / "api", num_workers=0)
    with pytest.raises(JudgeError, match="is not reachable"):
        evaluate(NoGeneration({}), run, Judge(url, "j"))

    # A URL that cannot be one is a usage error.
    assert main([*argv, "--judge-url", "localhost:8000", "--judge-model", "j"]) == 2
    assert "is not an http(s) URL" in capsys.readouterr().err


def test_judge_stops_after_consecutive_failures(tmp_path) -> None:
    """The endpoint answers but every judgement fails (HTTP 500): the run stops after
    `judge_max_failures` in a row, keeps what it logged, and says why."""
    msvd(tmp_path / "msvd", 6)
    run = EvalRun(
        "msvd-qa", tmp_path / "msvd", tmp_path / "out", num_workers=0, judge_workers=1, judge_max_failures=2
    )
    with FakeJudgeServer(qa_reply, fail_first=10**6) as server:
        judge = Judge(server.url, "j", max_retries=1, backoff=0.0)
        with pytest.raises(
            JudgeError, match=r"stopped after 2 failed judgements in a row \(last: judge .*HTTP 500"
        ):
            evaluate(Scripted({"what": "x"}), run, judge)
        # Two questions tried twice each, plus at most the one the worker had already picked up; never
        # all six.
        assert 2 * 2 <= len(server.requests) <= 3 * 2
    logged = (tmp_path / "out" / "judgements.jsonl").read_text().splitlines()[1:]
    assert [json.loads(x)["error"] is not None for x in logged] == [True, True]
    assert not (tmp_path / "out" / "results.json").exists()


def test_scattered_judge_failures_over_the_threshold_fail_the_run(tmp_path) -> None:
    """1 of 3 judgements failing (not in a row) is scored, written, and flagged over max_error_rate."""
    msvd(tmp_path / "msvd", 3)
    run = EvalRun("msvd-qa", tmp_path / "msvd", tmp_path / "out", num_workers=0, judge_workers=1)
    with FakeJudgeServer(qa_reply, fail_first=1) as server:
        res = evaluate(Scripted({"what": "x"}), run, Judge(server.url, "j", max_retries=0))
    assert res["metrics"]["criteria"]["qa"]["judge_errors"] == 1
    assert res["failures"]["judgements_failed"] == 1 and res["failures"]["judgements"] == 3
    assert "1 of 3 judgements failed" in res["failures"]["message"]
    assert str(tmp_path / "out" / "judgements.jsonl") in res["failures"]["message"]
    relaxed = EvalRun("msvd-qa", tmp_path / "msvd", tmp_path / "out2", num_workers=0, max_error_rate=0.5)
    with FakeJudgeServer(qa_reply, fail_first=1) as server:
        assert (
            evaluate(Scripted({"what": "x"}), relaxed, Judge(server.url, "j", max_retries=0))["failures"][
                "message"
            ]
            is None
        )
