"""Stand-in for comfy_api.latest (see README.md): the V3 node schema's names the nodes use."""

from __future__ import annotations

from abc import ABC, abstractmethod

from . import _io as io  # noqa: F401 (ComfyUI exports these two namespaces)
from . import _ui as ui  # noqa: F401
from ._input_impl import VideoFromComponents, VideoFromFile
from ._util import VideoComponents


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        pass

    @abstractmethod
    async def get_node_list(self) -> list:
        ...


class InputImpl:
    VideoFromFile = VideoFromFile
    VideoFromComponents = VideoFromComponents


class Types:
    VideoComponents = VideoComponents
