"""The face detectors by name, and the factory. Each returns, per RGB frame, the three anchor points (brow centre 1,
brow centre 2, nose centre; full-frame pixels, rounded as the reference rounds them) or None when no usable face is
found.

- ``insightface`` (``insightface.py``): buffalo_l, the published geometry.
- ``dlib`` (``dlib_detector.py``): the offline fallback.
- ``auto``: insightface when its models are present, else dlib.
"""

from __future__ import annotations

import logging

from .base import FaceDetector
from .dlib_detector import DlibDetector
from .insightface import InsightFaceDetector

log = logging.getLogger("latentsync.face")

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
