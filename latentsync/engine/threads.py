"""How the pipeline's stages run at the same time: a thread per stage joined by bounded queues, reused frame buffers,
and per-stage busy time.

A stage is a generator over the items of the stage before it. ``in_thread`` runs one in a worker thread, at most
``depth`` items ahead of its consumer, and hands over its exception (the stage's own one-sentence error) as the
consumer's. Every wait checks the run's ``stopping`` event, so an error or a cancel anywhere stops every thread
within one item (one denoising step for the GPU stage), and closing the consumer's iterator joins them all.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from typing import Iterator

import numpy as np

POLL_SECONDS = 0.1
# Ctrl-C or SIGTERM (the process is going away): a stage stuck in a call that cannot be interrupted (inductor compiles
# for minutes on a CPU) is waited for this long, then left to die with the process (it is a daemon thread). Any other
# stop (a cancel in ComfyUI, an error) waits for the stage: its GPU work must end before the models move.
INTERRUPTED_JOIN_SECONDS = 5.0
THREAD_PREFIX = "latentsync-"


class Stopped(Exception):
    """The run is stopping (an error or a cancel elsewhere): a stage gives up its work."""


def in_thread(items: Iterator, name: str, stopping: threading.Event, depth: int = 1) -> Iterator:
    """Run the stage ``items`` in its own thread, at most ``depth`` items ahead; yields its items in order.

    ``stopping`` is the run's: set, the stage's items are no longer handed over (its own loop also checks it). The
    stage's error is always handed over while its consumer listens, so the first error is the one the caller sees.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    finished = object()
    consumer_gone = threading.Event()

    def put(item, error: bool = False) -> bool:
        while not consumer_gone.is_set() and (error or not stopping.is_set()):
            try:
                handoff.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(finished)
        except BaseException as error:  # handed to the consumer, raised there
            put(error, error=True)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # stops and joins the stages upstream of this one

    thread = threading.Thread(target=work, name=f"{THREAD_PREFIX}{name}", daemon=True)
    thread.start()
    handed_over = False  # True once the stage's end or its error came through: its thread is finishing
    try:
        while True:
            try:
                item = handoff.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not thread.is_alive() and handoff.empty():
                    raise Stopped(f"the {name} stage ended without a result")
                continue
            if item is finished:
                handed_over = True
                return
            if isinstance(item, BaseException):
                handed_over = True
                raise item
            yield item
    finally:
        if not handed_over:  # the consumer stopped early (closed, Ctrl-C): every stage winds down
            consumer_gone.set()
            stopping.set()
        thread.join(INTERRUPTED_JOIN_SECONDS if _interrupted() else None)


def stages_running() -> bool:
    """Whether a stage thread of some run is still alive (left running by an interrupt: ``in_thread``)."""
    return any(thread.name.startswith(THREAD_PREFIX) and thread.is_alive() for thread in threading.enumerate())


def _interrupted() -> bool:
    """Whether a KeyboardInterrupt is unwinding through here (raised here, or what closed this generator)."""
    error = sys.exc_info()[1]
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__context__
    return False


class BufferPool:
    """Frame batches (n, H, W, 3) uint8 that are reused instead of allocated per batch: a fresh 100 MB batch costs
    ~25,000 page faults. At most ``count`` exist; asking for one more waits until one is released, which also bounds
    the frames in flight (memory stays flat)."""

    def __init__(self, batch: int, height: int, width: int, count: int, stopping: threading.Event):
        self.shape = (batch, height, width, 3)
        self.count = count
        self.stopping = stopping
        self._free: list[np.ndarray] = []
        self._made = 0
        self._lock = threading.Condition()

    def allocate(self, shape: tuple) -> np.ndarray:
        """A buffer of the pool's shape (``shape`` must fit in it; callers slice what they fill)."""
        if shape[0] > self.shape[0] or tuple(shape[1:]) != self.shape[1:]:
            raise ValueError(f"a batch shaped {tuple(shape)} does not fit the pool's {self.shape}")
        with self._lock:
            while not self._free and self._made >= self.count:
                if self.stopping.is_set():
                    raise Stopped("the run is stopping")
                self._lock.wait(POLL_SECONDS)
            if self._free:
                return self._free.pop()
            self._made += 1
        return np.empty(self.shape, dtype=np.uint8)

    def release(self, array: np.ndarray) -> None:
        """Give back the buffer ``array`` is (or is a view of)."""
        while isinstance(array.base, np.ndarray):
            array = array.base
        if array.shape != self.shape:
            return  # not one of ours
        with self._lock:
            self._free.append(array)
            self._lock.notify()


class StageTimes:
    """Seconds each stage spent working (its waits for other stages excluded), added up over a run."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def measure(self, stage: str, sync=None):
        """Time the block; ``sync`` (e.g. the CUDA stream's synchronize) runs before the clock stops, so queued
        device work is counted where it was queued and nowhere else."""
        started = time.perf_counter()
        try:
            yield
        finally:
            if sync is not None:
                sync()
            self.add(stage, time.perf_counter() - started)
