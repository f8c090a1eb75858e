"""Time taking 16 frames (segment-middle sampling) from short and long videos, per decoder.

Methods: PyAV decoding the whole file in order (what "decode everything, keep 16" costs), tcllava's
seeking `read_video`, and decord / OpenCV when importable (optional: `pip install decord
"opencv-python-headless<5"`). Every method's frames are checked against tcllava's, pixel for pixel.

    python benchmarks/video_decode.py [--quick] [--workdir DIR]

Writes benchmarks/results/video_decode.json and video_decode.md. Test videos are synthetic (smooth
moving texture, a moving square, per-frame grain), encoded with encoder defaults (libx264 keyframe
interval 250 with scene cuts; VP9 realtime, 128), and generated anew unless --workdir already has them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np

from tcllava.video import available_encoder, read_video, sample_indices, write_video

RESULTS = Path(__file__).resolve().parent / "results"
NUM_FRAMES = 16


def synthetic_frames(count: int, height: int, width: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Frames with motion and grain, so that P/B-frames cost real decoding work (solid colours do not)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    texture = np.kron(low, np.ones((8, 8, 1), np.uint8))  # blocky colour field, twice the frame size
    texture = np.concatenate([texture, texture], axis=1)
    side = height // 4
    for i in range(count):
        x = int(width * 0.5 * (1 + np.sin(i / 40)))
        y = int(8 * (1 + np.cos(i / 30)))
        frame = texture[y : y + height, x : x + width].astype(np.int16)
        sx = (i * 3) % (width - side)
        frame[height // 3 : height // 3 + side, sx : sx + side] = (255, (i * 5) % 256, 40)
        frame += rng.integers(-6, 7, (height, width, 1), dtype=np.int16)  # grain
        yield np.clip(frame, 0, 255).astype(np.uint8)


def make_videos(workdir: Path, quick: bool) -> dict[str, dict]:
    specs = [("short_640x360", 300, 360, 640, 30.0)]
    if not quick:
        specs.append(("long_10min_256x144", 15000, 144, 256, 25.0))
    videos = {}
    for name, count, height, width, fps in specs:
        for suffix in (".mp4", ".webm"):
            if available_encoder(suffix) is None:
                print(f"skip {name}{suffix}: no encoder")
                continue
            path = workdir / f"{name}{suffix}"
            if not path.exists():
                start = time.perf_counter()
                write_video(path, synthetic_frames(count, height, width), fps)
                print(f"wrote {path.name} in {time.perf_counter() - start:.1f} s")
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                keyframes = sum(1 for p in container.demux(stream) if p.is_keyframe)
                codec = stream.codec_context.name
            videos[f"{name}{suffix}"] = {
                "path": path,
                "frames": count,
                "size": f"{width}x{height}",
                "fps": fps,
                "codec": codec,
                "keyframes": keyframes,
                "mb": round(path.stat().st_size / 1e6, 2),
            }
    return videos


def pyav_sequential(path: Path, indices: list[int]) -> np.ndarray:
    wanted = set(indices)
    keep = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threading: the fastest way to decode a whole file
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                keep[i] = frame.to_ndarray(format="rgb24")
    return np.stack([keep[i] for i in indices])


def tcllava(path: Path, indices: list[int]) -> np.ndarray:
    frames, _ = read_video(path, NUM_FRAMES, "middle")
    return frames.numpy()


def decord_batch(path: Path, indices: list[int]) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path))
    return reader.get_batch(indices).asnumpy()


def opencv_seek(path: Path, indices: list[int]) -> np.ndarray:
    import cv2

    capture = cv2.VideoCapture(str(path))
    out = []
    for i in indices:
        capture.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = capture.read()
        if not ok:
            raise RuntimeError(f"opencv could not read frame {i}")
        out.append(frame[..., ::-1])
    capture.release()
    return np.stack(out)


def methods() -> dict[str, Callable[[Path, list[int]], np.ndarray]]:
    found = {"pyav_sequential": pyav_sequential, "tcllava_read_video": tcllava}
    for module, name, fn in (("decord", "decord", decord_batch), ("cv2", "opencv", opencv_seek)):
        try:
            __import__(module)
        except ImportError:
            print(f"{name} not installed: skipped")
            continue
        found[name] = fn
    return found


def time_methods(
    path: Path, indices: list[int], found: dict[str, Callable], repeats: int
) -> dict[str, tuple[list[float], np.ndarray]]:
    """Round-robin over the methods, so that load from other processes falls on all of them alike."""
    out = {name: ([], fn(path, indices)) for name, fn in found.items()}  # warm-up: page cache, imports
    for _ in range(repeats):
        for name, fn in found.items():
            start = time.perf_counter()
            fn(path, indices)
            out[name][0].append((time.perf_counter() - start) * 1000)
    return out


def run(workdir: Path, quick: bool) -> dict:
    videos = make_videos(workdir, quick)
    found = methods()
    results: dict[str, dict] = {}
    for name, info in videos.items():
        indices = sample_indices(info["frames"], NUM_FRAMES, "middle")
        timed = time_methods(info["path"], indices, found, repeats=3 if info["frames"] > 1000 else 7)
        reference = timed["tcllava_read_video"][1]
        baseline = statistics.median(timed["pyav_sequential"][0])
        results[name] = {}
        for method, (times, frames) in timed.items():
            ms = statistics.median(times)
            results[name][method] = {
                "ms": round(ms, 1),
                "min_ms": round(min(times), 1),
                "ratio_to_pyav_sequential": round(ms / baseline, 3),
                "identical_to_tcllava": bool(np.array_equal(frames, reference)),
            }
            print(f"{name:28s} {method:20s} {ms:9.1f} ms")
    return {
        "task": f"{NUM_FRAMES} frames, segment-middle sampling, decoded to uint8 RGB",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "av": av.__version__,
        },
        "videos": {k: {f: v for f, v in info.items() if f != "path"} for k, info in videos.items()},
        "results": results,
    }


def markdown(report: dict) -> str:
    names = sorted({m for r in report["results"].values() for m in r}, key=_method_order)
    lines = [
        f"# Video decode benchmark: {report['task']}",
        "",
        "Median ms per call, including opening the file (ratio to PyAV sequential decode-all; lower is "
        "better). Every method returned frames pixel-identical to tcllava's unless marked. "
        f"Machine: {report['machine']['platform']}, PyAV {report['machine']['av']}; timings on a shared "
        "2-core machine vary by about 20% between runs.",
        "",
        "| video | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for video, res in report["results"].items():
        cells = []
        for m in names:
            if m not in res:
                cells.append("-")
                continue
            mark = "" if res[m]["identical_to_tcllava"] else " (frames differ)"
            cells.append(f"{res[m]['ms']:.0f} ({res[m]['ratio_to_pyav_sequential']:.2f}x){mark}")
        lines.append(f"| {video} | " + " | ".join(cells) + " |")
    lines += ["", "| video | frames | size | fps | codec | keyframes | MB |", "|---|---|---|---|---|---|---|"]
    for video, v in report["videos"].items():
        cells = [video, v["frames"], v["size"], f"{v['fps']:g}", v["codec"], v["keyframes"], v["mb"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _method_order(name: str) -> int:
    order = ["pyav_sequential", "tcllava_read_video", "decord", "opencv"]
    return order.index(name) if name in order else len(order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short videos only")
    parser.add_argument("--workdir", type=Path, help="where to keep the generated videos (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run(workdir, args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "video_decode.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "video_decode.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
