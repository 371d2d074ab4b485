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
