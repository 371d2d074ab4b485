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

from ..face.stage import FaceStage, no_face_error
from ..frames import frames_between
from ..mask import mouth_weight
from ..memory_limiter import MemoryPlan, log_memory, trim_heap
from .align import StreamedAlign, run_aligner
from .control import Progress, RunBatches, RunControl, check_cancel
from .pingpong import PingPongAlign
from .plan import RunPlan
from .restore import Restore
from .synthesis import Synthesis
from .threads import BufferPool, in_thread

log = logging.getLogger("latentsync.pipeline")


@dataclass
class RunResult:
    output_path: Path | None  # None when no file was asked for
    output_frames: int  # written or delivered (a segment's)
    fps: Fraction
    frames_without_face: int
    plan: MemoryPlan
    seconds: dict = field(default_factory=dict)
    # what the user should know (also logged): sentences that start with a short label, "label: ..."
    warnings: list[str] = field(default_factory=list)
    audio_delay: float | None = None  # the output's sound: the speech after this many seconds of silence, padded
    # with silence to the video's end (audio_start, when_video_is_longer keep); None: the speech as it is
    sound: tuple | None = None  # that placed sound as (waveform, rate), when the speech was given in memory (a
    # whole run, not a segment: its parts are muxed once joined)


class SyncedFrames:
    """One run of the pipeline: iterate it (once) for the output's uint8 (n, H, W, 3) batches, then ask ``result()``:
    the video's own frames before the speech (``audio_start``), the synced frames, the video's own after it (``keep``).

    Stages: decode -> detect/align (one thread), VAE + UNet (one thread: the random draws stay in video order, so
    the output does not depend on the threading), restore (one thread), the consumer behind them. Bounded queues
    and a pool of frame buffers join them, so memory stays flat; an out-of-memory error shrinks that stage's
    batches and redoes only the batch that failed, never the run. ``overlap`` False: the same stages one after
    another in the consumer's thread (the serial baseline, equal bit for bit).
    """

    def __init__(self, models, options, plan: RunPlan, features: torch.Tensor, *, overlap: bool = True,
                 progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None,
                 mask_sink: Callable[[np.ndarray], None] | None = None, mask_feather: int | None = None):
        self.plan, self.overlap = plan, overlap
        self.mask_sink = mask_sink  # given: each batch's mouth mask, uint8 (n, H, W), just before the batch
        self.control = RunControl(progress, should_cancel)
        self.batches = RunBatches(plan.memory)
        self.aligner = run_aligner(models, options, self.batches, detect=plan.track is None)
        self.align = (PingPongAlign(plan, self.aligner, self.control, options.cache_dir) if plan.revisits
                      else StreamedAlign(plan, self.aligner, self.control))
        self.synthesis = Synthesis(models, options, plan, features, self.batches, self.control)
        self.restore = Restore(FaceStage(None, models.resolution, device=models.device), self.batches, self.control,
                               mouth=mouth_weight(models.resolution, options.mouth_feather if mask_feather is None
                                                  else mask_feather) if mask_sink else None)
        self.warnings: list[str] = []
        for warning in plan.warnings:
            self.warn(warning)
        self._started = time.perf_counter()
        self._done = False

    @property
    def output_frames(self) -> int:
        """Output frames this run delivers: the timeline's (the speech's length, with any kept video before and
        after it), or a segment's part of them."""
        start, stop = self.plan.output_range
        return stop - start

    @property
    def audio_delay(self) -> float | None:
        """The silence before the speech in the output's sound, which is then padded to the video's end; None: the
        speech as it is (the published output)."""
        return self.plan.timeline.audio_delay(self.plan.fps)

    @property
    def samples(self) -> np.ndarray:
        return self.plan.samples

    @property
    def memory(self):
        return self.plan.memory

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
        lead, start, stop = plan.timeline.lead, *plan.output_range
        yield from self._passed(pool, start, min(stop, lead))
        if plan.speech_start < plan.speech_stop:
            yield from self._made(pool)
        yield from self._passed(pool, max(start, lead + plan.timeline.speech), stop)
        log_memory("end")

    def _made(self, pool: BufferPool) -> Iterator[np.ndarray]:
        """The synced frames, through the stages."""
        plan, stopping = self.plan, self.control.stopping
        stage = (lambda items, name: in_thread(items, name, stopping)) if self.overlap else (lambda items, _: items)
        groups = stage(self.align.groups(pool), "align")  # 3. decode, detect and warp the faces
        groups = stage(self.synthesis.groups(groups), "denoise")  # 4. VAE + UNet: the synced faces
        groups = stage(self.restore.groups(groups), "restore")  # 5. pasted back into their frames
        try:
            for group in groups:
                if self.mask_sink is not None:
                    self.mask_sink(group.mouth if group.mouth is not None else _no_mouth(group.frames))
                yield group.frames
                pool.release(group.frames)
                trim_heap()
        finally:
            stopping.set()
            groups.close()
        if self.align.frames_with_face == 0 and plan.track is None:  # a segment's clip has a face somewhere
            raise no_face_error(plan.speech_frames)

    def _passed(self, pool: BufferPool, start: int, stop: int) -> Iterator[np.ndarray]:
        """Output frames start .. stop - 1 outside the speech: the video's own frames, as decoded."""
        if start >= stop:
            return
        self.control.report("pass video through", 0, stop - start)
        batches = frames_between(self.plan.video, start, stop, self.plan.group_frames, pool.allocate)
        try:
            for position, batch in batches:
                check_cancel(self.control.should_cancel)  # (after the synced part, its stages have stopped)
                if self.mask_sink is not None:
                    self.mask_sink(_no_mouth(batch))
                yield batch
                pool.release(batch)
                trim_heap()
                self.control.report("pass video through", position + len(batch) - start, stop - start)
        finally:
            batches.close()

    def result(self, output_path: Path | None = None) -> RunResult:
        seconds = dict(self.control.times.seconds, total=time.perf_counter() - self._started)
        count = self.output_frames
        without = self.plan.frames_to_sync - self.align.frames_with_face
        if without:
            log.warning("%d of %d frames had no usable face and were passed through unchanged", without, count)
        close_calls = self.aligner.close_calls_warning()
        if close_calls:
            log.warning("%s", close_calls)
        return RunResult(output_path, count, self.plan.fps, without, self.batches.plan, seconds, list(self.warnings),
                         self.audio_delay)


def _no_mouth(frames: np.ndarray) -> np.ndarray:
    """The mouth mask of frames nothing was generated in."""
    return np.zeros(frames.shape[:3], dtype=np.uint8)
