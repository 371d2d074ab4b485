"""LiveBytes: the bytes of live tensor storages made under it, their peak, and the stage that set the peak.

It counts real tensors and FakeTensorMode's fake ones alike (a fake storage has its size, not its data), so the GPU
side of a run can be counted at full size on the CPU in seconds. torch's ``MemTracker`` does the same per module;
this one names the pipeline stage at the peak, keeps a peak per stage, and walks no module tree on every op.

No import of the rest of the package: the published implementation is counted with this file in a process where
``latentsync`` is its own package.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

# CUDA's caching allocator hands out blocks in multiples of 512 bytes (c10/cuda/CUDACachingAllocator.cpp, kMinBlockSize)
BLOCK = 512


def block_bytes(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


class LiveBytes(TorchDispatchMode):
    """Enter it around the work to count; ``add`` what was on the device before (weights, inputs)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.stage = "other"
        self.peak_stage = "other"
        self.stage_peaks: dict[str, int] = {}
        self._storages = WeakIdKeyDictionary()

    def add(self, *tensors) -> None:
        """Count tensors made before (parameters, a module's state, inputs), once each storage."""
        for value in tensors:
            for leaf in tree_leaves(value):
                if isinstance(leaf, torch.Tensor):
                    self._track(leaf)
        self._note()

    def add_module(self, module: torch.nn.Module) -> None:
        self.add(list(module.parameters()), list(module.buffers()))

    def ignore(self, *modules: torch.nn.Module) -> None:
        """Never count these modules' weights, not even through views of them that ops return (a transposed
        Linear weight): the model adds the weights on the GPU itself, per memory tier."""
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                self._storages[tensor.untyped_storage()] = None

    @contextlib.contextmanager
    def in_stage(self, name: str):
        """Ops in the block belong to stage ``name``."""
        before, self.stage = self.stage, name
        try:
            self._note()
            yield
        finally:
            self.stage = before

    @contextlib.contextmanager
    def stages(self, modules: dict[str, torch.nn.Module]):
        """While one of ``modules`` runs forward, its ops belong to the stage of its name."""
        handles, outer = [], []

        def enter(name):
            def hook(*_):
                outer.append(self.stage)
                self.stage = name
            return hook

        def leave(*_):
            self.stage = outer.pop()

        for name, module in modules.items():
            handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        self._note()
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._storages:
            return
        size = block_bytes(storage.nbytes())
        self.live += size
        self._storages[storage] = weakref.ref(storage, lambda _, size=size: self._free(size))

    def _free(self, size: int) -> None:
        self.live -= size

    def _note(self) -> None:
        if self.live > self.stage_peaks.get(self.stage, -1):
            self.stage_peaks[self.stage] = self.live
        if self.live > self.peak:
            self.peak, self.peak_stage = self.live, self.stage
