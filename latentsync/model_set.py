"""LipSyncModels: the weights of one LatentSync version, loaded once and reused across runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .checkpoints import VERSIONS, CheckpointSet, locate
from .engine.control import Progress
from .mask import load_mouth_mask
from .memory_limiter import Workload, detect_hardware, plan_memory
from .options import LOAD, check_all

log = logging.getLogger("latentsync.pipeline")

PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class LipSyncModels:
    """The weights, loaded once and reused across runs; per-run choices (attention kernel, face detector) are
    applied to them without reloading anything."""

    checkpoints: CheckpointSet | None
    unet: torch.nn.Module
    vae: torch.nn.Module
    audio_encoder: object
    device: torch.device
    dtype: torch.dtype
    resolution: int
    chunk_size: int
    _detectors: dict = field(default_factory=dict, repr=False)
    _attention: tuple | None = field(default=None, repr=False)  # (mode, lip_focus, backend name) in use
    _compiled: dict = field(default_factory=dict, repr=False)  # (compile option, attention in use) -> CompiledCalls
    _vram: object = field(default=None, repr=False)

    @classmethod
    def load(cls, version: str = LOAD["version"].default, checkpoint_dirs=None, *, unet_config=None,
             device: str | torch.device | None = None, precision: str = LOAD["precision"].default,
             weights_device: str | torch.device | None = None, resolution: int | None = None,
             progress: Progress | None = None) -> "LipSyncModels":
        """Find the checkpoints (no download: a missing file is one sentence with the download command) and load
        the UNet, VAE and Whisper encoder for ``device`` (default: the best one here) in ``precision``.

        ``weights_device``: where the weights are put now (default ``device``); a host that moves them to the
        compute device itself when a run starts (ComfyUI's model management) loads them on its offload device.
        ``resolution``: the face size in pixels (default: the UNet config's ``data.resolution``)."""
        from .audio import WhisperEncoder
        from .models.loading import load_unet, load_unet_config
        from .vae import load_vae

        check_all(LOAD, {"version": version, "precision": precision})
        found = locate(version, checkpoint_dirs, unet_config=unet_config)
        config = yaml.safe_load(Path(found.unet_config).read_text())
        chunk_size = int(config["data"]["num_frames"])
        resolution = int(config["data"]["resolution"]) if resolution is None else int(resolution)
        hardware = detect_hardware(None if device is None else str(device))
        dtype = PRECISION_DTYPES.get(precision) or plan_memory(hardware, Workload(resolution)).dtype
        device = torch.device(device or hardware.device)
        place = torch.device(weights_device or device)
        report = progress or (lambda *_: None)
        report("load models", 0, 3)
        unet = load_unet(found.unet, load_unet_config(found.unet_config), device=place, dtype=dtype)
        report("load models", 1, 3)
        vae = load_vae(found.vae_dir, place, dtype)
        report("load models", 2, 3)
        encoder = WhisperEncoder.from_checkpoint(found.whisper, device=place, dtype=dtype)
        encoder.device = device  # it computes where the run happens, whichever device holds its weights now
        report("load models", 3, 3)
        log.info("models loaded: LatentSync %s at %d px on %s (%s)", version, resolution, device, dtype)
        return cls(found, unet, vae, encoder, device, dtype, resolution, chunk_size)

    def modules(self) -> dict[str, torch.nn.Module]:
        """The modules that hold the weights (for a host's memory management)."""
        encoder = getattr(self.audio_encoder, "model", self.audio_encoder)
        found = {"unet": self.unet, "vae": self.vae, "audio_encoder": encoder}
        return {name: module for name, module in found.items() if isinstance(module, torch.nn.Module)}

    def use_attention(self, mode: str, lip_focus: float = 1.0) -> str:
        """Give the UNet the attention backend for ``mode`` (kept when it is already the one in use); its name."""
        from .attention.selection import create_backend

        if self._attention is None or self._attention[:2] != (mode, lip_focus):
            mouth = torch.from_numpy(load_mouth_mask(self.resolution)[0].copy()) < 0.5
            backend = create_backend(mode, self.device, self.dtype, lip_focus=lip_focus, mouth_mask=mouth)
            self.unet.set_attention_backend(backend)
            self._attention = (mode, lip_focus, backend.name)
            log.info("attention: %s (asked for %s)", backend.name, mode)
        return self._attention[2]

    def bytes_on_gpu(self) -> int:
        """Bytes of these weights on a CUDA device now."""
        return sum(t.untyped_storage().nbytes() for module in self.modules().values()
                   for t in [*module.parameters(), *module.buffers()] if t.device.type == "cuda")

    def compiled(self, option: str):
        """The compiled UNet call and VAE decode for the ``compile`` option (None for "off"), made once per model
        set and attention kernel, so later runs reuse the compiled code."""
        from .compiled import compile_calls

        if option == "off":
            return None
        key = (option, self._attention)
        if key not in self._compiled:
            self._compiled[key] = compile_calls(self.unet, self.vae, option, self.device)
        return self._compiled[key]

    def face_detector(self, name: str, on_gpu: bool = True):
        """The face detector ``name`` (created once per model set and place; never downloads anything); ``on_gpu``
        False: on the CPU whatever the run's device (the memory tiers that keep the GPU for the UNet)."""
        from .face.detectors import create_detector

        device = str(self.device) if on_gpu else "cpu"
        if (name, device) not in self._detectors:
            root = self.checkpoints.root if self.checkpoints is not None else None
            self._detectors[name, device] = create_detector(name, checkpoints_dir=root, device=device)
        return self._detectors[name, device]

    def vram_model(self):
        """The VRAM model of these models' shapes (``latentsync.vram``), its counts cached in the user's cache."""
        from .vram import VramModel, cache_file

        if self._vram is None:
            self._vram = VramModel(self.shapes(), cache_file())
        return self._vram

    def shapes(self):
        from .vram import WHISPER_TINY, ModelShapes
        from .vae import SD_VAE_FT_MSE

        unet = dict(vars(self.unet.config))
        vae = {key: value for key, value in dict(self.vae.config).items() if key in SD_VAE_FT_MSE} or SD_VAE_FT_MSE
        dims = getattr(self.audio_encoder, "dims", None)
        whisper = WHISPER_TINY if dims is None else (dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                                     dims.n_audio_head, dims.n_audio_layer)
        return ModelShapes(unet, vae, whisper, self.resolution, self.chunk_size)


@dataclass(frozen=True)
class ModelChoice:
    """What a front asks to load (each batch job carries one; equal choices share one loaded set)."""

    version: str = LOAD["version"].default
    precision: str = LOAD["precision"].default
    checkpoints: str | None = None  # a folder searched first
    unet_config: str | None = None  # a UNet yaml other than the version's
    device: str | None = None  # default: the best one here

    def __post_init__(self):
        check_all(LOAD, {"version": self.version, "precision": self.precision})

    @classmethod
    def of(cls, values: dict, checkpoints=None, unet_config=None, device=None) -> "ModelChoice":
        """The choice among checked option values (field -> value) and the weights' paths and device."""
        return cls(values["version"], values["precision"], checkpoints, unet_config, device)

    def load(self, progress: Progress | None = None) -> LipSyncModels:
        """The models, with the version's face size (a test set's yaml may say another)."""
        return LipSyncModels.load(self.version, self.checkpoints, unet_config=self.unet_config, device=self.device,
                                  precision=self.precision, resolution=VERSIONS[self.version].resolution,
                                  progress=progress)
