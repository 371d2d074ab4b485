"""LatentSync MEMSAFE: exact, memory-safe LatentSync 1.5 / 1.6 inference.

Importing this package is cheap; heavy modules (torch models, whisper, face detectors) load on use.
"""

__version__ = "0.1.0"
