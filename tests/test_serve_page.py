"""`tcllava serve`'s page in a real headless Chromium (Debian's, driven by Playwright), and its compare
view through gradio_client.

Set TCLLAVA_SERVE_SCREENSHOT=PATH to save a screenshot of the answered page (docs/serve_page.png).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: nothing goes out

from serve_fixtures import QUESTIONS, reference_answer, serving, tiny_pair, write_clip
from tcllava.model import load
from tcllava.video import read_video

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("serve_page")


@pytest.fixture(scope="module")
def models(root):
    return tiny_pair(root)


@pytest.fixture(scope="module")
def server(models):
    with serving(models, page=True, max_frames=8) as running:
        yield running


@pytest.fixture
def browser_page(tmp_path):
    from playwright import sync_api

    if not Path(CHROMIUM).exists():
        pytest.fail("no chromium at /usr/bin/chromium: apt-get install chromium (make test does)")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1100},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def test_page_upload_ask_and_see_the_answer_frames_and_attention(server, browser_page, models, root):
    url, service, lines = server
    clip = root / "upload.mp4"  # a synthetic benchmark video (16 frames at 4 fps), uploaded as a user would
    clip.write_bytes(service.examples[0].video.read_bytes())
    want = load(models["tc"])[0].chat(clip, QUESTIONS[0], max_new_tokens=12, do_sample=False)
    page = browser_page
    page.goto(url)
    page.locator("#video input[type=file]").set_input_files(str(clip))
    frames = page.locator("#frames img")
    frames.nth(3).wait_for(timeout=60_000)
    assert frames.count() == 4  # the model's 4 frames, the middles of 4 segments, with their times
    captions = page.locator("#frames").inner_text()
    assert all(f"#{i + 1} · {t} s" in captions for i, t in enumerate(["0.50", "1.50", "2.50", "3.50"]))
    page.locator("#max-new input[type=number]").fill("12")
    page.locator("#max-new input[type=number]").press("Enter")
    page.locator("#question textarea").fill(QUESTIONS[0])
    page.locator("#send").click()
    page.locator("#shares img").wait_for(timeout=60_000)  # drawn once the answer is complete
    bot = page.locator("#chatbot .message.bot, #chatbot [data-testid='bot']")
    assert bot.last.inner_text().strip() == want
    assert page.locator("#masks img").count() == 1 and page.locator("#positions img").count() == 1
    assert "Answer: 12 tokens" in page.locator("#attention-info").inner_text()
    assert any(line.startswith("page chat model=tc status=200 frames=4") for line in lines)

    # a second turn: the whole conversation so far goes with it
    model = load(models["tc"])[0]
    conversation = [
        {"role": "user", "content": f"<video>\n{QUESTIONS[0]}"},
        {"role": "assistant", "content": want},
        {"role": "user", "content": QUESTIONS[2]},
    ]
    second = reference_answer(model, conversation, [read_video(clip, 4).frames], 12)
    page.locator("#question textarea").fill(QUESTIONS[2])
    page.locator("#send").click()
    page.wait_for_function(
        "want => { const m = document.querySelectorAll('#chatbot .message.bot');"
        " return m.length === 2 && m[1].innerText.trim() === want; }",
        arg=second,
        timeout=60_000,
    )
    assert bot.first.inner_text().strip() == want
    if os.environ.get("TCLLAVA_SERVE_SCREENSHOT"):
        page.locator("#shares img").wait_for()
        page.screenshot(path=os.environ["TCLLAVA_SERVE_SCREENSHOT"], full_page=True)

    bad = root / "broken.mp4"
    bad.write_text("this is not a video")
    page.locator("#video button[aria-label='Clear']").click()
    page.locator("#video input[type=file]").set_input_files(str(bad))
    status = page.locator("#status")
    status.get_by_text("not a readable video").wait_for(timeout=60_000)
    assert "Cannot use this file: the uploaded video" in status.inner_text()
    assert "/tmp" not in status.inner_text()


def test_page_examples_are_synthetic_videos_with_their_questions(server, browser_page):
    url, service, _ = server
    assert len(service.examples) >= 3 and all(e.video.stat().st_size > 0 for e in service.examples)
    page = browser_page
    page.goto(url)
    page.locator("#example input").click()
    page.get_by_role("option").first.click()
    page.locator("#frames img").nth(3).wait_for(timeout=60_000)
    assert page.locator("#question textarea").input_value() == service.examples[0].question


def test_compare_view_answers_with_every_model_side_by_side(server, models, root):
    from gradio_client import Client, handle_file

    url, _, _ = server
    clip = write_clip(root / "compare.mp4", seed=22)
    want = [
        load(models[n])[0].chat(clip, QUESTIONS[1], num_frames=3, max_new_tokens=6) for n in ("tc", "vanilla")
    ]
    assert want[0] != want[1]  # so that the columns cannot be mixed up unnoticed
    client = Client(url, verbose=False)
    try:
        got = client.predict(handle_file(str(clip)), QUESTIONS[1], 3, "middle", 6, api_name="/compare")
    finally:
        client.close()
    assert list(got) == [*want, ""]


def test_with_an_api_key_the_page_asks_for_it_as_its_password(models):
    import httpx

    with (
        serving({"tc": models["tc"]}, page=True, api_key="k3y") as (url, _, _),
        httpx.Client(base_url=url) as web,
    ):
        assert web.get("/config").status_code == 401
        assert web.post("/login", data={"username": "me", "password": "wrong"}).status_code == 400
        assert web.post("/login", data={"username": "me", "password": "k3y"}).status_code == 200
        assert web.get("/config").status_code == 200
