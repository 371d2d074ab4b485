"""Where frames come from and where revisited frames are kept: video files, in-RAM arrays, disk caches."""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from .tempfiles import owned_temp_dir
from .video.rates import frame_rate

Allocate = Callable[[tuple], np.ndarray]  # shape -> a uint8 array to fill (e.g. a reused buffer)


class FrameSource(Protocol):
    fps: Fraction
    num_frames: int
    height: int
    width: int

    def batches(self, batch_size: int, allocate: Allocate | None = None, start: int = 0) -> Iterator[np.ndarray]:
        """Consecutive uint8 (n, H, W, 3) RGB batches from frame ``start`` to the last, each in an array from
        ``allocate((batch_size, H, W, 3))`` when given (reused buffers), else in a new one."""


class VideoFileSource:
    """Frames decoded from a file window by window: the video never enters RAM whole."""

    def __init__(self, path: str | Path):
        from .video import probe_video

        self.path = Path(path)
        info = probe_video(self.path)
        self.fps, self.num_frames = Fraction(info.fps), int(info.num_frames)
        self.height, self.width = int(info.height), int(info.width)

    def batches(self, batch_size: int, allocate: Allocate | None = None, start: int = 0) -> Iterator[np.ndarray]:
        from .video import iter_frame_batches

        return iter_frame_batches(self.path, batch_size, start=start, allocate=allocate)


class ArraySource:
    """Frames already in RAM: uint8 (N, H, W, 3), or ComfyUI's float IMAGE (N, H, W, 3) in [0, 1]."""

    def __init__(self, frames, fps: float | Fraction):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise ValueError(f"expected frames shaped (N, H, W, 3) with N >= 1, got {tuple(frames.shape)}")
        self.frames = frames
        self.fps = frame_rate(fps)
        self.num_frames, self.height, self.width = (int(s) for s in frames.shape[:3])

    def batches(self, batch_size: int, allocate: Allocate | None = None, start: int = 0) -> Iterator[np.ndarray]:
        for first in range(start, self.num_frames, batch_size):
            frames = self.frames[first:first + batch_size]
            out = allocate((batch_size, self.height, self.width, 3))[:len(frames)] if allocate else None
            yield to_uint8(frames, out)

    def at(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        """The frames at ``indices``, in that order, as uint8 (into ``out`` when given)."""
        return to_uint8(self.frames[list(indices)], out)


def open_source(video, fps: float | None = None) -> FrameSource:
    """A video path, a FrameSource, or (N, H, W, 3) frames at ``fps`` as a FrameSource."""
    if isinstance(video, (str, Path)):
        return VideoFileSource(video)
    if hasattr(video, "batches"):
        return video
    if fps is None or fps <= 0:
        raise ValueError("frames given without a frame rate: pass fps (e.g. 25)")
    return ArraySource(video, fps)


def frames_from(source: FrameSource, start: int) -> FrameSource:
    """The source's frames from ``start`` on, as a source of its own (nothing copied)."""
    if start == 0:
        return source
    if isinstance(source, ArraySource):
        return ArraySource(source.frames[start:], source.fps)
    return _Later(source, start)


class _Later:
    """A FrameSource's frames from ``start`` on."""

    def __init__(self, source: FrameSource, start: int):
        self.source, self.start = source, start
        self.fps, self.height, self.width = source.fps, source.height, source.width
        self.num_frames = source.num_frames - start

    def batches(self, batch_size: int, allocate: Allocate | None = None, start: int = 0) -> Iterator[np.ndarray]:
        return self.source.batches(batch_size, allocate, self.start + start)


def frames_between(source: FrameSource, start: int, stop: int, size: int,
                   allocate: Allocate | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index of its first frame, batch) of at most ``size`` frames from ``start`` up to ``stop`` (or the source's
    end, whichever comes first). Closing this iterator closes the decoder."""
    batches = source.batches(size, allocate, *([start] if start else []))
    position = start
    try:
        for batch in batches:
            if position >= stop:
                return
            batch = batch[:stop - position]
            yield position, batch
            position += len(batch)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def to_uint8(frames, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 frames as they are; float frames in [0, 1] rounded to 0..255 (torch or numpy input); written into
    ``out`` (same shape) when given."""
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if out is None:
        return frames
    out[...] = frames
    return out


class FrameStore:
    """Fixed-shape uint8 records kept for revisiting: in RAM, or in a file in a private temp folder.

    On disk, records are written and read with positioned I/O rather than a memory map: mapped pages would count
    in the process's resident memory, while plain reads leave the caching to the kernel. Use as a context
    manager: the folder is removed on exit, success or failure.
    """

    def __init__(self, count: int, shape: tuple[int, ...], on_disk: bool, cache_dir: str | None = None):
        self.shape = tuple(shape)
        self.record_bytes = int(np.prod(self.shape))
        self._folder = self._file = None
        self._memory = None
        if on_disk:
            self._folder = owned_temp_dir("cache", cache_dir)  # a killed run's is removed by the next one
            self._file = open(Path(self._folder) / "records.bin", "w+b", buffering=0)
        else:
            self._memory = np.empty((count, *self.shape), dtype=np.uint8)

    def write(self, start: int, records: np.ndarray) -> None:
        """Store ``records`` (n, *shape) at positions start .. start + n - 1."""
        records = np.ascontiguousarray(records, dtype=np.uint8)
        if self._memory is not None:
            self._memory[start:start + len(records)] = records
        else:
            os.pwrite(self._file.fileno(), records.data, start * self.record_bytes)

    def read(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        """The records at ``indices``, in that order, as a (len(indices), *shape) array (``out`` when given)."""
        if self._memory is not None:
            return np.take(self._memory, list(indices), axis=0, out=out)
        out = np.empty((len(indices), *self.shape), dtype=np.uint8) if out is None else out
        for row, index in enumerate(indices):
            view = memoryview(out[row]).cast("B")
            if os.preadv(self._file.fileno(), [view], index * self.record_bytes) != self.record_bytes:
                raise IOError(f"disk cache record {index} is incomplete (disk full?)")
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._memory = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def pingpong_index(i: int, length: int) -> int:
    """Source frame for output frame ``i`` when the video loops forward, backward, forward... (the reference)."""
    k = i % (2 * length)
    return k if k < length else 2 * length - 1 - k
