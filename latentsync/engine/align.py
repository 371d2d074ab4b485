"""Stage 1: decode -> detect / align, streamed in groups of the plan (ping-pong runs: ``pingpong.py``)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..face.stage import AlignedBatch, FaceStage, FaceTrack, no_face_error
from ..frames import frames_between
from .control import Group, RunBatches, RunControl, in_pieces
from .plan import RunPlan
from .threads import BufferPool


class FaceAligner:
    """The face stage in the run's face batches: an out-of-memory batch is redone smaller from the stage's state
    before it (its translation smoothing carries from frame to frame)."""

    def __init__(self, faces: FaceStage, batches: RunBatches):
        self.faces = faces
        self.batches = batches

    def align(self, frames: np.ndarray, known: FaceTrack | None = None) -> AlignedBatch:
        """Detect, fit and crop (a segment crops where the ``known`` track puts the faces)."""
        def crop(start: int, stop: int) -> AlignedBatch:
            part = frames[start:stop]
            return self.faces.crop(part, known.slice(start, stop) if known is not None else self.faces.locate(part))

        return _joined(self._pieces(len(frames), crop))

    def locate(self, frames: np.ndarray | None, anchors: list | None = None) -> FaceTrack:
        """The face track alone (no pixels move): detected in ``frames``, or smoothed from given ``anchors``."""
        count = len(frames) if frames is not None else len(anchors)
        return _joined(self._pieces(count, lambda a, b: self.faces.locate(
            None if frames is None else frames[a:b], None if anchors is None else anchors[a:b])))

    def close_calls_warning(self) -> str | None:
        close_calls = getattr(self.faces.chooser, "close_calls", 0)
        if not close_calls:
            return None
        return (f"{close_calls} frames had two faces of nearly the same size: the largest-face choice can jump between "
                "them; choose one with face = 1 (the leftmost), 2, ...")

    def _pieces(self, count: int, work) -> list:
        def rewound_on_error(start: int, stop: int):
            before = self.faces.snapshot()
            try:
                return work(start, stop)
            except BaseException:
                self.faces.rewind(before)
                raise

        return in_pieces(count, lambda: self.batches.plan.face_batch, rewound_on_error,
                         lambda error: self.batches.shrink("face", error))


def run_aligner(models, options, batches: RunBatches, detect: bool = True) -> FaceAligner:
    """The aligner of a run of ``models`` with ``options``: detecting (or, ``detect`` False, fitting given anchors
    or a known track only), with the run's face choice; its detector on the CPU in the tiers that offload."""
    detector = models.face_detector(options.detector, on_gpu=not batches.plan.offload) if detect else None
    return FaceAligner(FaceStage(detector, models.resolution, device=models.device, face=options.face), batches)


def _joined(parts: list):
    return parts[0] if len(parts) == 1 else type(parts[0]).concatenate(parts)


class StreamedAlign:
    """Decode and align the output frames in order, one group at a time (the audio is not longer than the video)."""

    def __init__(self, plan: RunPlan, aligner: FaceAligner, control: RunControl):
        self.plan, self.aligner, self.control = plan, aligner, control
        self.frames_with_face = 0

    def groups(self, pool: BufferPool) -> Iterator[Group]:
        plan, known, times = self.plan, self.plan.track, self.control.times
        self.control.report("detect faces", 0, plan.frames_to_sync)
        batches = frames_between(plan.source, plan.speech_start, plan.speech_stop, plan.group_frames, pool.allocate)
        try:
            while True:
                self.control.check()
                with times.measure("decode"):
                    start, batch = next(batches, (None, None))
                if batch is None:
                    return
                with times.measure("align"):
                    aligned = self.aligner.align(batch, None if known is None else
                                                 known.slice(start, start + len(batch)))
                self.frames_with_face += int(aligned.has_face.sum())
                if self.frames_with_face == 0 and known is None and start + len(batch) >= plan.speech_stop:
                    raise no_face_error(plan.speech_frames)  # the last frame aligned: fail before it is encoded
                yield Group(start, batch, aligned)
        finally:
            batches.close()
