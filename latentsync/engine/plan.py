"""RunPlan: everything a run fixes before its first frame, built once and never changed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..face import FaceTrack
from ..frames import FrameSource, open_source
from ..memory_limiter import MemoryPlan, Workload, detect_hardware, plan_memory

log = logging.getLogger("latentsync.pipeline")


@dataclass(frozen=True)
class RunPlan:
    source: FrameSource
    samples: np.ndarray  # the speech, float32 mono 16 kHz
    num_frames: int  # output frames: the speech's length at the video's frame rate
    memory: MemoryPlan  # as planned (a stage that runs out of memory continues with smaller batches)
    chunk_size: int  # frames per motion-module window (the checkpoints' num_frames)
    first: int  # the output frames made: [first, stop) (a segment of a split run; else all)
    stop: int
    track: FaceTrack | None = None  # a segment's: the whole clip's face track (nothing is detected); else None
    warnings: tuple[str, ...] = ()

    @property
    def fps(self) -> Fraction:
        return self.source.fps

    @property
    def width(self) -> int:
        return self.source.width

    @property
    def height(self) -> int:
        return self.source.height

    @property
    def revisits(self) -> bool:
        """The speech outlasts the video: it plays forward, backward, forward... (ping-pong)."""
        return self.num_frames > self.source.num_frames

    @property
    def group_frames(self) -> int:
        """Frames decoded, aligned and denoised together (segments start at multiples of it)."""
        return self.chunk_size * self.memory.chunks_per_call

    @property
    def frames_to_track(self) -> int:
        return frames_to_track(self.source.num_frames, self.num_frames)


def frames_to_track(source_frames: int, output_frames: int) -> int:
    """The source frames a run aligns, from the first: all of them when it revisits frames, else its outputs."""
    return source_frames if output_frames > source_frames else output_frames


def speech_frames(video, audio, fps: float | None = None) -> tuple[FrameSource, np.ndarray, int]:
    """The frame source, the speech (16 kHz mono) and the number of output frames it lasts."""
    from ..audio import load_audio, require_video_frames

    source = open_source(video, fps)
    samples = load_audio(audio)
    return source, samples, require_video_frames(len(samples), source.fps)


def plan_run(models, options, video, audio, fps: float | None = None, segment=None) -> RunPlan:
    """The plan of a run of ``models`` with ``options`` (a ``PipelineOptions``), or of one ``segment`` of it (its
    frames, its whole clip's face track and batch sizes)."""
    source, samples, total = speech_frames(video, audio, fps)
    first, stop = (segment.start, segment.stop) if segment is not None else (0, total)
    if segment is not None:
        _check_segment(segment, total, models.chunk_size)
    hardware = detect_hardware(str(models.device))
    work = Workload(models.resolution, source.num_frames, (source.height, source.width), total > source.num_frames)
    memory = plan_memory(hardware, work, options)
    if segment is not None:  # the whole run's batch sizes, whatever this device would choose
        memory = memory.with_batches(segment.batches)
    for reason in memory.reasons:
        log.info("memory plan: %s", reason)
    warnings = ()
    if total < models.chunk_size:
        warnings = (f"speech too short: it lasts {len(samples) / 16000:.2f} s, so the output has only {total} "
                    f"frame(s); the model syncs {models.chunk_size} frames at a time: give at least "
                    f"{models.chunk_size / float(source.fps):.2f} s of speech",)
    return RunPlan(source, samples, total, memory, models.chunk_size, first, stop,
                   None if segment is None else segment.track, warnings)


def _check_segment(segment, total: int, chunk_size: int) -> None:
    if not 0 <= segment.start < segment.stop <= total:
        raise ValueError(f"segment {segment.start}..{segment.stop} is outside the run's {total} frames")
    if segment.start % (chunk_size * segment.batches.chunks_per_call):
        raise ValueError(f"segment {segment.start}..{segment.stop} does not start at a batch of the run: take "
                         "segments from plan_split(...).segments(n)")

