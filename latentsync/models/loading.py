"""Strict loading of LatentSync UNet checkpoints.

Accepted files: the published ``latentsync_unet.pt`` (``torch.load`` gives ``{"state_dict": {...}, ...}``), a bare
state dict saved with ``torch.save``, or ``.safetensors`` (tensors optionally under a ``model.`` prefix).
The model is built on the meta device and takes the checkpoint tensors as its parameters (``assign=True``),
so the weights are held in host RAM once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml

from ..errors import CheckpointCorruptError, CheckpointError, unsafe_pickle  # noqa: F401 (raised here)
from .unet import UNet3DConditionModel

SHOWN = 5  # keys listed per category in a mismatch message


class CheckpointMismatchError(CheckpointError):
    """The file is readable but its tensors do not fit the configured model."""

    def __init__(self, path, missing: list[str], unexpected: list[str], mis_shaped: list[str]):
        self.missing, self.unexpected, self.mis_shaped = missing, unexpected, mis_shaped
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if keys:
                more = f", ... ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
                parts.append(f"{len(keys)} {label} key(s): {', '.join(keys[:SHOWN])}{more}")
        super().__init__(f"{path} does not match the LatentSync UNet config: " + "; ".join(parts)
                         + ". Check that the file is a LatentSync UNet for this config (1.5: stage2.yaml, "
                           "1.6: stage2_512.yaml) and re-download it if it is.")


def load_unet_config(path: str | Path) -> dict:
    """The model config: the ``model:`` section of a yaml (``configs/unet/*.yaml``), or a json of the config."""
    path = Path(path)
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a UNet config mapping")
    config = data.get("model", data.get("config", data))
    if not isinstance(config, dict) or "block_out_channels" not in config:
        raise ValueError(f"{path} has no UNet model config (expected a 'model:' section)")
    config = dict(config)
    for key in ("norm_eps", "mid_block_scale_factor"):  # yaml reads '1e-5' as a string
        if isinstance(config.get(key), str):
            config[key] = float(config[key])
    return config


def _read_tensors(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"UNet checkpoint not found: {path}. Download latentsync_unet.pt from the Hugging "
                                f"Face repository ByteDance/LatentSync-1.6 (512 px) or LatentSync-1.5 (256 px).")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            tensors = load_file(str(path), device="cpu")
            if any(k.startswith("model.") for k in tensors):
                tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
            return tensors
        try:  # memory-mapped: pages are read as the weights are used or moved
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if unsafe_pickle(exc):
            raise CheckpointCorruptError(
                f"{path} is not a safe checkpoint: it holds Python objects besides its weights, which are never "
                "loaded here (they could run code); download the official one with python -m "
                "latentsync.checkpoints download") from None
        # One sentence; torch's own (long, multi-line) message stays available as the cause.
        raise CheckpointCorruptError(f"cannot read the UNet checkpoint {path}: the file is damaged, truncated or "
                                     f"not a checkpoint ({type(exc).__name__}); re-download it.") from exc
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointCorruptError(f"{path} holds no UNet state dict (expected a dict of tensors or "
                                     f"{{'state_dict': ...}}); re-download latentsync_unet.pt.")
    return data


def _checked(checkpoint_path, config_path_or_dict) -> tuple[UNet3DConditionModel, Mapping[str, torch.Tensor]]:
    """The configured model on the meta device and the checkpoint's tensors, verified to fit each other."""
    config = (dict(config_path_or_dict) if isinstance(config_path_or_dict, Mapping)
              else load_unet_config(config_path_or_dict))
    path = Path(checkpoint_path)
    tensors = _read_tensors(path)
    with torch.device("meta"):
        model = UNet3DConditionModel(**config)
    check_state_dict(model, tensors, path)
    return model, tensors


def check_state_dict(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path) -> None:
    """Raise ``CheckpointMismatchError`` unless ``tensors`` has exactly the model's names and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mis_shaped = [f"{k} {tuple(tensors[k].shape)} != {shape}" for k, shape in expected.items()
                  if k in tensors and tuple(tensors[k].shape) != shape]
    if missing or unexpected or mis_shaped:
        raise CheckpointMismatchError(path, missing, unexpected, mis_shaped)


def load_unet(checkpoint_path: str | Path, config_path_or_dict: str | Path | Mapping,
              device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> UNet3DConditionModel:
    """Build the configured UNet and load a checkpoint into it strictly; returns it in eval mode, no grads."""
    model, tensors = _checked(checkpoint_path, config_path_or_dict)
    model.load_state_dict(tensors, strict=True, assign=True)
    del tensors
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def check_unet_file(checkpoint_path: str | Path, config_path_or_dict: str | Path | Mapping) -> int:
    """Validate a checkpoint against the config without loading it (memory-mapped); returns its tensor count."""
    _, tensors = _checked(checkpoint_path, config_path_or_dict)
    return len(tensors)
