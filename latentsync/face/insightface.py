"""InsightFace buffalo_l (the published face geometry): the SCRFD detector det_10g.onnx (det size 512) and the
2d106det landmarks, run with onnxruntime exactly as insightface's FaceAnalysis does for the reference (the
insightface package itself is not needed)."""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..checkpoints import BUFFALO_DIR, BUFFALO_FILES, DEFAULT_CHECKPOINTS
from .base import FaceDetector, anchors_from_landmarks
from .onnx_graph import first_node_names

log = logging.getLogger("latentsync.face")

# 106-point indices the reference averages (latentsync/utils/image_processor.py).
BROW1_106 = [43, 48, 49, 51, 50]
BROW2_106 = [101, 102, 103, 104, 105]
NOSE_106 = [74, 77, 83, 86]
# outputs of the detector -> (feature maps, strides, anchors per position), as insightface's SCRFD reads them
from ..vram import DETECTOR_ARENA  # noqa: E402

SCRFD_LAYOUTS = {6: (3, (8, 16, 32), 2), 9: (3, (8, 16, 32), 2), 10: (5, (8, 16, 32, 64, 128), 1),
                 15: (5, (8, 16, 32, 64, 128), 1)}


def _ort_providers(device: str) -> list:
    import onnxruntime as ort

    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(str(device).split(":")[1]) if ":" in str(device) else 0
        # its arena capped (and grown only as asked), so the VRAM model's constant for it holds
        return [("CUDAExecutionProvider", {"device_id": index, "gpu_mem_limit": DETECTOR_ARENA,
                                           "arena_extend_strategy": "kSameAsRequested"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class Buffalo:
    """The two onnxruntime sessions and what insightface reads off them when it loads them."""

    det: object
    lmk: object
    fmc: int  # feature maps per output kind
    strides: tuple
    anchors_per_position: int
    det_input: str
    lmk_mean: float
    lmk_std: float
    lmk_input: str
    lmk_size: int
    lmk_points: int
    centers: dict = field(default_factory=dict)  # (h, w, stride) -> anchor centres

    @classmethod
    def load(cls, folder: Path, device: str) -> "Buffalo":
        import onnxruntime as ort

        providers = _ort_providers(device)
        det = ort.InferenceSession(str(folder / "det_10g.onnx"), providers=providers)
        lmk = ort.InferenceSession(str(folder / "2d106det.onnx"), providers=providers)
        fmc, strides, anchors = SCRFD_LAYOUTS[len(det.get_outputs())]
        # insightface's Landmark: mxnet-converted models (Sub + Mul, or bn_data, among the first nodes) take raw
        # pixels, others (x - 127.5) / 128.
        names = first_node_names(folder / "2d106det.onnx")
        sub = any(n.startswith(("Sub", "_minus")) for n in names) or "bn_data" in names[:3]
        mul = any(n.startswith(("Mul", "_mul")) for n in names) or "bn_data" in names[:3]
        mean, std = (0.0, 1.0) if sub and mul else (127.5, 128.0)
        lmk_in = lmk.get_inputs()[0]
        log.info("insightface buffalo_l loaded from %s (%s)", folder, det.get_providers()[0])
        return cls(det, lmk, fmc, strides, anchors, det.get_inputs()[0].name, mean, std, lmk_in.name,
                   int(lmk_in.shape[3]), int(lmk.get_outputs()[0].shape[1]) // 2)


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
        self._models: Buffalo | None = None  # loaded on first use

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

    def _buffalo(self) -> Buffalo:
        with self._lock:
            if self._models is None:
                self._models = Buffalo.load(self.model_dir, self.device)
            return self._models

    def boxes(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every face box of a frame, as insightface's SCRFD.detect finds them (letterbox to det_size, distance
        decoding, NMS), highest score first: boxes (K, 4) and scores (K,), float32 frame pixels."""
        m = self._buffalo()
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
        outs = m.det.run(None, {m.det_input: blob})
        outs = [o[0] if o.ndim == 3 else o for o in outs]
        all_scores, all_boxes = [], []
        for i, stride in enumerate(m.strides):
            scores = outs[i].reshape(-1)
            dist = outs[i + m.fmc] * stride
            key = (size_h // stride, size_w // stride, stride)
            if key not in m.centers:
                gy, gx = np.mgrid[: key[0], : key[1]]
                c = (np.stack([gx, gy], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
                m.centers[key] = np.repeat(c, m.anchors_per_position, axis=0)
            c = m.centers[key]
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
        m = self._buffalo()
        size = m.lmk_size
        w, h = box[2] - box[0], box[3] - box[1]
        s = size / (max(w, h) * 1.5)  # float32 arithmetic on the float32 box, as insightface's
        cx, cy = (box[2] + box[0]) / 2 * s, (box[3] + box[1]) / 2 * s
        # insightface composes the crop with skimage transforms: the translation is taken in float64
        crop_m = np.array([[s, 0, size / 2 - np.float64(cx)], [0, s, size / 2 - np.float64(cy)]], np.float64)
        crop = cv2.warpAffine(img, crop_m, (size, size), borderValue=0.0)
        blob = cv2.dnn.blobFromImage(crop, 1.0 / m.lmk_std, (size, size), (m.lmk_mean,) * 3, swapRB=True)
        pred = m.lmk.run(None, {m.lmk_input: blob})[0][0].reshape(-1, 2)
        pred = pred[-m.lmk_points:].copy()
        pred += 1
        pred *= size // 2
        inv = cv2.invertAffineTransform(crop_m)
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
