"""What the benchmarks share: the peak memory of a process tree, and the JSON report."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil


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


def tiny_cli_inputs(folder: Path, seconds: float) -> tuple[Path, Path, list[str], dict]:
    """What the command-line benchmarks run on: tiny checkpoints, the first ``seconds`` of demo1 at half size
    (540x960) and as much speech in ``folder``; the flags of a CPU run on them (dlib, 1 step, 256 px faces) and an
    environment with torch on one thread per process. Returns (video, audio, flags, env)."""
    import os

    from comfyui_server import write_clip, write_speech  # tests/ is on the benchmarks' path
    from latentsync.tools.make_tiny_checkpoints import make_tiny_checkpoints

    repo = Path(__file__).resolve().parents[1]
    media = repo.parent / "shared" / "media"
    config = make_tiny_checkpoints(folder / "checkpoints")
    video = write_clip(media, folder, "clip.mp4", seconds, scale=2)
    audio = write_speech(media, folder, "speech.wav", seconds)
    flags = ["--checkpoints", str(folder / "checkpoints"), "--unet-config", str(config), "--detector", "dlib",
             "--device", "cpu", "--steps", "1", "--resolution", "256", "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    return video, audio, flags, env
