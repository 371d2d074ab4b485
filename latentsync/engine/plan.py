"""RunPlan: everything a run fixes before its first frame, built once and never changed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..face.stage import FaceTrack
from ..frames import FrameSource, frames_from, open_source
from ..memory_limiter import MemoryPlan, Workload, detect_hardware, plan_memory
from ..timeline import Timeline, plan_timeline

log = logging.getLogger("latentsync.pipeline")


@dataclass(frozen=True)
class RunPlan:
    video: FrameSource  # the whole video: the frames that pass through come from it
    source: FrameSource  # the frames the synced part is made from: the video from the timeline's lead on
    samples: np.ndarray  # the speech, float32 mono 16 kHz
    timeline: Timeline  # which output frames pass through and which are synced (the dubbing options)
    memory: MemoryPlan  # as planned (a stage that runs out of memory continues with smaller batches)
    chunk_size: int  # frames per motion-module window (the checkpoints' num_frames)
    output_range: tuple[int, int]  # the output frames delivered: [start, stop) (a segment's; else all)
    track: FaceTrack | None = None  # a segment's: the whole clip's face track (nothing is detected); else None
    warnings: tuple[str, ...] = ()

    @property
    def speech_frames(self) -> int:
        """Synced frames of the whole run: the speech's length."""
        return self.timeline.speech

    @property
    def speech_start(self) -> int:
        """The synced frames made are speech frames [speech_start, speech_stop): those among the output frames
        delivered."""
        return min(max(self.output_range[0] - self.timeline.lead, 0), self.timeline.speech)

    @property
    def speech_stop(self) -> int:
        return min(max(self.output_range[1] - self.timeline.lead, 0), self.timeline.speech)

    @property
    def frames_to_sync(self) -> int:
        """The synced frames this run makes: all the speech's, or a segment's part of them."""
        return self.speech_stop - self.speech_start

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
        """The speech outlasts the video: frames are used again (ping-pong, loop or hold)."""
        return self.timeline.revisits

    @property
    def group_frames(self) -> int:
        """Frames decoded, aligned and denoised together (segments start at multiples of it)."""
        return self.chunk_size * self.memory.chunks_per_call


def open_inputs(video, audio, fps: float | None = None) -> tuple[FrameSource, np.ndarray, int]:
    """The frame source, the speech (16 kHz mono) and the number of video frames it lasts."""
    from ..audio import load_audio, require_video_frames

    source = open_source(video, fps)
    samples = load_audio(audio)
    return source, samples, require_video_frames(len(samples), source.fps)


def plan_run(models, options, video, audio, fps: float | None = None, segment=None) -> RunPlan:
    """The plan of a run of ``models`` with ``options`` (a ``PipelineOptions``), or of one ``segment`` of it (its
    frames, its whole clip's face track and batch sizes)."""
    whole, samples, speech = open_inputs(video, audio, fps)
    timeline = plan_timeline(options, whole.num_frames, whole.fps, speech)
    source = frames_from(whole, timeline.lead)
    output_range = (segment.start, segment.stop) if segment is not None else (0, timeline.total)
    if segment is not None:
        _check_segment(segment, timeline, models.chunk_size)
    hardware = detect_hardware(str(models.device))
    work = Workload(models.resolution, source.num_frames, (source.height, source.width), timeline.revisits,
                    attention=models.use_attention(options.attention, options.lip_focus),
                    guided=options.guidance_scale > 1.0, weights_on_gpu=models.bytes_on_gpu())
    memory = plan_memory(hardware, work, options, models.vram_model() if hardware.device == "cuda" else None)
    if segment is not None:  # the whole run's batch sizes, whatever this device would choose
        memory = memory.with_batches(segment.batches)
    for reason in memory.reasons:
        log.info("memory plan: %s", reason)
    warnings = ()
    if speech < models.chunk_size:
        warnings = (f"speech too short: it lasts {len(samples) / 16000:.2f} s, so the output has only {speech} "
                    f"synced frame(s); the model syncs {models.chunk_size} frames at a time: give at least "
                    f"{models.chunk_size / float(source.fps):.2f} s of speech",)
    return RunPlan(whole, source, samples, timeline, memory, models.chunk_size, output_range,
                   None if segment is None else segment.track, warnings)


def _check_segment(segment, timeline: Timeline, chunk_size: int) -> None:
    if not 0 <= segment.start < segment.stop <= timeline.total:
        raise ValueError(f"segment {segment.start}..{segment.stop} is outside the run's {timeline.total} frames")
    synced_start = segment.start - timeline.lead
    if 0 < synced_start < timeline.speech and synced_start % (chunk_size * segment.batches.chunks_per_call):
        raise ValueError(f"segment {segment.start}..{segment.stop} does not start at a batch of the run: take "
                         "segments from plan_split(...).segments(n)")
