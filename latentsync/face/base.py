"""The face detector interface: every face box of a frame, the three anchor points of one box, and the
reference's acceptance rules; frames are spread over a thread pool (the choice of face stays in frame order)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .choice import LargestFace


def usable_faces(boxes: np.ndarray, scores: np.ndarray, min_w: int = 50, min_h: int = 80,
                 aspect: tuple[float, float] = (0.2, 1.5), min_score: float = 0.5) -> list[int]:
    """Indices of the boxes the reference accepts: (int-truncated) w >= min_w, h >= min_h, aspect w/h within
    ``aspect``, score >= min_score."""
    kept = []
    for i, (box, score) in enumerate(zip(boxes, scores)):
        x1, y1, x2, y2 = box.astype(np.int_).tolist()
        w, h = x2 - x1, y2 - y1
        if w >= min_w and h >= min_h and aspect[0] <= w / h <= aspect[1] and score >= min_score:
            kept.append(i)
    return kept


def anchors_from_landmarks(lmk: np.ndarray, brow1, brow2, nose) -> np.ndarray:
    """Rounded landmarks -> rounded means of the three point sets, as float (3, 2)."""
    lmk = np.round(lmk).astype(np.int_)
    pts = [lmk[brow1].mean(axis=0), lmk[brow2].mean(axis=0), lmk[nose].mean(axis=0)]
    return np.round(pts).astype(np.float64)


class FaceDetector(ABC):
    """detect(frames uint8 (N, H, W, 3) RGB) -> list of (3, 2) float anchors or None, one per frame.

    A backend finds every face box of a frame (``boxes``) and the anchors of one box (``anchors``); which box a
    frame uses is the reference's rule (the largest usable one) unless a ``FaceTracker`` chooses."""

    name = "base"
    min_height = 80  # the reference's minimum box height for this backend's boxes

    def __init__(self, workers: int | None = None):
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    @abstractmethod
    def available(cls, checkpoints_dir: str | os.PathLike | None = None) -> tuple[bool, str]:
        """(usable here, reason)."""

    @abstractmethod
    def boxes(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every face box (K, 4) x1 y1 x2 y2 and its score (K,) in one RGB uint8 frame (H, W, 3)."""

    @abstractmethod
    def anchors(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The three anchor points (3, 2) of the face in ``box``."""

    def detect(self, frames, chooser=None) -> list[np.ndarray | None]:
        """Anchors per frame of the face ``chooser`` picks among the usable ones (default: the largest, the
        reference's rule); the chooser sees the frames in order."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"detect expects uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}")
        chooser = chooser or LargestFace()
        chosen = []
        for boxes, scores in self._map(self.boxes, frames):  # boxes in parallel, the choice in frame order
            pick = chooser.choose(boxes, usable_faces(boxes, scores, min_h=self.min_height))
            chosen.append(None if pick is None else boxes[pick])
        return self._map(lambda item: None if item[1] is None else self.anchors(*item), list(zip(frames, chosen)))

    def _map(self, work, items) -> list:
        if len(items) <= 1 or self.workers <= 1:
            return [work(item) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"face-{self.name}")
        return list(self._pool.map(work, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
