"""Which face of a frame is synced: the reference's largest face, or one person followed through the clip."""

from __future__ import annotations

import numpy as np


def box_area(box: np.ndarray) -> int:
    x1, y1, x2, y2 = box.astype(np.int_).tolist()
    return (x2 - x1) * (y2 - y1)


class LargestFace:
    """The reference's choice: the largest usable face of each frame (the first of equal ones). Counts the frames
    where another face is nearly as large, where that choice can jump from one person to the other."""

    def __init__(self):
        self.close_calls = 0

    def choose(self, boxes: np.ndarray, usable: list[int]) -> int | None:
        areas = sorted((box_area(boxes[i]) for i in usable), reverse=True)
        if len(areas) > 1 and areas[1] >= 0.9 * areas[0]:
            self.close_calls += 1
        best, best_area = None, 0
        for i in usable:
            if box_area(boxes[i]) > best_area:
                best, best_area = i, box_area(boxes[i])
        return best

    def state(self):
        return self.close_calls

    def restore(self, state) -> None:
        self.close_calls = state


class FaceTracker:
    """Follows one person through a clip: the ``index``-th usable face from the left (1 = leftmost) in the first
    frame that has that many, then in each frame the usable face nearest to where it was last seen, when its centre
    moved less than half that face's size; otherwise the frame has no chosen face (it passes through unchanged)."""

    def __init__(self, index: int):
        if index < 1:
            raise ValueError(f"a face position counts from 1 (the leftmost face), got {index}")
        self.index = index
        self.last: np.ndarray | None = None  # the followed face's last box

    def choose(self, boxes: np.ndarray, usable: list[int]) -> int | None:
        if not usable:
            return None
        candidates = boxes[usable]
        centres = (candidates[:, :2] + candidates[:, 2:]) / 2
        if self.last is None:
            if len(usable) < self.index:
                return None
            pick = int(np.argsort(centres[:, 0], kind="stable")[self.index - 1])
        else:
            distances = np.linalg.norm(centres - (self.last[:2] + self.last[2:]) / 2, axis=1)
            pick = int(np.argmin(distances))
            if distances[pick] > 0.5 * max(self.last[2] - self.last[0], self.last[3] - self.last[1]):
                return None
        self.last = candidates[pick].copy()
        return usable[pick]

    def state(self):
        return None if self.last is None else self.last.copy()

    def restore(self, state) -> None:
        self.last = state
