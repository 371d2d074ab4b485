"""LatentSync MEMSAFE: a ComfyUI custom node package (exact, memory-safe LatentSync 1.5 / 1.6 lip-sync).

ComfyUI imports this file as the package of whatever folder it sits in (any name, dashes included). Importing it
is cheap: no torch, no models; only relative imports, so two LatentSync node packs can coexist.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
