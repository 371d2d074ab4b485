"""Stage 3: the synced faces pasted back into their frames, in place, in the run's face batches."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

from ..face.stage import FaceStage
from .control import Group, RunBatches, RunControl, in_pieces


class Restore:
    """``mouth`` (R, R), the generated mouth's weight in a face crop: each group also gets its frames' mouth masks."""

    def __init__(self, faces: FaceStage, batches: RunBatches, control: RunControl, mouth: np.ndarray | None = None):
        self.faces, self.batches, self.control = faces, batches, control
        self.mouth = mouth

    def groups(self, groups: Iterator[Group]) -> Iterator[Group]:
        with contextlib.closing(groups):  # closed with this stage, not whenever it is collected: its thread joins
            for group in groups:
                if group.synced is not None:
                    with self.control.times.measure("restore"):
                        self._restore(group)
                yield group

    def _restore(self, group: Group) -> None:
        if self.mouth is not None:
            group.mouth = np.zeros(group.frames.shape[:3], dtype=np.uint8)

        def paste(start: int, stop: int) -> None:
            part = group.frames[start:stop]
            self.faces.restore(part, group.synced[start:stop], group.aligned.slice(start, stop), out=part,
                               mouth=self.mouth, mouth_out=None if group.mouth is None else group.mouth[start:stop])

        in_pieces(len(group.frames), lambda: self.batches.plan.face_batch, paste,
                  lambda error: self.batches.shrink("face", error))
