"""The ComfyUI front: the two nodes in ComfyUI's V3 schema, registered through ``comfy_entrypoint``.

Imported only inside ComfyUI (by the pack's root ``__init__.py``), so ComfyUI's modules are imported directly. The
library (``latentsync/``) knows nothing of ComfyUI and loads only when a node first runs.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .model import register_model_folder
from .nodes import LatentSyncLipSync, LatentSyncModelLoader
from .prompt import register_prompt_handler


class LatentSyncExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LatentSyncModelLoader, LatentSyncLipSync]


async def comfy_entrypoint() -> LatentSyncExtension:
    register_model_folder()
    register_prompt_handler(LatentSyncLipSync)
    return LatentSyncExtension()
