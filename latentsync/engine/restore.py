"""Stage 3: the synced faces pasted back into their frames, in place, in the run's face batches."""

from __future__ import annotations

from typing import Iterator

from ..face import FaceStage
from .control import Group, RunBatches, RunControl, in_pieces


class Restore:
    def __init__(self, faces: FaceStage, batches: RunBatches, control: RunControl):
        self.faces, self.batches, self.control = faces, batches, control

    def groups(self, groups: Iterator[Group]) -> Iterator[Group]:
        for group in groups:
            if group.synced is not None:
                with self.control.times.measure("restore"):
                    self._restore(group)
            yield group

    def _restore(self, group: Group) -> None:
        def paste(start: int, stop: int) -> None:
            part = group.frames[start:stop]
            self.faces.restore(part, group.synced[start:stop], group.aligned.slice(start, stop), out=part)

        in_pieces(len(group.frames), lambda: self.batches.plan.face_batch, paste,
                  lambda error: self.batches.shrink("face", error))
