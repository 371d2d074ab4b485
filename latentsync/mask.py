"""The fixed mouth mask the published checkpoints were trained with."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

MASK_PATH = Path(__file__).resolve().parent / "assets" / "mask.png"


@lru_cache(maxsize=4)
def load_mouth_mask(resolution: int, path: str | None = None) -> np.ndarray:
    """The mask at ``resolution`` as float32 (3, R, R) in [0, 1]: 0 on the mouth (regenerated), 1 elsewhere.

    Resized with Lanczos as the reference does (cv2 INTER_LANCZOS4 on the RGB image, then / 255).
    """
    import cv2

    image = cv2.imread(str(path or MASK_PATH), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"mouth mask image not found or unreadable: {path or MASK_PATH}")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    mask = np.ascontiguousarray((image.astype(np.float64) / 255.0).astype(np.float32).transpose(2, 0, 1))
    mask.setflags(write=False)  # cached and shared: callers must copy before changing it
    return mask


def mouth_region(path: str | Path | None = None):
    """The mask at its native size as a (H, W) bool tensor, True on the mouth (pixel value < 128)."""
    import cv2
    import torch

    image = cv2.imread(str(path or MASK_PATH), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"mouth mask image not found or unreadable: {path or MASK_PATH}")
    return torch.from_numpy(image < 128)


def feathered(mask: np.ndarray, feather: int) -> np.ndarray:
    """``mask`` (C, R, R) with its mouth edge softened over ``feather`` pixels on each side: a smooth ramp from the
    original face to the generated mouth across the edge; pixels farther than ``feather`` from the edge keep their
    value. 0 returns ``mask`` itself (the published hard blend)."""
    import cv2

    if feather <= 0:
        return mask
    mouth = (mask[0] < 0.5).astype(np.uint8)
    # distance of each pixel centre to the nearest pixel of the other side; the edge lies half a pixel in between
    inside = cv2.distanceTransform(mouth, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform(1 - mouth, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    signed = np.where(mouth > 0, inside - 0.5, 0.5 - outside)  # > 0 inside the mouth
    ramp = np.clip((signed + feather) / (2.0 * feather), 0.0, 1.0)
    mouth_weight = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no kink where the ramp meets the flat parts
    near = np.abs(signed) < feather
    result = mask.copy()
    result[:, near] = (1.0 - mouth_weight[near]).astype(mask.dtype)
    return result


def mouth_weight(resolution: int, feather: int = 0) -> np.ndarray:
    """The generated mouth's weight (R, R) in the final blend of a face crop: 1 - the (feathered) mask."""
    return 1.0 - feathered(load_mouth_mask(resolution), feather)[0]
