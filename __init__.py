"""LatentSync MEMSAFE: a ComfyUI custom node pack (exact, memory-safe LatentSync 1.5 / 1.6 lip-sync).

ComfyUI imports this file as the package of whatever folder it sits in (any name, dashes included); the nodes are
in ``comfyui/`` and the library in ``latentsync/``, both imported relatively, so two LatentSync packs can coexist.
"""

import logging

REQUIRED_COMFYUI = "0.3.64"  # the oldest ComfyUI the nodes are tested in: its comfy_api.latest has all they use

try:
    from .comfyui import comfy_entrypoint
except ImportError as error:
    if not (error.name or "").startswith("comfy_api"):
        raise
    logging.getLogger("latentsync.comfyui").error(
        "LatentSync MEMSAFE needs ComfyUI %s or newer (its comfy_api.latest node schema); update ComfyUI to load "
        "the LatentSync nodes", REQUIRED_COMFYUI)
    NODE_CLASS_MAPPINGS = {}  # loaded as an empty pack: nothing else in the server is affected
    __all__ = ["NODE_CLASS_MAPPINGS"]
else:
    __all__ = ["comfy_entrypoint"]
