"""SyncedFrames: one run, its stages joined (decode/align -> denoise -> restore -> the consumer)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..face import FaceStage, no_face_error
from ..memory_limiter import MemoryPlan, log_memory
from .align import StreamedAlign, run_aligner
from .control import Progress, RunBatches, RunControl
from .pingpong import PingPongAlign
from .plan import RunPlan
from .restore import Restore
from .synthesis import Synthesis
from .threads import BufferPool, in_thread

log = logging.getLogger("latentsync.pipeline")


@dataclass
class RunResult:
    output_path: Path | None  # None when no file was asked for
    num_frames: int
    fps: Fraction
    frames_without_face: int
    plan: MemoryPlan
    seconds: dict = field(default_factory=dict)
    # what the user should know (also logged): sentences that start with a short label, "label: ..."
    warnings: list[str] = field(default_factory=list)


class SyncedFrames:
    """One run of the pipeline: iterate it (once) for the synced uint8 (n, H, W, 3) batches, then ask ``result()``.

    Stages: decode -> detect/align (one thread), VAE + UNet (one thread: the random draws stay in video order, so
    the output does not depend on the threading), restore (one thread), the consumer behind them. Bounded queues
    and a pool of frame buffers join them, so memory stays flat; an out-of-memory error shrinks that stage's
    batches and redoes only the batch that failed, never the run. ``overlap`` False: the same stages one after
    another in the consumer's thread (the serial baseline, equal bit for bit).
    """

    def __init__(self, models, options, plan: RunPlan, features: torch.Tensor, *, overlap: bool = True,
                 progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None):
        self.plan, self.overlap = plan, overlap
        self.control = RunControl(progress, should_cancel)
        self.batches = RunBatches(plan.memory)
        self.aligner = run_aligner(models, options, self.batches, detect=plan.track is None)
        self.align = (PingPongAlign(plan, self.aligner, self.control, options.cache_dir) if plan.revisits
                      else StreamedAlign(plan, self.aligner, self.control))
        self.synthesis = Synthesis(models, options, plan, features, self.batches, self.control)
        self.restore = Restore(FaceStage(None, models.resolution, device=models.device), self.batches, self.control)
        self.warnings: list[str] = []
        for warning in plan.warnings:
            self.warn(warning)
        self._started = time.perf_counter()
        self._done = False

    @property
    def num_frames(self) -> int:
        """Output frames of the whole run (the speech's length; a segment makes part of them)."""
        return self.plan.num_frames

    @property
    def samples(self) -> np.ndarray:
        return self.plan.samples

    @property
    def fps(self) -> Fraction:
        return self.plan.fps

    @property
    def width(self) -> int:
        return self.plan.width

    @property
    def height(self) -> int:
        return self.plan.height

    @property
    def times(self):
        return self.control.times

    def warn(self, message: str) -> None:
        """A warning for the run's result (and the log)."""
        log.warning("%s", message)
        self.warnings.append(message)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._done:
            raise RuntimeError("a run's frames can be iterated once")
        self._done = True
        return self._synced()

    def _synced(self) -> Iterator[np.ndarray]:
        log_memory("start")
        plan, stopping = self.plan, self.control.stopping
        # in flight at most: one in each of the three stages, one in each queue behind them, one with the consumer
        pool = BufferPool(plan.group_frames, plan.height, plan.width, count=7 if self.overlap else 2,
                          stopping=stopping)
        stage = (lambda items, name: in_thread(items, name, stopping)) if self.overlap else (lambda items, _: items)
        groups = stage(self.align.groups(pool), "align")
        groups = stage(self.synthesis.groups(groups), "denoise")
        groups = stage(self.restore.groups(groups), "restore")
        try:
            for group in groups:
                yield group.frames
                pool.release(group.frames)
        finally:
            stopping.set()
            groups.close()
        if self.align.frames_with_face == 0 and plan.track is None:  # a segment's clip has a face somewhere
            raise no_face_error(plan.num_frames)
        log_memory("end")

    def result(self, output_path: Path | None = None) -> RunResult:
        seconds = dict(self.control.times.seconds, total=time.perf_counter() - self._started)
        count = self.plan.stop - self.plan.first
        without = count - self.align.frames_with_face
        if without:
            log.warning("%d of %d frames had no usable face and were passed through unchanged", without, count)
        close_calls = self.aligner.close_calls_warning()
        if close_calls:
            log.warning("%s", close_calls)
        return RunResult(output_path, count, self.plan.fps, without, self.batches.plan, seconds, list(self.warnings))
