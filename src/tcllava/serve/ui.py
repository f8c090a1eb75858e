"""The page at ``/`` (Gradio): chat with a video, compare the served models, and the attention panel.

Every answer goes through the same :class:`~tcllava.serve.service.Service` and engines as the API, so a
page user and API clients are batched together. Uploads are decoded on Gradio's request threads.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tcllava.serve import panels
from tcllava.serve.engine import Delta, Done, Failed
from tcllava.serve.media import MediaSource, read_media
from tcllava.serve.schema import SAMPLINGS, APIError
from tcllava.serve.service import ChatJob, Service, Turn

UPLOAD_LABEL = "the uploaded video"
CSS = "#status p { color: #b42318; font-weight: 600; }"


def _gallery(clip: Any) -> list[tuple[Any, str]]:
    """The sampled frames with their numbers and timestamps."""
    frames = clip.frames.numpy()
    return [(frames[i], f"#{i + 1} · {float(t):.2f} s") for i, t in enumerate(clip.timestamps)]


def _history(turns: list[list[str]]) -> list[dict[str, str]]:
    messages = []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def _job(model: str, video: str, turns: list[list[str]], question: str, **settings: Any) -> ChatJob:
    """The conversation so far as a chat job: the video goes with the first question, as in training."""
    source = MediaSource("video", UPLOAD_LABEL, path=Path(video))
    questions = [q for q, _ in turns] + [question]
    answers = [a for _, a in turns]
    chat = [Turn("user", [source, questions[0]])]
    for answer, asked in zip(answers, questions[1:], strict=True):
        chat += [Turn("assistant", [answer]), Turn("user", [asked])]
    return ChatJob(model=model, turns=chat, **settings)


class Page:
    """The page's handlers, bound to one service; figures go to a private temporary folder."""

    def __init__(self, service: Service, log: Callable[[str], None]) -> None:
        self.service = service
        self.log = log
        self.folder = Path(tempfile.mkdtemp(prefix="tcllava-page-"))
        atexit.register(shutil.rmtree, self.folder, True)

    def figures_folder(self) -> Path:
        """A new folder for one answer's figures; those of answers more than an hour old are removed
        (Gradio has copied them into its own cache by then)."""
        now = time.time()
        for old in self.folder.iterdir():
            if now - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        return self.folder / uuid.uuid4().hex

    def preview(self, video: str | None, frames: int, sampling: str):
        """The frames a question would see, or a readable message for a bad upload."""
        if not video:
            return [], ""
        source = MediaSource("video", UPLOAD_LABEL, path=Path(video))
        try:
            clip = read_media(source, int(frames), sampling, None, self.service.limits.decode_timeout)
        except APIError as e:
            return [], f"**Cannot use this file:** {e.message}"
        return _gallery(clip), ""

    def respond(
        self,
        question: str,
        turns: list[list[str]],
        video: str | None,
        model: str,
        frames: int,
        sampling: str,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
    ) -> Iterator[tuple]:
        """Streams (chat, turns, question box, frames, status, masks, positions, shares, info)."""
        import gradio as gr

        keep = gr.skip()
        question = (question or "").strip()
        if not question or not video:
            message = "Type a question first." if video else "Upload a video or pick an example first."
            yield keep, keep, keep, keep, f"**{message}**", keep, keep, keep, keep
            return
        start = time.perf_counter()
        settings = dict(
            frames=int(frames),
            sampling=sampling,
            temperature=float(temperature),
            top_p=float(top_p),
            max_tokens=int(max_new_tokens),
        )
        try:
            engine = self.service.engine(model)
            prepared, stream = self.service.start(_job(model, video, turns, question, **settings))
        except APIError as e:
            self.log(f"page chat model={model} status={e.status} error={e.message!r}")
            yield keep, keep, keep, keep, f"**Cannot answer:** {e.message}", keep, keep, keep, keep
            return
        folder = self.figures_folder()
        figures = panels.prompt_figures(engine.processor, prepared, folder)
        masks, positions = figures if figures else (None, None)
        config = engine.processor.config
        info = (
            f"Prompt: {prepared.prompt_tokens} tokens, {prepared.frames} frames "
            f"({config.tokens_per_frame} visual tokens per LLM frame); mask `{config.tc_attention.mask}`, "
            f"gamma {config.tc_attention.gamma:g}."
        )
        gallery = _gallery(prepared.clips[0])
        answer = ""
        chat = [*_history(turns), {"role": "user", "content": question}]
        yield chat, keep, "", gallery, "", masks, positions, None, info
        done: Done | None = None
        for event in stream:
            if isinstance(event, Delta):
                answer += event.text
                yield (
                    [*chat, {"role": "assistant", "content": answer}],
                    keep,
                    keep,
                    keep,
                    keep,
                    keep,
                    keep,
                    keep,
                    keep,
                )
            elif isinstance(event, Failed):
                self.log(f"page chat model={model} status=500 error={event.message!r}")
                yield keep, keep, keep, keep, f"**Failed:** {event.message}", keep, keep, keep, keep
                return
            else:
                done = event
        assert done is not None
        turns = [*turns, [question, done.text]]
        shares = engine.call(
            lambda: panels.frame_shares(engine.model, engine.processor, prepared, done.tokens)
        )
        shares_png = panels.plot_shares(shares, folder / "shares.png")
        seconds = time.perf_counter() - start
        self.log(
            f"page chat model={model} status=200 frames={prepared.frames} prompt_tokens={done.prompt_tokens} "
            f"new_tokens={done.completion_tokens} batch={done.batch_size} seconds={seconds:.3f}"
        )
        info += f" Answer: {done.completion_tokens} tokens in {seconds:.2f} s ({done.finish_reason})."
        yield _history(turns), turns, keep, keep, keep, keep, keep, shares_png, info

    def compare(self, video: str | None, question: str, frames: int, sampling: str, max_new_tokens: int):
        """The same video and question answered greedily by every model; streams the answers."""
        answers = [""] * len(self.service.names)
        question = (question or "").strip()
        if not video or not question:
            yield *answers, "**Give a video and a question.**"
            return
        streams = []
        for i, name in enumerate(self.service.names):
            job = _job(
                name,
                video,
                [],
                question,
                frames=int(frames),
                sampling=sampling,
                max_tokens=int(max_new_tokens),
            )
            try:
                streams.append((i, self.service.start(job)[1]))
            except APIError as e:
                answers[i] = f"Cannot answer: {e.message}"
        for i, stream in streams:
            for event in stream:
                if isinstance(event, Delta):
                    answers[i] += event.text
                elif isinstance(event, Failed):
                    answers[i] = f"Failed: {event.message}"
                else:
                    answers[i] = event.text
                yield *answers, ""
        self.log(f"page compare models={','.join(self.service.names)} frames={int(frames)}")
        yield *answers, ""


def build_page(service: Service, log: Callable[[str], None]):
    import gradio as gr

    page = Page(service, log)
    names = service.names
    examples = {example.label: example for example in service.examples}
    frames_default = service.default_frames(names[0])
    max_frames = service.limits.max_frames

    def pick(label: str | None):
        example = examples.get(label or "")
        return (str(example.video), example.question) if example else (gr.skip(), gr.skip())

    # uploads and drawn figures older than a day are deleted every hour (and all at a restart)
    with gr.Blocks(title="tcllava serve", delete_cache=(3600, 86400)) as blocks:
        gr.Markdown(
            f"## tcllava: chat with a video\nModels: {', '.join(f'`{n}`' for n in names)}. "
            "The same engine answers the OpenAI-compatible API at `/v1/chat/completions`."
        )
        with gr.Tab("Chat"):
            with gr.Row():
                with gr.Column(scale=2):
                    video = gr.Video(label="Video", sources=["upload"], elem_id="video", height=260)
                    example = gr.Dropdown(
                        list(examples), value=None, label="…or pick an example", elem_id="example"
                    )
                    gallery = gr.Gallery(
                        label="Sampled frames (number · time)", columns=6, height=230, elem_id="frames"
                    )
                    with gr.Accordion("Settings", open=True):
                        model = gr.Dropdown(names, value=names[0], label="Model", elem_id="model")
                        frames = gr.Slider(
                            1, max_frames, value=frames_default, step=1, label="Frames", elem_id="frames-n"
                        )
                        sampling = gr.Dropdown(list(SAMPLINGS), value="middle", label="Frame sampling")
                        temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0: greedy)")
                        top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
                        max_new = gr.Slider(
                            1, 1024, value=64, step=1, label="Max new tokens", elem_id="max-new"
                        )
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=340)
                    status = gr.Markdown(elem_id="status")
                    with gr.Row():
                        question = gr.Textbox(
                            placeholder="Ask about the video…", show_label=False, elem_id="question", scale=5
                        )
                        send = gr.Button("Send", variant="primary", elem_id="send", scale=1)
                    clear = gr.Button("New chat", elem_id="clear", size="sm")
                    with gr.Accordion("Attention", open=True):
                        info = gr.Markdown(elem_id="attention-info")
                        masks = gr.Image(
                            label="The four masks on this prompt",
                            type="filepath",
                            elem_id="masks",
                            show_label=False,
                        )
                        with gr.Row():
                            positions = gr.Image(
                                label="RoPE positions", type="filepath", elem_id="positions", show_label=False
                            )
                            shares = gr.Image(
                                label="Attention per frame",
                                type="filepath",
                                elem_id="shares",
                                show_label=False,
                            )
            turns = gr.State([])

            example.change(pick, example, [video, question], api_name=False)
            video.change(  # a new video starts a new chat
                lambda video, frames, sampling: (
                    *page.preview(video, frames, sampling),
                    [],
                    [],
                    None,
                    None,
                    None,
                    "",
                ),
                [video, frames, sampling],
                [gallery, status, turns, chatbot, masks, positions, shares, info],
                api_name=False,
            )
            for control in (frames, sampling):
                control.change(page.preview, [video, frames, sampling], [gallery, status], api_name=False)
            model.change(lambda name: service.default_frames(name), model, frames, api_name=False)
            inputs = [question, turns, video, model, frames, sampling, temperature, top_p, max_new]
            outputs = [chatbot, turns, question, gallery, status, masks, positions, shares, info]
            send.click(page.respond, inputs, outputs, api_name="chat")
            question.submit(page.respond, inputs, outputs, api_name=False)
            clear.click(
                lambda: ([], [], "", None, ""), None, [chatbot, turns, status, shares, info], api_name=False
            )

        if len(names) >= 2:
            with gr.Tab("Compare"):
                gr.Markdown("The same video and question, answered by each model (greedy), side by side.")
                with gr.Row():
                    with gr.Column(scale=2):
                        c_video = gr.Video(
                            label="Video", sources=["upload"], elem_id="compare-video", height=220
                        )
                        c_example = gr.Dropdown(list(examples), value=None, label="…or pick an example")
                    with gr.Column(scale=3):
                        c_question = gr.Textbox(label="Question", elem_id="compare-question")
                        c_frames = gr.Slider(1, max_frames, value=frames_default, step=1, label="Frames")
                        c_sampling = gr.Dropdown(list(SAMPLINGS), value="middle", label="Frame sampling")
                        c_max_new = gr.Slider(1, 1024, value=64, step=1, label="Max new tokens")
                        c_go = gr.Button("Compare", variant="primary", elem_id="compare-go")
                with gr.Row():
                    answers = [
                        gr.Textbox(label=name, lines=5, interactive=False, elem_id=f"compare-{i}")
                        for i, name in enumerate(names)
                    ]
                c_status = gr.Markdown()
                c_example.change(pick, c_example, [c_video, c_question], api_name=False)
                c_go.click(
                    page.compare,
                    [c_video, c_question, c_frames, c_sampling, c_max_new],
                    [*answers, c_status],
                    api_name="compare",
                )
    return blocks


def mount_page(app: Any, service: Service, api_key: str | None, log: Callable[[str], None]) -> None:
    """Mount the page at ``/``; with an API key, the page asks for it as its password."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    blocks = build_page(service, log)
    blocks.queue(default_concurrency_limit=service.limits.max_batch)
    auth = (lambda user, password: secrets.compare_digest(password, api_key)) if api_key else None
    folders = sorted({str(example.video.parent.resolve()) for example in service.examples})
    gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth=auth,
        auth_message="Sign in with any user name and the server's API key as the password." if auth else None,
        allowed_paths=folders,
        max_file_size=service.limits.max_bytes,
        footer_links=[],
        run_history=False,
        ssr_mode=False,
        css=CSS,
    )
