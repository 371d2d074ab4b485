"""Face stage: detection backends, LatentSync 1.6 alignment, soft restore.

Cheap to import: detectors and torch work load on use.
"""

from __future__ import annotations

_EXPORTS = {
    "FaceDetector": "detectors", "InsightFaceDetector": "detectors", "DlibDetector": "detectors",
    "create_detector": "detectors", "available_detectors": "detectors",
    "CropGeometry": "geometry",
    "FaceStage": "stage", "AlignedBatch": "stage", "FaceTrack": "stage", "NoFaceError": "stage",
    "no_face_error": "stage",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
