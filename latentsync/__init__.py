"""LatentSync MEMSAFE: exact, memory-safe LatentSync 1.5 / 1.6 inference.

    from latentsync import LipSyncModels, LipSyncPipeline, PipelineOptions

    models = LipSyncModels.load("1.6")                       # once; reused across runs
    result = LipSyncPipeline(models, PipelineOptions(seed=7)).run("talk.mp4", "speech.wav", "synced.mp4")

Importing this package is cheap; heavy modules (torch models, whisper, face detectors) load on first use.
"""

from __future__ import annotations

from .lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _EXPORTS)
