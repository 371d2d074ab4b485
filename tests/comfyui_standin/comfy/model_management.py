"""Stand-in for comfy.model_management (see README.md): the loaded-model list, loading, unloading, interruption."""

from __future__ import annotations

import weakref

import torch

current_loaded_models: list["LoadedModel"] = []
_interrupted = False


class InterruptProcessingException(Exception):
    pass


def interrupt_current_processing(value: bool = True) -> None:
    global _interrupted
    _interrupted = value


def processing_interrupted() -> bool:
    return _interrupted


def throw_exception_if_processing_interrupted() -> None:
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise InterruptProcessingException()


def get_torch_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def soft_empty_cache(force: bool = False) -> None:
    pass


def get_free_memory(dev=None, torch_free_too=False):
    """ComfyUI's: free device memory, torch's cached free blocks included (the CPU here: free RAM)."""
    import psutil

    return psutil.virtual_memory().available


def minimum_inference_memory():
    """ComfyUI's reserve for inference: 0.8 GiB plus its extra reserve."""
    return int(0.8 * 1024 ** 3)


class LoadedModel:
    """Holds the patcher weakly, as ComfyUI does: the node cache owns the model."""

    def __init__(self, model):
        self._model = weakref.ref(model)
        self.device = model.load_device

    @property
    def model(self):
        return self._model()

    def model_unload(self, memory_to_free=None, unpatch_weights=True):
        self.model.detach(unpatch_weights)
        return True


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    for patcher in models:
        if not any(loaded.model is patcher for loaded in current_loaded_models):
            patcher.model.to(patcher.load_device)
            current_loaded_models.insert(0, LoadedModel(patcher))


def unload_all_models() -> None:
    while current_loaded_models:
        loaded = current_loaded_models.pop()
        if loaded.model is not None:  # a model whose owner dropped it is already gone (cleanup_models)
            loaded.model_unload()


def free_memory(memory_required, device, keep_loaded=()):
    pass
