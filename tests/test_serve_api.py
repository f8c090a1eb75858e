"""`tcllava serve`'s OpenAI-compatible API, driven by the official openai client on a local port."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest
import torch

from serve_fixtures import (
    QUESTIONS,
    data_url,
    reference_answer,
    serving,
    tiny_pair,
    video_message,
    write_clip,
)
from tcllava.cli import main as cli_main
from tcllava.model import load


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("serve_api")


@pytest.fixture(scope="module")
def models(root):
    return tiny_pair(root)


@pytest.fixture(scope="module")
def clips(root):
    media = root / "media"
    media.mkdir()
    return [write_clip(media / f"clip{i}.mp4", seed=10 + i) for i in range(4)]


@pytest.fixture(scope="module")
def server(models, root, clips):
    with serving(models, media_dir=root / "media", max_frames=8, max_video_mb=1) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    url, _, _ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def references(models):
    """Independently loaded copies of the served models: what `tcllava chat` answers."""
    return {name: load(path)[0] for name, path in models.items()}


def _ask(client, model, url, question, max_tokens=6, **extra):
    return client.chat.completions.create(
        model=model,
        messages=[video_message(url, question)],
        temperature=0,
        max_tokens=max_tokens,
        extra_body=extra or None,
    )


def test_models_are_listed_and_health_is_ok(server, client):
    url, _, _ = server
    assert sorted(m.id for m in client.models.list()) == ["tc", "vanilla"]
    assert client.models.retrieve("vanilla").id == "vanilla"
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["models"] == ["tc", "vanilla"]


@pytest.mark.parametrize("name", ["tc", "vanilla"])
def test_plain_and_streamed_answers_equal_tcllava_chat(server, client, references, clips, name):
    clip = clips[0]
    want = references[name].chat(clip, QUESTIONS[0], max_new_tokens=6, do_sample=False)
    assert want  # a non-empty answer, so that equality means something
    plain = _ask(client, name, data_url(clip), QUESTIONS[0])
    assert plain.choices[0].message.content == want
    by_path = _ask(client, name, clip.as_uri(), QUESTIONS[0])  # file:// inside --media-dir
    assert by_path.choices[0].message.content == want
    chunks = list(
        client.chat.completions.create(
            model=name,
            messages=[video_message(data_url(clip), QUESTIONS[0])],
            temperature=0,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want and chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    # usage: the prompt as the processor counts it (visual tokens included), the answer's tokens
    processor = references[name].processor
    pieces = processor.render(processor.question(QUESTIONS[0]))
    assert plain.usage.prompt_tokens == len(processor.token_ids(pieces, [processor.num_frames])[0])
    assert (plain.choices[0].finish_reason, plain.usage.completion_tokens) == ("length", 6)
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens


def test_chat_cli_prints_the_served_answer(client, models, clips, capsys):
    served = _ask(client, "tc", data_url(clips[1]), QUESTIONS[1], frames=3).choices[0].message.content
    code = cli_main(
        [
            "chat",
            "--model",
            str(models["tc"]),
            "--video",
            str(clips[1]),
            "--frames",
            "3",
            "--max-new-tokens",
            "6",
            QUESTIONS[1],
        ]
    )
    assert code == 0 and capsys.readouterr().out.strip() == served


def test_multi_turn_with_a_system_message_and_an_image(client, references, clips, tmp_path):
    from PIL import Image

    image = tmp_path / "still.png"
    Image.fromarray(torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8).numpy()).save(image)
    messages = [
        {"role": "system", "content": "answer in colours ."},
        video_message(data_url(clips[2]), QUESTIONS[0]),
        {"role": "assistant", "content": "red ball"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and here ?"},
                {"type": "image_url", "image_url": {"url": data_url(image, "image/png")}},
            ],
        },
    ]
    got = client.chat.completions.create(
        model="tc", messages=messages, temperature=0, max_tokens=5, extra_body={"frames": 2}
    )
    # the reference: the same conversation rendered by the processor and generated by model.generate
    from tcllava.video import read_video

    model = references["tc"]
    conversation = [
        {"role": "system", "content": "answer in colours ."},
        {"role": "user", "content": f"<video>\n{QUESTIONS[0]}"},
        {"role": "assistant", "content": "red ball"},
        {"role": "user", "content": "and here ?\n<image>"},
    ]
    media = [read_video(clips[2], 2).frames, read_video(image, 1).frames]
    assert got.choices[0].message.content == reference_answer(model, conversation, media, 5)
    batch = model.processor([conversation], [media])
    assert got.usage.prompt_tokens == batch["input_ids"].shape[1]


def test_a_question_without_video_is_answered_from_text(client, references):
    got = client.chat.completions.create(
        model="vanilla", messages=[{"role": "user", "content": QUESTIONS[1]}], temperature=0, max_tokens=5
    )
    model = references["vanilla"]
    assert got.choices[0].message.content == reference_answer(
        model, [{"role": "user", "content": QUESTIONS[1]}], [], 5
    )


def test_concurrent_requests_are_batched_and_each_equals_its_solo_answer(server, client, references, clips):
    _, service, lines = server
    engine = service.engine("tc")
    settings = [(clips[i], QUESTIONS[i], 4 - i % 2, 3 + i) for i in range(4)]  # frames and lengths differ
    solo = [
        references["tc"].chat(c, q, num_frames=f, max_new_tokens=n, do_sample=False)
        for c, q, f, n in settings
    ]
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        clip, question, frames, tokens = settings[i]
        answers[i] = (
            _ask(client, "tc", data_url(clip), question, tokens, frames=frames).choices[0].message.content
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    with engine.paused():  # the requests pile up and then run as one batch
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while engine.pending() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(60)
    assert engine.batch_sizes[-1] == 4
    assert [answers[i] for i in range(4)] == solo
    logged = [line for line in lines if "batch=4" in line]
    assert len(logged) == 4 and all(
        "model=tc" in x and "prompt_tokens=" in x and "new_tokens=" in x for x in logged
    )
    assert {x.split("frames=")[1].split()[0] for x in logged} == {"3", "4"}


def test_sampling_options_and_stop_sequences(client, clips):
    url = data_url(clips[3])
    seeded = [
        client.chat.completions.create(
            model="tc",
            messages=[video_message(url, "what ?")],
            temperature=1.2,
            top_p=0.9,
            seed=5,
            max_tokens=8,
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]
    full = _ask(client, "tc", url, QUESTIONS[0], max_tokens=8).choices[0].message.content
    words = full.split()
    assert len(words) >= 3
    stop = " " + words[2]
    cut = client.chat.completions.create(
        model="tc", messages=[video_message(url, QUESTIONS[0])], temperature=0, max_tokens=8, stop=[stop]
    )
    assert cut.choices[0].message.content == full[: full.index(stop)].strip()
    assert cut.choices[0].finish_reason == "stop"


def test_a_stream_whose_client_leaves_stops_generating(server, clips):
    url, service, lines = server
    body = {
        "model": "vanilla",
        "messages": [video_message(data_url(clips[0]), QUESTIONS[0])],
        "temperature": 0,
        "max_tokens": 900,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        contents = (line for line in response.iter_lines() if '"content": "' in line and '""' not in line)
        for _ in range(3):
            next(contents)  # three tokens in: the answer is being generated; now hang up
    engine = service.engine("vanilla")
    deadline = time.monotonic() + 120
    while engine.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.cancelled == 1  # dropped before its batch, or ended at its next token: not run to 900
    assert any("model=vanilla status=499" in line for line in lines)


def _status(call) -> tuple[int, str]:
    with pytest.raises(openai.APIStatusError) as error:
        call()
    return error.value.status_code, error.value.body["message"]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, clips, root, tmp_path):
    url, _, _ = server
    good = data_url(clips[0])
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(clips[0].read_bytes())
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("hello")
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (2 * 2**20))
    cases = {
        "no messages": (lambda: client.chat.completions.create(model="tc", messages=[]), 400, "messages"),
        "unknown model": (lambda: _ask(client, "nope", good, "q"), 404, "'nope' is not served"),
        "no url": (
            lambda: client.chat.completions.create(
                model="tc", messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}]
            ),
            400,
            "messages[0].content[0].video_url.url: Field required",
        ),
        "not a video": (lambda: _ask(client, "tc", data_url(not_video), "q"), 400, "not a readable video"),
        "outside media dir": (lambda: _ask(client, "tc", outside.as_uri(), "q"), 403, "outside the media"),
        "dot dot": (lambda: _ask(client, "tc", f"file://{root}/media/../../x.mp4", "q"), 403, "outside"),
        "too large": (lambda: _ask(client, "tc", data_url(big), "q"), 413, "larger than"),
        "too many frames": (lambda: _ask(client, "tc", good, "q", frames=9), 400, "at most 8"),
        "n > 1": (
            lambda: client.chat.completions.create(model="tc", messages=[video_message(good, "q")], n=2),
            400,
            "n=1",
        ),
        "bad temperature": (
            lambda: client.chat.completions.create(
                model="tc", messages=[video_message(good, "q")], temperature=3
            ),
            400,
            "temperature",
        ),
        "bad sampling": (lambda: _ask(client, "tc", good, "q", sampling="sideways"), 400, "sampling"),
        "remote url": (lambda: _ask(client, "tc", "https://example.com/v.mp4", "q"), 400, "fetches nothing"),
    }
    for case, (call, status, words) in cases.items():
        got, message = _status(call)
        assert (got, words in message) == (status, True), (case, got, message)
    raw = httpx.post(
        f"{url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    huge = httpx.post(f"{url}/v1/chat/completions", content=b"x" * (3 * 2**20))
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
    assert httpx.get(f"{url}/v1/nothing").status_code == 404
    assert _ask(client, "tc", good, QUESTIONS[0]).choices[0].message.content  # still serving


def test_api_key_is_required_on_v1_when_set(models):
    with serving({"tc": models["tc"]}, api_key="s3cret") as (url, _, _):
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = httpx.get(f"{url}/v1/models", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        assert [m.id for m in openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret").models.list()] == ["tc"]
        assert httpx.get(f"{url}/health").status_code == 200


def test_serve_command_refuses_bad_flags_in_one_line(models, tmp_path, capsys):
    assert cli_main(["serve", "--no-page", "--model", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert (
        cli_main(["serve", "--no-page", "--model", f"a={models['tc']}", "--model", f"a={models['vanilla']}"])
        == 2
    )
    assert "used twice" in capsys.readouterr().err
    assert (
        cli_main(["serve", "--no-page", "--model", str(models["tc"]), "--media-dir", str(tmp_path / "none")])
        == 2
    )
    assert "--media-dir" in capsys.readouterr().err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        assert cli_main(["serve", "--model", str(models["tc"]), "--port", str(port), "--no-page"]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    finally:
        busy.close()
