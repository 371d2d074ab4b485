"""The same align / restore recipe, one frame at a time with OpenCV on the CPU.

Not used by the library: the cross-check of tests/test_face.py and the naive baseline of bench/bench_face.py.
Differences from the batched stage are the usual ones between OpenCV and torch kernels: cv2.warpAffine
quantises sample positions to 1/32 px, and cv2 INTER_CUBIC has no antialiasing (torchvision's resize, used by
the reference for the way back, has).
"""

from __future__ import annotations

import cv2
import numpy as np

from latentsync.face.geometry import FILL_VALUE, CropGeometry


def align_one(frame: np.ndarray, matrix: np.ndarray, resolution: int) -> np.ndarray:
    """frame uint8 (H, W, 3), matrix (2, 3) frame -> crop. Returns uint8 (R, R, 3)."""
    cw, ch = CropGeometry(resolution).crop_size
    crop = cv2.warpAffine(frame.astype(np.float32), np.asarray(matrix, np.float64), (cw, ch),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL_VALUE,) * 3)
    crop = crop.astype(np.uint8)  # truncation, as the reference's numpy cast
    return cv2.resize(crop, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)


def restore_one(frame: np.ndarray, face: np.ndarray, matrix: np.ndarray, fp16_inverse: bool = True) -> np.ndarray:
    """frame uint8 (H, W, 3), face float (R, R, 3) in [-1, 1], matrix (2, 3) frame -> crop. Returns uint8.
    fp16_inverse rounds the inverse matrix through float16, as the reference (float16 on the GPU) does."""
    h, w = frame.shape[:2]
    resolution = face.shape[0]
    cw, ch = CropGeometry(resolution).crop_size
    inv = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    if fp16_inverse:
        inv = inv.astype(np.float16).astype(np.float64)
    face = cv2.resize(face.astype(np.float32), (cw, ch), interpolation=cv2.INTER_CUBIC)
    inv_face = cv2.warpAffine(face, inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=(FILL_VALUE,) * 3)
    inv_face = np.clip(inv_face / 2 + 0.5, 0, 1) * 255
    mask = cv2.warpAffine(np.ones((ch, cw), np.float32), inv, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))
    pasted = mask[..., None] * inv_face
    w_edge = int(float(mask.sum()) ** 0.5) // 20
    center = cv2.erode(mask, np.ones((w_edge * 2, w_edge * 2), np.uint8))
    k = w_edge * 2 + 1
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    soft = cv2.GaussianBlur(center, (k, k), sigma)[..., None]
    return (soft * pasted + (1 - soft) * frame).astype(np.uint8)
