"""LatentSync MEMSAFE: exact, memory-safe LatentSync 1.5 / 1.6 inference.

    from latentsync import LipSyncModels, LipSyncPipeline, PipelineOptions

    models = LipSyncModels.load("1.6")                       # once; reused across runs
    result = LipSyncPipeline(models, PipelineOptions(seed=7)).run("talk.mp4", "speech.wav", "synced.mp4")

Importing this package is cheap; heavy modules (torch models, whisper, face detectors) load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.4.0"  # pyproject.toml's [project] version

_EXPORTS = {
    "LipSyncModels": "model_set", "ModelChoice": "model_set",
    "LipSyncPipeline": "pipeline", "RunResult": "engine.run",
    "PipelineOptions": "options",
    "Segment": "split", "SplitPlan": "split", "Line": "scene",
    "LatentSyncError": "errors", "Cancelled": "errors", "NoFaceError": "errors", "MediaError": "errors",
    "OutOfMemory": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The exports, imported on first use: every front imports a submodule (``latentsync.options`` first), which
    runs this file, and plain imports here would load torch and the pipeline before a flag is checked."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
