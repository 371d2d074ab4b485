"""dlib: the offline fallback detector. Its HOG frontal face detector and the 68-point shape predictor of the
``face_recognition_models`` package, mapped onto the reference's three anchors (close to insightface's, not equal)."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import cv2
import numpy as np

from .base import FaceDetector, anchors_from_landmarks

# 68-point (iBUG) equivalents: the two 5-point brows, and for the nose the lower nose bridge (28, 29, 30). The
# template puts the nose anchor 20/41 = 0.49 brow-distances below the brow line, i.e. half-way down the nose
# bridge, not at the tip: on the demo clips {28, 29, 30} gives the smallest residual of the 3-point similarity fit
# onto the template (mean 9.0 px at R=512; tip + nostrils {30, 31, 33, 35}: 22.9 px; {31..35}: 26.2 px).
BROW1_68 = list(range(17, 22))
BROW2_68 = list(range(22, 27))
NOSE_68 = [28, 29, 30]


def _dlib_predictor_path() -> Path | None:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    return path if path.is_file() else None


class DlibDetector(FaceDetector):
    """dlib HOG detector on a copy downscaled to ``max_side`` (retried with 2x upsampling when nothing is found),
    68-point shape predictor on the full-resolution frame. dlib boxes are square and about 0.8x the height of
    insightface boxes, so the minimum height is scaled to 64 px; other filters as the reference."""

    name = "dlib"
    min_height = 64  # dlib's square boxes are ~0.8x the height of insightface's

    def __init__(self, max_side: int = 640, workers: int | None = None):
        super().__init__(workers)
        ok, reason = self.available()
        if not ok:
            raise ImportError(reason)
        import dlib

        self.max_side = max_side
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(_dlib_predictor_path()))
        self._local = threading.local()

    @classmethod
    def available(cls, checkpoints_dir=None) -> tuple[bool, str]:
        if importlib.util.find_spec("dlib") is None:
            return False, "dlib is not installed; run `pip install dlib-bin face_recognition_models`"
        if _dlib_predictor_path() is None:
            return False, "the 68-point predictor is missing; run `pip install face_recognition_models`"
        return True, "dlib HOG detector + 68-point predictor (face_recognition_models)"

    def _detector(self):
        det = getattr(self._local, "det", None)
        if det is None:
            det = self._local.det = self._dlib.get_frontal_face_detector()
        return det

    def boxes(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = frame.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = frame if s == 1.0 else cv2.resize(frame, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        small = np.ascontiguousarray(small)
        det = self._detector()
        rects, _, _ = det.run(small, 0, 0.0)
        if len(rects) == 0:
            rects, _, _ = det.run(small, 1, 0.0)
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float64) / s
        return boxes.reshape(-1, 4), np.ones(len(boxes))  # HOG scores are not probabilities: every box counts

    def anchors(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = np.round(box).astype(int).tolist()
        shape = self._predictor(np.ascontiguousarray(frame), self._dlib.rectangle(x1, y1, x2 - 1, y2 - 1))
        lmk = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
        return anchors_from_landmarks(lmk, BROW1_68, BROW2_68, NOSE_68)
