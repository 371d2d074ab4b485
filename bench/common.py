"""What the benchmarks share: the repository on the path, the JSON report, the peak memory of a process tree, the
demo media cut, scaled or looped to size, and the inputs of a command-line run on tiny checkpoints.

A benchmark runs as ``python bench/NAME.py`` (this folder is then on ``sys.path``); importing this module puts the
repository there too, so ``latentsync`` is the checkout's. Benchmarks import nothing from tests/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class PeakRSS(threading.Thread):
    """Samples the summed resident memory of a process and all its children (ffmpeg included: it is part of what a
    run costs) every ``interval`` seconds while the block runs; ``peak`` holds the largest sum, in bytes."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.process, self.interval, self.peak = psutil.Process(pid), interval, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()


def write_report(report: dict, out: str | Path) -> None:
    text = json.dumps(report, indent=2)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)


def _ffmpeg(*arguments: str) -> None:
    from latentsync.video.ffmpeg import find_ffmpeg

    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *arguments], check=True)


def demo_clip(folder: Path, seconds: float, scale: int = 1, name: str = "clip.mp4") -> Path:
    """The first ``seconds`` of demo1's video (1080x1920, 25 fps), its size divided by ``scale``, as H.264."""
    path = folder / name
    _ffmpeg("-i", str(MEDIA / "demo1_video.mp4"), "-an", "-t", f"{seconds:g}", "-vf",
            f"scale=iw/{scale}:ih/{scale}", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    return path


def looped_video(folder: Path, seconds: float, size: str | None = None) -> Path:
    """demo1 played again and again to about ``seconds``: the stream copied, or (``size``, e.g. "540:960") scaled and
    cut to exactly ``seconds``."""
    loops = str(int(np.ceil(seconds / 10.0)) - (0 if size else 1))
    if size is None:
        path = folder / f"video_{int(seconds)}s.mp4"
        _ffmpeg("-stream_loop", loops, "-i", str(MEDIA / "demo1_video.mp4"), "-an", "-c", "copy", str(path))
    else:
        path = folder / f"video_{int(seconds)}s_{size.split(':')[0]}.mp4"
        _ffmpeg("-stream_loop", loops, "-i", str(MEDIA / "demo1_video.mp4"), "-an", "-vf", f"scale={size}", "-t",
                str(seconds), str(path))
    return path


def looped_speech(folder: Path, seconds: float) -> Path:
    """The first ``seconds`` of long_speech_39s.wav (16 kHz), played again as often as needed."""
    speech, rate = soundfile.read(MEDIA / "long_speech_39s.wav", dtype="int16")
    reps = int(np.ceil(seconds * rate / len(speech)))
    path = folder / f"speech_{seconds:g}s.wav"
    soundfile.write(path, np.tile(speech, reps)[: int(seconds * rate)], rate, subtype="PCM_16")
    return path


def tiny_cli_inputs(folder: Path, seconds: float) -> tuple[Path, Path, list[str], dict]:
    """What the command-line benchmarks run on: tiny checkpoints, the first ``seconds`` of demo1 at half size
    (540x960) and as much speech in ``folder``; the flags of a CPU run on them (dlib, 1 step, 256 px faces) and an
    environment with torch on one thread per process. Returns (video, audio, flags, env)."""
    from latentsync.tools.make_tiny_checkpoints import make_tiny_checkpoints

    config = make_tiny_checkpoints(folder / "checkpoints")
    video, audio = demo_clip(folder, seconds, scale=2), looped_speech(folder, seconds)
    flags = ["--checkpoints", str(folder / "checkpoints"), "--unet-config", str(config), "--detector", "dlib",
             "--device", "cpu", "--steps", "1", "--resolution", "256", "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return video, audio, flags, env
