"""The command line's job run in this process, its memory read after every synced group: what ``bench_memory.py
--slope-seconds`` runs as its child.

    python bench/heap_probe.py SAMPLES.json [--one-thread] -- --video V --audio A --out O ...   (the CLI's flags)

Set up as the command's process is (``latentsync.cli.own_process``: two C heap arenas), then the same steps as
``latentsync.cli.main`` with a progress callback that, each time the lip-sync stage finishes a group, records the
frames done and three numbers:
RSS; the C heap in use (glibc's ``mallinfo2``: bytes handed out by malloc, torch's CPU tensors included, free pages
and fragmentation not); and Python's own heap (``tracemalloc``: Python objects and numpy arrays). The last two do
not swing with the allocator's free lists the way RSS does, so they resolve a slope of under 1 KB a frame. A
``tracemalloc`` snapshot is taken at 50 % of the frames (right after that sample: it costs ~15 MB of C heap and
~150 MB of RSS, so the slopes are fitted to the samples after it) and one at the last group; the source lines
whose allocations grew most between them are written out: what, if anything, is kept per frame.

``--one-thread``: the stages one after another in this thread (the pipeline's ``overlap=False``, the same stage
code): every sample is then taken at the same point of the same work, so what is in flight does not vary between
samples and the slope is resolved far more finely.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import tracemalloc
from pathlib import Path

import psutil

import common  # noqa: F401 (the repository on the path)

FIRST_SNAPSHOT = 0.5  # of the frames: the fitted samples come after it


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def c_heap_in_use(libc) -> int:
    """Bytes malloc has handed out and not had back: small blocks in the arenas plus mmap'd large blocks."""
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


class Probe:
    """The progress callback: one sample each time the lip-sync stage's whole-group count goes up."""

    def __init__(self, libc):
        self.libc, self.process, self.samples = libc, psutil.Process(), []
        self.lock, self.last_done, self.snapshots = threading.Lock(), -1, []

    def __call__(self, stage: str, done: float, total: int) -> None:
        if stage != "lip-sync" or done != int(done) or done <= self.last_done or not total:
            return
        with self.lock:
            self.last_done = int(done)
            self.samples.append({"frames": int(done), "total": total, "rss": self.process.memory_info().rss,
                                 "c_heap": c_heap_in_use(self.libc), "python_heap": tracemalloc.get_traced_memory()[0]})
            if done >= FIRST_SNAPSHOT * total and not self.snapshots or done >= total and len(self.snapshots) == 1:
                self.snapshot()

    def snapshot(self) -> None:
        self.snapshots.append((self.last_done, tracemalloc.take_snapshot()))

    def growth(self, top: int = 12) -> list[dict]:
        """The source lines whose live allocations grew most from the first snapshot to the last."""
        if len(self.snapshots) < 2:
            return []
        (first, before), (last, after) = self.snapshots[0], self.snapshots[-1]
        keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
        stats = sorted(after.filter_traces(keep).compare_to(before.filter_traces(keep), "lineno"),
                       key=lambda stat: -stat.size_diff)
        return [{"line": str(stat.traceback), "bytes": stat.size_diff, "blocks": stat.count_diff,
                 "bytes_per_frame": round(stat.size_diff / max(1, last - first), 1)} for stat in stats[:top]]


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1:]
    overlap = "--one-thread" not in sys.argv[:sys.argv.index("--")]
    from latentsync import cli

    cli.own_process()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    tracemalloc.start(1)

    from latentsync.model_set import ModelChoice
    from latentsync.options import pipeline_options
    from latentsync.pipeline import LipSyncPipeline

    args = cli.build_parser().parse_args(argv)
    values = cli.check_arguments(args)
    probe = Probe(libc)
    models = ModelChoice.of(values, args.checkpoints, args.unet_config, args.device).load()
    pipeline = LipSyncPipeline(models, pipeline_options(values), overlap)
    result = pipeline.run(args.video, args.speech, args.out, progress=probe)
    out.write_text(json.dumps({"frames": result.output_frames, "overlap": overlap, "samples": probe.samples,
                               "first_snapshot_after": probe.snapshots[0][0], "growth": probe.growth()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
