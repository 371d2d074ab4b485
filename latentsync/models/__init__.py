"""The LatentSync 3D UNet (checkpoint-compatible with ``latentsync_unet.pt``) and its strict loader.

Modules: ``resnet`` (residual blocks, clip-wide GroupNorm, resampling), ``attention_layers`` (projections and
feed-forward around the attention backend call), ``transformer`` (spatial + audio attention), ``motion_module``
(temporal attention), ``embeddings`` (timestep), ``unet_blocks`` (stages), ``unet`` (the model), ``loading``.
"""

from .loading import (CheckpointCorruptError, CheckpointError, CheckpointMismatchError, load_unet,
                      load_unet_config)
from .unet import UNet3DConditionModel

__all__ = ["UNet3DConditionModel", "load_unet", "load_unet_config", "CheckpointError", "CheckpointCorruptError",
           "CheckpointMismatchError"]
