"""Stand-in for comfy.model_patcher.ModelPatcher (see README.md): size, devices, detach to the offload device."""

from __future__ import annotations


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.parent = None
        self.model_size()

    def model_size(self) -> int:
        if self.size == 0:
            self.size = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        return self.size

    def detach(self, unpatch_all=True):
        self.model.to(self.offload_device)
        return self.model
