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
