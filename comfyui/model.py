"""The LATENTSYNC_MODEL value: LatentSync's weights under ComfyUI's model management (a ModelPatcher), found in
ComfyUI's ``latentsync`` model folders."""

from __future__ import annotations

import contextlib
import os

import comfy.model_management as model_management
import folder_paths
import torch
from comfy.model_patcher import ModelPatcher

MODEL_FOLDER = "latentsync"  # models/latentsync, and any "latentsync:" entry of extra_model_paths.yaml


def register_model_folder() -> None:
    """Make ``models/latentsync`` a ComfyUI model folder (appended to what extra_model_paths.yaml gave it)."""
    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def checkpoint_dirs() -> list[str]:
    """Where the loader looks for checkpoints first: ComfyUI's latentsync folders, in its order."""
    register_model_folder()  # idempotent; covers folders set after the pack was imported
    return folder_paths.get_folder_paths(MODEL_FOLDER)


def load(version: str, precision: str, device: str) -> "LatentSyncModel":
    from ..latentsync.model_set import LipSyncModels
    from .progress import NodeProgress

    compute = torch.device("cpu") if device == "cpu" else model_management.get_torch_device()
    models = LipSyncModels.load(
        version, checkpoint_dirs(), unet_config=os.environ.get("LATENTSYNC_UNET_CONFIG"), device=compute,
        precision=precision, weights_device=model_management.unet_offload_device(), progress=NodeProgress(None))
    return LatentSyncModel(models)


class LatentSyncModel:
    """The loader node's output: the weights and ComfyUI's ModelPatcher over them.

    ComfyUI's node cache holds this object: "Unload models" moves the weights to the offload device, "Free model
    and node cache" (POST /free) drops the cache and with it the weights, RAM included. Nothing else keeps it.
    """

    def __init__(self, models):
        self.models = models
        holder = torch.nn.Module()  # one container ModelPatcher can size, move and annotate
        for name, module in models.modules().items():
            holder.add_module(name, module)
        self.patcher = ModelPatcher(holder, load_device=models.device,
                                    offload_device=model_management.unet_offload_device())

    @contextlib.contextmanager
    def in_use(self, release_after: bool):
        """The weights on the compute device for the block (ComfyUI makes room by unloading its other models);
        ``release_after`` hands the VRAM back when the block ends, whatever happened."""
        model_management.load_models_gpu([self.patcher], force_full_load=True)
        for module in self.models.modules().values():  # whatever ComfyUI did (partial loads), all on the device
            if any(p.device != _concrete(self.models.device, p.device) for p in module.parameters()):
                module.to(self.models.device)
        try:
            yield self.models
        finally:
            if release_after:
                self.release_vram()

    def release_vram(self) -> None:
        loaded = model_management.current_loaded_models
        for index in range(len(loaded) - 1, -1, -1):
            if loaded[index].model is self.patcher:
                loaded.pop(index).model_unload()
        model_management.soft_empty_cache()

    def free_vram(self) -> int | None:
        """Bytes ComfyUI says are free on the compute device after its own reserve (None on the CPU): the VRAM
        plan's budget, beside the weights just loaded."""
        if self.models.device.type != "cuda":
            return None
        free = model_management.get_free_memory(self.models.device) - model_management.minimum_inference_memory()
        return max(0, int(free))


def _concrete(wanted, actual):
    """``wanted`` with the index ``actual`` has when ``wanted`` names none (cuda == cuda:0 for this check)."""
    wanted = torch.device(wanted)
    if wanted.type == actual.type and wanted.index is None:
        return actual
    return wanted
