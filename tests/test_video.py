"""tcllava.video: sampling maths, seeking reads on real encoded files, bad inputs, timeouts, the writer.

Every test video is written here with PyAV. Each frame shows its own index as 16 black/white blocks
(one bit each), which survives lossy compression and GIF palettes, so a test can read back exactly
which frames came out.
"""

from __future__ import annotations

import io
import threading
import time
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from tcllava.video import (
    Clip,
    VideoError,
    VideoWarning,
    available_encoder,
    frame_bounds,
    read_video,
    sample_indices,
    write_video,
)
from tcllava.video.pyav_reader import PyAVReader

BLOCK = 16  # pixels per bit block; frames are 64x64 = a 4x4 grid of bits


def index_frames(indices: list[int] | range, size: int = 64) -> np.ndarray:
    """uint8 [T, size, size, 3] frames showing their index in binary, 16 bits over a 4x4 grid."""
    block = size // 4
    frames = np.zeros((len(indices), size, size, 3), np.uint8)
    for t, index in enumerate(indices):
        for bit in range(16):
            if (index >> bit) & 1:
                row, col = divmod(bit, 4)
                frames[t, row * block : (row + 1) * block, col * block : (col + 1) * block] = 255
    return frames


def decode_indices(frames: torch.Tensor | np.ndarray) -> list[int]:
    """Inverse of index_frames: read the bits back from the centres of the blocks."""
    arr = frames.numpy() if isinstance(frames, torch.Tensor) else frames
    gray = arr.astype(np.float32).mean(-1)
    block = arr.shape[1] // 4
    margin = block // 4
    out = []
    for image in gray:
        value = 0
        for bit in range(16):
            row, col = divmod(bit, 4)
            cell = image[
                row * block + margin : (row + 1) * block - margin,
                col * block + margin : (col + 1) * block - margin,
            ]
            if cell.mean() > 128:
                value |= 1 << bit
        out.append(value)
    return out


WEBM = available_encoder(".webm")
needs_webm = pytest.mark.skipif(WEBM is None, reason="no VP9/VP8 encoder in this PyAV build's FFmpeg")

# suffix -> frame rate; 29.97 on mkv checks the index maths on a millisecond time base. MPEG-TS streams
# start at a non-zero time and report no frame count; libx264's B-frames reorder the last packets.
FORMATS = {
    ".mp4": 30.0,
    ".webm": 30.0,
    ".mkv": 30000 / 1001,
    ".avi": 25.0,
    ".ts": 25.0,
    ".gif": 10.0,
}
NUM = 90  # frames per format video


def format_params() -> list:
    return [pytest.param(s, marks=needs_webm) if s == ".webm" else s for s in FORMATS]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    frames = index_frames(range(NUM))
    paths = {}
    for suffix, fps in FORMATS.items():
        if suffix == ".webm" and WEBM is None:
            continue
        paths[suffix] = write_video(root / f"clip{suffix}", frames, fps, gop=20)
    return paths


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """1200 tiny frames with a keyframe every 30: long enough that decoding everything is visible."""
    root = tmp_path_factory.mktemp("long")
    frames = index_frames(range(1200), size=32)
    paths = {".mp4": write_video(root / "long.mp4", frames, 25, gop=30)}
    if WEBM is not None:
        paths[".webm"] = write_video(root / "long.webm", frames, 25, gop=30)
    return paths


# -- sampling maths (no files) -----------------------------------------------------------------


def test_middle_takes_segment_middles() -> None:
    assert sample_indices(10, 4, "middle") == [1, 3, 6, 8]  # segments of 2.5 frames, middles 1.25, 3.75...
    assert sample_indices(16, 16, "middle") == list(range(16))
    assert sample_indices(32, 16, "middle") == list(range(1, 32, 2))
    assert sample_indices(100, 4, "middle", start_frame=20, end_frame=59) == [25, 35, 45, 55]


def test_uniform_includes_both_ends() -> None:
    assert sample_indices(10, 4, "uniform") == [0, 3, 6, 9]
    assert sample_indices(100, 3, "uniform", start_frame=10, end_frame=30) == [10, 20, 30]


def test_random_is_one_frame_per_segment_and_seeded() -> None:
    a = sample_indices(160, 16, "random", rng=3)
    assert a == sample_indices(160, 16, "random", rng=3)
    assert a != sample_indices(160, 16, "random", rng=4)
    assert all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(a))
    gen = np.random.default_rng(0)
    draws = {tuple(sample_indices(160, 16, "random", rng=gen)) for _ in range(5)}
    assert len(draws) > 1


def test_mvbench_reproduces_reference_quirks() -> None:
    # MVBench's get_index spans last-first, so 16 of 16 frames repeats frame 8 and never shows frame 15.
    assert sample_indices(16, 16, "mvbench") == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 13, 14]
    assert sample_indices(300, 16, "mvbench")[:4] == [9, 28, 46, 65]


def test_fps_sampling_and_cap() -> None:
    assert sample_indices(90, None, fps=3, native_fps=30) == list(range(0, 90, 10))
    assert sample_indices(90, 4, fps=3, native_fps=30) == [0, 30, 50, 80]  # 9 frames, capped to 4
    assert sample_indices(10, None, fps=20, native_fps=10) == [i // 2 for i in range(20)]  # repeats
    assert sample_indices(300, None, fps=1, native_fps=30, start_frame=45, end_frame=120) == [45, 75, 105]


def test_frame_bounds_are_exact_and_clamped() -> None:
    assert frame_bounds(300, 30, 2.0, 5.0) == (60, 150)
    assert frame_bounds(300, 30000 / 1001, 1.0, 2.0) == (30, 59)  # 29.97 * 2.0 = 59.94
    assert frame_bounds(300, 30, None, 100.0) == (0, 299)
    assert frame_bounds(300, 30, 50.0, 60.0) == (299, 299)
    with pytest.raises(ValueError, match="end"):
        frame_bounds(300, 30, 2.0, 2.0)


# -- reading real files ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", format_params())
@pytest.mark.parametrize("sampling", ["middle", "uniform", "random", "fps"])
def test_read_video_returns_the_sampled_frames(videos: dict[str, Path], suffix: str, sampling: str) -> None:
    fps = FORMATS[suffix]
    if sampling == "fps":
        clip = read_video(videos[suffix], num_frames=8, fps=4.0)
        expected = sample_indices(NUM, 8, fps=4.0, native_fps=fps)
    else:
        clip = read_video(videos[suffix], num_frames=16, sampling=sampling, seed=7)
        expected = sample_indices(NUM, 16, sampling, rng=7)
    assert isinstance(clip, Clip)
    frames, timestamps = clip
    assert frames.dtype == torch.uint8 and frames.shape == (len(expected), 64, 64, 3)
    assert timestamps.dtype == torch.float64
    assert decode_indices(frames) == expected
    # Timestamps are the frames' own: i / fps, up to the container's time base (1 ms for mkv/webm).
    np.testing.assert_allclose(timestamps.numpy(), np.array(expected) / fps, atol=1e-3)


@pytest.mark.parametrize("suffix", [".mp4", pytest.param(".webm", marks=needs_webm), ".mkv"])
def test_start_end_bound_the_clip(videos: dict[str, Path], suffix: str) -> None:
    fps = FORMATS[suffix]
    frames, timestamps = read_video(videos[suffix], 8, "middle", start=1.0, end=2.0)
    first, last = frame_bounds(NUM, fps, 1.0, 2.0)
    got = decode_indices(frames)
    assert got == sample_indices(NUM, 8, "middle", start_frame=first, end_frame=last)
    assert all(1.0 - 1e-3 <= t <= 2.0 + 1e-3 for t in timestamps.tolist())
    assert first <= min(got) and max(got) <= last


@pytest.mark.parametrize("suffix", [".mp4", pytest.param(".webm", marks=needs_webm), ".mkv", ".avi", ".ts"])
def test_every_frame_and_its_timestamp_is_exact(videos: dict[str, Path], suffix: str) -> None:
    """Frame counts (from duration for webm/mkv, which report 0) and pts -> index maths are exact."""
    fps = FORMATS[suffix]
    with PyAVReader(videos[suffix]) as reader:
        assert reader.num_frames == NUM
        frames, timestamps = reader.read(list(range(NUM)))
    assert decode_indices(frames) == list(range(NUM))
    np.testing.assert_allclose(timestamps, np.arange(NUM) / fps, atol=1e-3)


@needs_webm
def test_webm_without_duration_or_index(tmp_path: Path) -> None:
    """Browsers record webm to a stream: no duration, no cues. The frame count then comes from demuxing."""

    class Unseekable(io.RawIOBase):
        def __init__(self, file: io.BufferedWriter) -> None:
            self.file = file

        def writable(self) -> bool:
            return True

        def write(self, data: bytes) -> int:  # type: ignore[override]
            return self.file.write(data)

    path = tmp_path / "recorded.webm"
    with path.open("wb") as file, av.open(Unseekable(file), "w", format="webm") as container:
        stream = container.add_stream(WEBM, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for image in index_frames(range(50)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        assert container.duration is None and container.streams.video[0].frames == 0
    frames, timestamps = read_video(path, 8)
    assert decode_indices(frames) == sample_indices(50, 8)
    np.testing.assert_allclose(timestamps.numpy(), np.array(sample_indices(50, 8)) / 25, atol=1e-3)


def test_frame_folder_sorts_naturally(tmp_path: Path) -> None:
    images = index_frames(range(12))
    for i, image in enumerate(images):  # frame2.png must come before frame10.png
        Image.fromarray(image).save(tmp_path / f"frame{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    frames, timestamps = read_video(tmp_path, num_frames=4, folder_fps=3)
    assert decode_indices(frames) == [1, 4, 7, 10]
    np.testing.assert_allclose(timestamps.numpy(), np.array([1, 4, 7, 10]) / 3)
    with pytest.warns(VideoWarning):  # 3 fps: only frames 3..6 lie in [1 s, 2 s]
        frames, _ = read_video(tmp_path, num_frames=12, start=1.0, end=2.0)
    assert sorted(set(decode_indices(frames))) == [3, 4, 5, 6]


def test_single_image_is_one_frame_at_time_zero(tmp_path: Path) -> None:
    path = tmp_path / "still.jpg"
    Image.fromarray(index_frames([37])[0]).save(path)
    with pytest.warns(VideoWarning, match="still.jpg"):
        frames, timestamps = read_video(path, num_frames=4)
    assert decode_indices(frames) == [37] * 4
    assert timestamps.tolist() == [0.0] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames, timestamps = read_video(path, num_frames=1)
    assert frames.shape == (1, 64, 64, 3) and timestamps.tolist() == [0.0]


def test_short_video_repeats_frames_with_a_warning(tmp_path: Path) -> None:
    path = write_video(tmp_path / "short.mp4", index_frames(range(5)), 10)
    with pytest.warns(VideoWarning, match="short.mp4"):
        frames, timestamps = read_video(path, num_frames=16)
    got = decode_indices(frames)
    assert got == sample_indices(5, 16) and sorted(set(got)) == [0, 1, 2, 3, 4]
    assert got == sorted(got)
    np.testing.assert_allclose(timestamps.numpy(), np.array(got) / 10)


def test_reads_are_exact_after_seeks_and_match_a_full_decode(long_videos: dict[str, Path]) -> None:
    for path in long_videos.values():
        with av.open(str(path)) as container:  # reference: decode everything, in order
            every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        indices = sorted(set(sample_indices(len(every), 24, "random", rng=1)))
        with PyAVReader(path) as reader:
            frames, _ = reader.read(indices)
            assert reader.seeks > 0
            again, _ = reader.read([3, 700])  # going backwards on the same reader
        np.testing.assert_array_equal(frames, np.stack([every[i] for i in indices]))
        assert decode_indices(again) == [3, 700]


@pytest.mark.parametrize("suffix", [".mp4", pytest.param(".webm", marks=needs_webm)])
def test_sixteen_frames_from_a_long_video_seek_instead_of_decoding_all(
    long_videos: dict[str, Path], suffix: str
) -> None:
    stats: dict = {}
    frames, timestamps = read_video(long_videos[suffix], 16, "middle", stats=stats)
    assert decode_indices(frames) == sample_indices(1200, 16, "middle")
    np.testing.assert_allclose(timestamps.numpy(), np.array(sample_indices(1200, 16)) / 25, atol=1e-3)
    # At most one keyframe interval (30) per target; decoding the file would be 1200 frames.
    assert stats["frames_decoded"] <= 16 * 30
    assert stats["seeks"] >= 10


# -- bad input ---------------------------------------------------------------------------------


def _zero_frame_mp4(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return path


def _faststart_copy(src: Path, dst: Path) -> Path:
    """Remux with the index (moov) at the front, so a truncated copy still opens but lacks frames."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


def _bad_files(root: Path) -> dict[str, Path]:
    good = write_video(
        root / "good.mp4",
        np.random.default_rng(0).integers(0, 255, (60, 64, 64, 3), dtype=np.uint8),
        25,
        gop=10,
    )
    data = good.read_bytes()
    files = {
        "missing": root / "missing.mp4",
        "text": root / "text.mp4",
        "empty": root / "empty.webm",
        "zero_frames": _zero_frame_mp4(root / "zero.mp4"),
        "truncated": root / "truncated.mp4",
        "truncated_faststart": root / "truncated_fs.mp4",
        "garbled": root / "garbled.mp4",
    }
    files["text"].write_text("this is not a video\n" * 50)
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    fast = _faststart_copy(good, root / "fast.mp4").read_bytes()
    files["truncated_faststart"].write_bytes(fast[: len(fast) // 2])
    garbled = bytearray(data)  # frame data overwritten with noise, the index (moov, at the end) intact
    lo, hi = len(data) // 10, len(data) * 8 // 10
    garbled[lo:hi] = np.random.default_rng(1).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    files["garbled"].write_bytes(bytes(garbled))
    return files


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("missing", "no such file"),
        ("text", "cannot open"),
        ("empty", "cannot open|no video data"),
        ("zero_frames", "no video stream|no frames"),
        ("truncated", "cannot open"),
        ("truncated_faststart", "truncated or corrupt"),
        ("garbled", "corrupt"),
    ],
)
def test_bad_input_raises_video_error_naming_the_file(
    bad_files: dict[str, Path], case: str, cause: str
) -> None:
    path = bad_files[case]
    with pytest.raises(VideoError, match=cause) as info:
        read_video(path, num_frames=16)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)


def test_video_error_survives_pickling() -> None:
    """Evaluation workers send errors across processes; the file and the cause must come through."""
    import pickle

    error = pickle.loads(pickle.dumps(VideoError("/data/v.webm", "corrupt stream")))
    assert (error.path, error.cause, str(error)) == (
        "/data/v.webm",
        "corrupt stream",
        "/data/v.webm: corrupt stream",
    )


def test_end_before_start_is_a_video_error(videos: dict[str, Path]) -> None:
    with pytest.raises(VideoError, match="end") as info:
        read_video(videos[".mp4"], start=2.0, end=1.0)
    assert str(videos[".mp4"]) in str(info.value)


def test_bound_past_the_end_is_clamped_to_the_last_frame(videos: dict[str, Path]) -> None:
    with pytest.warns(VideoWarning):
        frames, _ = read_video(videos[".mp4"], 4, start=100.0, end=200.0)
    assert decode_indices(frames) == [NUM - 1] * 4


def test_hung_decode_times_out_with_video_error(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def hang(self: PyAVReader, indices: list[int]) -> None:
        release.wait(30)  # stands in for a decoder stuck inside FFmpeg

    monkeypatch.setattr(PyAVReader, "read", hang)
    try:
        with pytest.raises(VideoError, match="timeout") as info:
            read_video(videos[".mp4"], timeout=0.5)
        assert str(videos[".mp4"]) in str(info.value)
    finally:
        release.set()


def test_slow_decode_loop_stops_at_the_deadline(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline is also checked between packets, so a slow decode ends itself (no orphan thread)."""
    original = PyAVReader._set_skipping

    def slow(self: PyAVReader, packet: av.Packet) -> None:
        time.sleep(0.02)
        original(self, packet)

    monkeypatch.setattr(PyAVReader, "_set_skipping", slow)
    with (
        PyAVReader(videos[".mp4"], deadline=time.monotonic() + 0.3) as reader,
        pytest.raises(VideoError, match="longer than the timeout") as info,
    ):
        reader.read(list(range(NUM)))
    assert str(videos[".mp4"]) in str(info.value)
    cancel = threading.Event()
    with PyAVReader(videos[".mp4"], cancel=cancel) as reader:
        cancel.set()
        with pytest.raises(VideoError, match="cancelled"):
            reader.read([NUM - 1])


# -- writer ------------------------------------------------------------------------------------


def test_write_video_pads_odd_sizes_and_accepts_tensors(tmp_path: Path) -> None:
    frames = torch.from_numpy(index_frames(range(6), size=64)[:, :63, :63])
    path = write_video(tmp_path / "odd.mp4", frames, 12.5)
    out, timestamps = read_video(path, num_frames=6, sampling="uniform")
    assert out.shape == (6, 64, 64, 3)
    np.testing.assert_allclose(timestamps.numpy(), np.arange(6) / 12.5)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "bad.mp4", np.zeros((2, 8, 8, 3), np.float32), 10)
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "bad.xyz", np.zeros((2, 8, 8, 3), np.uint8), 10)


def test_decord_backend_matches_pyav(videos: dict[str, Path]) -> None:
    pytest.importorskip("decord")
    a = read_video(videos[".mp4"], 8, backend="pyav")
    b = read_video(videos[".mp4"], 8, backend="decord")
    assert decode_indices(b.frames) == decode_indices(a.frames)
    np.testing.assert_allclose(b.timestamps.numpy(), a.timestamps.numpy(), atol=1e-3)
