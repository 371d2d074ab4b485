"""Face detector backends. Each returns, per RGB frame, the three anchor points (brow centre 1, brow centre 2,
nose centre; full-frame pixels, rounded as the reference rounds them) or None when no usable face is found.

- ``insightface``: the buffalo_l SCRFD detector (det_10g.onnx, det size 512) + 2d106det landmarks, run with
  onnxruntime exactly as insightface's FaceAnalysis does for the reference (no insightface package needed).
- ``dlib``: offline fallback, dlib's HOG frontal face detector + the 68-point shape predictor of the
  ``face_recognition_models`` package, mapped onto the same three anchors.
- ``auto``: insightface when its models are present, else dlib.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ..checkpoints import BUFFALO_DIR, BUFFALO_FILES, DEFAULT_CHECKPOINTS

log = logging.getLogger("latentsync.face")


# 106-point indices the reference averages (latentsync/utils/image_processor.py).
BROW1_106 = [43, 48, 49, 51, 50]
BROW2_106 = [101, 102, 103, 104, 105]
NOSE_106 = [74, 77, 83, 86]
# 68-point (iBUG) equivalents: the two 5-point brows, and for the nose the lower nose bridge (28, 29, 30). The
# template puts the nose anchor 20/41 = 0.49 brow-distances below the brow line, i.e. half-way down the nose
# bridge, not at the tip: on the demo clips {28, 29, 30} gives the smallest residual of the 3-point similarity fit
# onto the template (mean 9.0 px at R=512; tip + nostrils {30, 31, 33, 35}: 22.9 px; {31..35}: 26.2 px).
BROW1_68 = list(range(17, 22))
BROW2_68 = list(range(22, 27))
NOSE_68 = [28, 29, 30]


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


def _area(box: np.ndarray) -> int:
    x1, y1, x2, y2 = box.astype(np.int_).tolist()
    return (x2 - x1) * (y2 - y1)


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

    def detect_one(self, frame: np.ndarray) -> np.ndarray | None:
        """Anchors of the reference's face (the largest usable one) in one frame, or None."""
        return self.detect(frame[None])[0]

    def detect(self, frames, chooser: "LargestFace | FaceTracker | None" = None) -> list[np.ndarray | None]:
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


# ------------------------------------------------------------------------------------------------ insightface


def _onnx_first_node_names(path: Path, count: int = 8) -> list[str]:
    """Names of the first graph nodes of an ONNX file (ModelProto.graph=7 -> GraphProto.node=1 -> name=3),
    read straight from the protobuf wire format so the ``onnx`` package is not needed."""

    def fields(buf: memoryview):
        pos = 0
        while pos < len(buf):
            key, pos = _varint(buf, pos)
            num, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(buf, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                size, pos = _varint(buf, pos)
                yield num, buf[pos:pos + size]
                pos += size
            else:
                raise ValueError(f"unsupported protobuf wire type {wire} in {path}")

    data = memoryview(path.read_bytes())
    names: list[str] = []
    for num, graph in fields(data):
        if num != 7:
            continue
        for gnum, node in fields(graph):
            if gnum != 1:
                continue
            names.append(next((bytes(v).decode() for n, v in fields(node) if n == 3), ""))
            if len(names) >= count:
                return names
    return names


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _ort_providers(device: str) -> list:
    import onnxruntime as ort

    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(str(device).split(":")[1]) if ":" in str(device) else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class InsightFaceDetector(FaceDetector):
    """buffalo_l det_10g (SCRFD) + 2d106det through onnxruntime, as FaceAnalysis(allowed_modules=
    ["detection", "landmark_2d_106"]).prepare(det_size=(512, 512)) and the reference's FaceDetector.

    Like the reference, frames go to the models as given (the reference hands insightface RGB frames although
    insightface expects BGR; we do the same so the detections match)."""

    name = "insightface"
    det_size = (512, 512)
    det_thresh = 0.5
    nms_thresh = 0.4

    def __init__(self, checkpoints_dir=None, device: str = "cpu", workers: int | None = None):
        super().__init__(workers or 2)
        self.model_dir = self.model_dir_for(checkpoints_dir)
        ok, reason = self.available(checkpoints_dir)
        if not ok:
            raise FileNotFoundError(reason)
        self.device = device
        self._lock = threading.Lock()
        self._det = self._lmk = None

    @staticmethod
    def model_dir_for(checkpoints_dir) -> Path:
        return Path(checkpoints_dir or DEFAULT_CHECKPOINTS) / BUFFALO_DIR

    @classmethod
    def available(cls, checkpoints_dir=None) -> tuple[bool, str]:
        if importlib.util.find_spec("onnxruntime") is None:
            return False, "onnxruntime is not installed; run `pip install onnxruntime-gpu` (or onnxruntime)"
        folder = cls.model_dir_for(checkpoints_dir)
        missing = [n for n in BUFFALO_FILES if not (folder / n).is_file()]
        if missing:
            return False, (f"buffalo_l models not found at {folder} (missing {', '.join(missing)}); download them "
                           f"with: python -m latentsync.checkpoints download --dir {folder.parents[2]}")
        return True, f"buffalo_l models at {folder}"

    def _load(self):
        with self._lock:
            if self._det is not None:
                return
            import onnxruntime as ort

            providers = _ort_providers(self.device)
            det = ort.InferenceSession(str(self.model_dir / "det_10g.onnx"), providers=providers)
            lmk_path = self.model_dir / "2d106det.onnx"
            lmk = ort.InferenceSession(str(lmk_path), providers=providers)
            n_out = len(det.get_outputs())
            self._fmc, self._strides, self._anchors = {
                6: (3, (8, 16, 32), 2), 9: (3, (8, 16, 32), 2),
                10: (5, (8, 16, 32, 64, 128), 1), 15: (5, (8, 16, 32, 64, 128), 1)}[n_out]
            self._det_in = det.get_inputs()[0].name
            # insightface's Landmark: mxnet-converted models (Sub + Mul, or bn_data, among the first nodes)
            # take raw pixels, others (x - 127.5) / 128.
            names = _onnx_first_node_names(lmk_path)
            sub = any(n.startswith(("Sub", "_minus")) for n in names) or "bn_data" in names[:3]
            mul = any(n.startswith(("Mul", "_mul")) for n in names) or "bn_data" in names[:3]
            self._lmk_mean, self._lmk_std = (0.0, 1.0) if sub and mul else (127.5, 128.0)
            inp = lmk.get_inputs()[0]
            self._lmk_in, self._lmk_size = inp.name, int(inp.shape[3])
            self._lmk_num = int(lmk.get_outputs()[0].shape[1]) // 2
            self._centers: dict = {}
            self._lmk = lmk
            self._det = det
            log.info("insightface buffalo_l loaded from %s (%s)", self.model_dir, det.get_providers()[0])

    def boxes(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every face box of a frame, as insightface's SCRFD.detect finds them (letterbox to det_size, distance
        decoding, NMS), highest score first: boxes (K, 4) and scores (K,), float32 frame pixels."""
        if self._det is None:
            self._load()
        size_w, size_h = self.det_size
        h, w = img.shape[:2]
        if h / w > size_h / size_w:
            new_h, new_w = size_h, int(size_h / (h / w))
        else:
            new_w, new_h = size_w, int(size_w * (h / w))
        scale = new_h / h
        canvas = np.zeros((size_h, size_w, 3), np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(img, (new_w, new_h))
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128.0, (size_w, size_h), (127.5,) * 3, swapRB=True)
        outs = self._det.run(None, {self._det_in: blob})
        outs = [o[0] if o.ndim == 3 else o for o in outs]
        all_scores, all_boxes = [], []
        for i, stride in enumerate(self._strides):
            scores = outs[i].reshape(-1)
            dist = outs[i + self._fmc] * stride
            key = (size_h // stride, size_w // stride, stride)
            if key not in self._centers:
                gy, gx = np.mgrid[: key[0], : key[1]]
                c = (np.stack([gx, gy], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
                self._centers[key] = np.repeat(c, self._anchors, axis=0)
            c = self._centers[key]
            keep = np.where(scores >= self.det_thresh)[0]
            boxes = np.stack([c[:, 0] - dist[:, 0], c[:, 1] - dist[:, 1],
                              c[:, 0] + dist[:, 2], c[:, 1] + dist[:, 3]], axis=-1)
            all_scores.append(scores[keep])
            all_boxes.append(boxes[keep])
        scores = np.concatenate(all_scores)
        boxes = np.concatenate(all_boxes) / scale
        order = np.argsort(-scores, kind="stable")
        boxes, scores = boxes[order].astype(np.float32), scores[order].astype(np.float32)
        keep = _nms(boxes, scores, self.nms_thresh)
        return boxes[keep], scores[keep]

    def landmarks(self, img: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The 106 landmarks of the face in ``box``, as insightface's Landmark.get: a centred square crop of 1.5 x
        the box, the points mapped back to frame pixels. (106, 2) float32."""
        if self._det is None:
            self._load()
        size = self._lmk_size
        w, h = box[2] - box[0], box[3] - box[1]
        s = size / (max(w, h) * 1.5)  # float32 arithmetic on the float32 box, as insightface's
        cx, cy = (box[2] + box[0]) / 2 * s, (box[3] + box[1]) / 2 * s
        # insightface composes the crop with skimage transforms: the translation is taken in float64
        m = np.array([[s, 0, size / 2 - np.float64(cx)], [0, s, size / 2 - np.float64(cy)]], np.float64)
        crop = cv2.warpAffine(img, m, (size, size), borderValue=0.0)
        blob = cv2.dnn.blobFromImage(crop, 1.0 / self._lmk_std, (size, size), (self._lmk_mean,) * 3, swapRB=True)
        pred = self._lmk.run(None, {self._lmk_in: blob})[0][0].reshape(-1, 2)
        pred = pred[-self._lmk_num:].copy()
        pred += 1
        pred *= size // 2
        inv = cv2.invertAffineTransform(m)
        return (pred @ inv[:, :2].T + inv[:, 2]).astype(np.float32)

    def anchors(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        return anchors_from_landmarks(self.landmarks(frame, box), BROW1_106, BROW2_106, NOSE_106)


def _nms(dets: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """insightface's greedy NMS (+1 pixel area convention). Inputs sorted by descending score."""
    x1, y1, x2, y2 = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.arange(len(scores))
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


# ------------------------------------------------------------------------------------------------------- dlib


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


# ------------------------------------------------------------------------------------------------- face choice


class LargestFace:
    """The reference's choice: the largest usable face of each frame (the first of equal ones). Counts the frames
    where another face is nearly as large, where that choice can jump from one person to the other."""

    def __init__(self):
        self.close_calls = 0

    def choose(self, boxes: np.ndarray, usable: list[int]) -> int | None:
        areas = sorted((_area(boxes[i]) for i in usable), reverse=True)
        if len(areas) > 1 and areas[1] >= 0.9 * areas[0]:
            self.close_calls += 1
        best, best_area = None, 0
        for i in usable:
            if _area(boxes[i]) > best_area:
                best, best_area = i, _area(boxes[i])
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


# ---------------------------------------------------------------------------------------------------- factory

BACKENDS = {"insightface": InsightFaceDetector, "dlib": DlibDetector}


def available_detectors(checkpoints_dir=None) -> dict[str, tuple[bool, str]]:
    """name -> (usable here, reason), for verify_installation and the node's choices."""
    out = {name: cls.available(checkpoints_dir) for name, cls in BACKENDS.items()}
    usable = [n for n, (ok, _) in out.items() if ok]
    out["auto"] = (bool(usable), f"uses {usable[0]}" if usable else "no face detector is usable here")
    return out


def create_detector(name: str = "auto", checkpoints_dir=None, device: str = "cpu", **kwargs) -> FaceDetector:
    """Build a detector by name: 'insightface', 'dlib' or 'auto' (insightface when its models are present,
    else dlib; the choice is logged)."""
    if name == "auto":
        ok, reason = InsightFaceDetector.available(checkpoints_dir)
        if ok:
            log.info("face detector: insightface (%s)", reason)
            return InsightFaceDetector(checkpoints_dir, device=device, **kwargs)
        dlib_ok, dlib_reason = DlibDetector.available()
        if not dlib_ok:
            raise RuntimeError(f"No face detector is usable: {reason}; {dlib_reason}.")
        log.warning("face detector: dlib fallback, because %s", reason)
        return DlibDetector(**kwargs)
    if name == "insightface":
        return InsightFaceDetector(checkpoints_dir, device=device, **kwargs)
    if name == "dlib":
        return DlibDetector(**kwargs)
    raise ValueError(f"Unknown face detector {name!r}; choose one of 'auto', 'insightface', 'dlib'.")
