"""Stage 1 when the speech outlasts the video: its frames used again (the reference's ping-pong: forward, backward,
forward...; or loop, or hold: ``when_audio_is_longer``)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

from ..face.stage import AlignedBatch, no_face_error
from ..frames import ArraySource, FrameStore, frames_between
from .align import FaceAligner
from .control import Group, RunControl, spans
from .plan import RunPlan
from .threads import BufferPool


class PingPongAlign:
    """Align every source frame once, in order (as the reference does), keep the frames and face crops (in RAM or
    a disk cache, by the memory plan) and the small geometry (RAM), then replay them in the timeline's order. A
    segment crops only the batches of source frames it replays, where the whole clip's track puts the faces."""

    def __init__(self, plan: RunPlan, aligner: FaceAligner, control: RunControl, cache_dir: str | None = None):
        self.plan, self.aligner, self.control = plan, aligner, control
        self.cache_dir = cache_dir
        self.frames_with_face = 0

    def groups(self, pool: BufferPool) -> Iterator[Group]:
        plan = self.plan
        count, res, on_disk = plan.source.num_frames, self.aligner.faces.resolution, plan.memory.disk_cache
        in_ram = isinstance(plan.source, ArraySource)  # in-RAM frames are indexed where they are
        with contextlib.ExitStack() as stack:
            frames = None if in_ram else stack.enter_context(
                FrameStore(count, (plan.height, plan.width, 3), on_disk, self.cache_dir))
            crops = stack.enter_context(FrameStore(count, (3, res, res), on_disk, self.cache_dir))
            affine, has_face, anchors = self._record(pool, frames, crops)
            for start, stop in spans(plan.speech_start, plan.speech_stop, plan.group_frames):
                self.control.check()
                indices = [plan.timeline.source_index(i) for i in range(start, stop)]
                with self.control.times.measure("decode"):
                    buffer = pool.allocate((plan.group_frames, plan.height, plan.width, 3))[:len(indices)]
                    batch = plan.source.at(indices, buffer) if in_ram else frames.read(indices, buffer)
                    crop = torch.from_numpy(crops.read(indices)).to(self.aligner.faces.device)
                aligned = AlignedBatch(crop, affine[indices], has_face[indices], anchors[indices])
                self.frames_with_face += int(aligned.has_face.sum())
                yield Group(start, batch, aligned)

    def _record(self, pool: BufferPool, frames: FrameStore | None, crops: FrameStore) -> tuple:
        """Align the source frames once and keep them; the geometry (affine, has_face, anchors) of every frame."""
        plan, known, size = self.plan, self.plan.track, self.plan.group_frames
        count = plan.source.num_frames
        order = plan.timeline.source_index
        needed = None if known is None else {order(i) // size for i in range(plan.speech_start, plan.speech_stop)}
        affines, has_faces, anchors = [], [], []  # small: kept in RAM
        batches = frames_between(plan.source, 0, count, size, pool.allocate)
        try:
            while True:
                self.control.check()
                with self.control.times.measure("decode"):
                    position, batch = next(batches, (None, None))
                if batch is None:
                    break
                if needed is None or position // size in needed:
                    with self.control.times.measure("align"):
                        aligned = self.aligner.align(
                            batch, None if known is None else known.slice(position, position + len(batch)))
                        if frames is not None:
                            frames.write(position, batch)
                        crops.write(position, aligned.faces.cpu().numpy())
                    affines.append(aligned.affine)
                    has_faces.append(aligned.has_face)
                    anchors.append(aligned.anchors)
                pool.release(batch)
                self.control.report("align faces", position + len(batch), count)
        finally:
            batches.close()
        device = self.aligner.faces.device
        if known is None:
            geometry = torch.cat(affines), torch.cat(has_faces), np.concatenate(anchors)
        else:
            geometry = known.affine.to(device), known.has_face.to(device), known.anchors
        if not bool(geometry[1].any()):
            raise no_face_error(count)
        return geometry
