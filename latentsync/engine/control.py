"""What every stage of a run shares: cancelling and stopping, progress, stage times, the batch sizes (halved after
an out-of-memory error), the group of frames that travels through the stages, and the two loops they all use."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch

from ..errors import Cancelled
from ..face.stage import AlignedBatch
from ..memory_limiter import MemoryPlan, free_memory, is_oom, smaller_batches
from .threads import StageTimes, Stopped

Progress = Callable[[str, float, int], None]  # (stage, done, total); done may be fractional (denoising steps)
T = TypeVar("T")


@dataclass
class Group:
    """Consecutive synced frames on their way through the stages: decoded and aligned, then synced, then restored
    (in place: ``frames`` is a reused buffer, valid until the consumer asks for the next group)."""

    speech_start: int  # speech index of the first frame (synced frame 0 is the speech's first)
    frames: np.ndarray  # (n, H, W, 3) uint8
    aligned: AlignedBatch
    synced: torch.Tensor | None = None  # (n, 3, R, R) in [-1, 1]; None when no frame of the group has a face
    mouth: np.ndarray | None = None  # (n, H, W) uint8: the generated mouth's weight in each pixel, when asked for


class RunControl:
    """A run's cancel and stop checks, its progress reports and its stage times (shared by the stage threads)."""

    def __init__(self, progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None):
        self.report: Progress = progress or (lambda *_: None)
        self.should_cancel = should_cancel
        self.stopping = threading.Event()  # an error or a cancel anywhere: every stage gives up
        self.times = StageTimes()

    def check(self) -> None:
        """Raise when the run is stopping (Stopped) or the user cancelled it (Cancelled)."""
        if self.stopping.is_set():
            raise Stopped("the run is stopping")
        check_cancel(self.should_cancel)


def check_cancel(should_cancel: Callable[[], bool] | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("cancelled by the user; no output was written")


class RunBatches:
    """The batch sizes in use: the memory plan's, halved for the stage that runs out of memory (thread-safe)."""

    def __init__(self, plan: MemoryPlan):
        self.plan = plan
        self._lock = threading.Lock()

    def shrink(self, stage: str, error: BaseException) -> MemoryPlan:
        """The plan after an out-of-memory error in ``stage`` ("face" or "denoise"); OutOfMemory at the smallest."""
        free_memory()
        with self._lock:
            self.plan = smaller_batches(self.plan, stage, error)
            return self.plan


def retry_smaller(attempt: Callable[[], T], on_oom: Callable[[BaseException], object]) -> T:
    """``attempt()``, redone after ``on_oom(error)`` (which makes the batches smaller) as long as it runs out of
    memory; ``attempt`` puts back any state it changed before it raises."""
    while True:
        try:
            return attempt()
        except RuntimeError as error:
            if not is_oom(error):
                raise
            on_oom(error)


def in_pieces(count: int, size: Callable[[], int], work: Callable[[int, int], T],
              on_oom: Callable[[BaseException], object]) -> list[T]:
    """``work(start, stop)`` over 0 .. count in consecutive pieces of ``size()`` items; a piece that runs out of
    memory is redone after ``on_oom`` (with the smaller size it leaves)."""
    results, start = [], 0
    while start < count:
        def attempt(start=start):
            stop = min(count, start + size())
            return stop, work(start, stop)

        start, result = retry_smaller(attempt, on_oom)
        results.append(result)
    return results


def spans(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    """Consecutive [a, b) of at most ``size`` items from ``start`` to ``stop``."""
    for first in range(start, stop, size):
        yield first, min(stop, first + size)
