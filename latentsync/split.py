"""A run cut into segments that other processes (GPUs, machines) make, equal frame for frame to the whole run.

    count = frames_to_track(options, video, audio)             # how many source frames the run aligns
    anchors = detect_faces(models, options, video, a, b)       # parts of them, in parallel (largest-face choice)
    plan = plan_split(models, options, video, audio, anchors=) # the whole clip's face track and batch sizes
    for segment in plan.segments(n): ... LipSyncPipeline.run(..., segment=segment) anywhere, then join the files

A segment is made from the whole clip's face track, with the whole run's batch sizes (they decide float sums and
face-crop regions), its random generator replayed to the segment's start. Segments count output frames: video
kept before or after the speech (``audio_start``, ``when_video_is_longer keep``) joins the first and last ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from .engine.align import FaceAligner, run_aligner
from .engine.control import Progress, RunBatches, check_cancel, spans
from .engine.plan import open_inputs, plan_run
from .face.stage import FaceStage, FaceTrack, no_face_error
from .frames import frames_between, frames_from, open_source
from .memory_limiter import Batches
from .timeline import Timeline, lead_frames, plan_timeline

log = logging.getLogger("latentsync.pipeline")


@dataclass(frozen=True)
class Segment:
    """Output frames [start, stop) of a run, made exactly as the whole run makes them."""

    start: int
    stop: int
    track: FaceTrack  # of the source frames the whole run aligns
    batches: Batches  # of the whole run

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class SplitPlan:
    timeline: Timeline  # the output's frames: kept video before and after the speech, the synced ones
    fps: Fraction
    width: int
    height: int
    group_frames: int  # synced frames from the speech's first to a cut are a multiple of this
    track: FaceTrack
    batches: Batches

    @property
    def output_frames(self) -> int:
        return self.timeline.total

    @property
    def audio_delay(self) -> float | None:
        """As ``SyncedFrames.audio_delay``: for muxing the speech into the joined segments."""
        return self.timeline.audio_delay(self.fps)

    def segments(self, parts: int) -> list[Segment]:
        """At most ``parts`` segments of near-equal synced length, cut at multiples of ``group_frames`` of the
        speech; the first starts at the output's first frame, the last ends at its last."""
        speech, lead = self.timeline.speech, self.timeline.lead
        groups = -(-speech // self.group_frames)
        parts = max(1, min(parts, groups))
        cuts = [0] + [lead + round(k * groups / parts) * self.group_frames for k in range(1, parts)] + [
            self.output_frames]
        return [Segment(a, b, self.track, self.batches) for a, b in zip(cuts, cuts[1:])]


def frames_to_track(options, video, audio, fps: float | None = None) -> int:
    """How many source frames a run with ``options`` aligns (and ``plan_split`` wants anchors for), from its speech's
    first frame (``audio_start``) on: all of them when the speech outlasts the video, else as many as it lasts."""
    source, _, speech = open_inputs(video, audio, fps)
    return plan_timeline(options, source.num_frames, source.fps, speech).frames_to_track


def detect_faces(models, options, video, start: int, stop: int, *, fps: float | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """Anchors (stop - start, 3, 2) of the largest face in frames start .. stop - 1 of those the run tracks (counted
    from the speech's first frame, ``audio_start``; NaN where none): the detection of the default face choice, which
    looks at each frame alone, so parts of a clip can be detected in parallel and joined for ``plan_split``.
    (Following one person, ``face`` = N, is sequential.)"""
    if options.face:
        raise ValueError("detect_faces serves the largest-face choice (face = 0): face = N follows one person "
                         "from frame to frame, so its detection runs in order (plan_split)")
    faces = FaceStage(models.face_detector(options.detector), models.resolution)
    parts, position = [], start
    source = open_source(video, fps)
    source = frames_from(source, lead_frames(options.audio_start, source.fps, source.num_frames))
    batches = frames_between(source, start, stop, models.chunk_size)
    try:
        for position, batch in batches:
            check_cancel(should_cancel)
            parts.append(faces.locate(batch).anchors)  # its smoothing is not kept: plan_split smooths in order
            position += len(batch)
    finally:
        batches.close()
    if position < stop:
        raise ValueError(f"the video has {position} frames, fewer than the {stop} asked for")
    return np.concatenate(parts)


def plan_split(models, options, video, audio, *, fps: float | None = None, progress: Progress | None = None,
               should_cancel: Callable[[], bool] | None = None, anchors: np.ndarray | None = None) -> SplitPlan:
    """Detect and smooth the face geometry of the whole clip (no pixels warped, no denoising) and fix the batch
    sizes, so that the run can be cut into segments made anywhere.

    ``anchors``: the detections of every frame to track, from ``detect_faces`` over parts of the clip; only the
    smoothing is left to do then, and no frame is decoded."""
    plan = plan_run(models, options, video, audio, fps)
    count = plan.timeline.frames_to_track
    aligner = run_aligner(models, options, RunBatches(plan.memory), detect=anchors is None)
    if anchors is None:
        track = _detected_track(plan, aligner, count, progress or (lambda *_: None), should_cancel)
    else:
        if len(anchors) != count:
            raise ValueError(f"anchors for {len(anchors)} frames given; the run aligns {count}")
        rows = [None if np.isnan(points).any() else points for points in anchors]
        # the run's groups, each located in its face batches: the run's smoothing steps
        track = FaceTrack.concatenate([aligner.locate(None, rows[a:b]) for a, b in spans(0, count, plan.group_frames)])
    if not bool(track.has_face.any()):
        raise no_face_error(count)
    warning = aligner.close_calls_warning()
    if warning:
        log.warning("%s", warning)
    return SplitPlan(plan.timeline, plan.fps, plan.width, plan.height, plan.group_frames, track, plan.memory.batches)


def _detected_track(plan, aligner: FaceAligner, count: int, report: Progress, should_cancel) -> FaceTrack:
    parts = []
    batches = frames_between(plan.source, 0, count, plan.group_frames)
    try:
        for position, batch in batches:
            check_cancel(should_cancel)
            parts.append(aligner.locate(batch))
            report("track faces", position + len(batch), count)
    finally:
        batches.close()
    return FaceTrack.concatenate(parts)
