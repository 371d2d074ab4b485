"""The GPU memory of a run, known before it starts: counted on the project's own modules at full size.

The modules are built under ``FakeTensorMode`` (shapes, dtypes and storage sizes; no data, nothing computed) and one
group of a run's GPU work goes through them under ``LiveBytes``: the denoising thread's VAE encode, every step's
guided UNet call and the VAE decode (``LipSyncDenoiser`` itself), the align thread's face warp (``FaceStage.crop``
on CUDA's recipe), the restore thread's paste back (``FaceStage.restore``, with real tensors: it reads the mask's
area) and Whisper on one 30 s window. A plan's peak is then

    weights on the GPU in the denoising stage that peaks + that stage's count
    + the face warp's and the paste's counts (their threads run beside it) + the groups in flight
    + what the tracker cannot see (below)

Counts are cached per (model shapes, work) in the user's cache folder, so a plan costs a look-up after the first.
The peak depends on the batches, not on the video's length: nothing here grows with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from .vram_tracker import LiveBytes, block_bytes

GB = 1024 ** 3
MB = 1024 ** 2

# What the tracker cannot see, as constants (checked against torch.cuda.max_memory_allocated by bench/device_check.py)
# the CUDA context with lazily loaded kernels (CUDA_MODULE_LOADING=LAZY, torch's default since CUDA 11.7): 300-500 MB
# on Ampere and Hopper (NVIDIA's lazy loading notes). mem_get_info is read once it exists, so it counts only against
# a card's size or a budget the user gives.
CUDA_CONTEXT = 500 * MB
# cuBLAS: 32 MiB per handle on Hopper, 8 x 4 MiB before (torch's CUBLAS_WORKSPACE_CONFIG notes); cuDNN's convolution
# scratch comes from torch's allocator too, as the chosen algorithm asks: 256 MiB planned for it
LIBRARY_WORKSPACES = 288 * MB
# onnxruntime's CUDA arena for InsightFace, capped at this with its gpu_mem_limit provider option (face/insightface.py)
DETECTOR_ARENA = 512 * MB
# torch's caching allocator keeps freed blocks reserved and splits 2 MiB / 20 MiB segments: reserved runs 5-15 %
# above allocated in steady diffusion loops (torch's CUDA memory-management notes); 10 % planned
FRAGMENTATION = 0.10
# groups whose faces are on the GPU at once: one in each stage, one in each queue between (engine/run.py's pool)
GROUPS_IN_FLIGHT = 6
COUNTS_FORMAT = 2  # raised when what is counted changes: cached counts of an older format are not used
# the model's face: its crop as wide as half the frame (a close-up talking head; a smaller face pastes less)
FACE_SHARE = 0.5

TIERS = ("default", "halves", "offload", "streamed")
TIER_HELP = {
    "default": "everything on the GPU",
    "halves": "the two guidance halves of a UNet call one after the other",
    "offload": "and Whisper, the VAE and the face detector off the GPU while the UNet runs",
    "streamed": "and the UNet's weights streamed block by block from pinned host memory",
}
FUSED_KERNELS = ("flash", "xformers", "flex")  # no score matrix: counted with SDPA's (flex compiled is fused too)


@dataclass(frozen=True)
class Tier:
    name: str

    @property
    def level(self) -> int:
        return TIERS.index(self.name)

    @property
    def guidance_in_sequence(self) -> bool:
        return self.level >= 1

    @property
    def offload(self) -> bool:
        return self.level >= 2

    @property
    def streamed(self) -> bool:
        return self.level >= 3


@dataclass(frozen=True)
class ModelShapes:
    """What the counted modules are built from: a version's configs, or a test set's."""

    unet: dict
    vae: dict
    whisper: tuple  # (n_mels, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer)
    resolution: int
    chunk_size: int

    @classmethod
    def of_version(cls, version: str) -> "ModelShapes":
        import yaml

        from .checkpoints import get_version
        from .vae import SD_VAE_FT_MSE

        spec = get_version(version)
        config = yaml.safe_load(Path(spec.unet_config).read_text())
        return cls(config["model"], SD_VAE_FT_MSE, WHISPER_TINY, spec.resolution, int(config["data"]["num_frames"]))

    @property
    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:16]


WHISPER_TINY = (80, 1500, 384, 6, 4)  # openai-whisper's tiny dims, the encoder LatentSync uses


@dataclass(frozen=True)
class GpuWork:
    """One group's GPU work as a plan sets it."""

    chunks_per_call: int
    vae_batch: int
    face_batch: int
    frame_shape: tuple[int, int]  # (height, width) of the video
    attention: str = "flash"
    dtype: str = "float16"
    tier: str = "default"
    guided: bool = True


@dataclass(frozen=True)
class Peak:
    """A plan's modelled peak: the tracker's bytes (``allocated``, what torch.cuda.max_memory_allocated would say),
    the stage that sets it, and what the run needs on top (``unseen``)."""

    allocated: int
    stage: str
    parts: dict
    unseen: int

    @property
    def total(self) -> int:
        """What the run needs free on the GPU, its CUDA context aside."""
        return self.allocated + self.unseen


class VramModel:
    """Modelled peaks for one set of model shapes, counted once per work and kept in ``cache`` (a JSON file)."""

    def __init__(self, shapes: ModelShapes, cache: Path | None = None):
        self.shapes = shapes
        self.cache = cache
        # a new torch or kornia (the face warps' allocations) counts anew
        self._key = f"{shapes.key} torch {torch.__version__} kornia {version('kornia')} counts v{COUNTS_FORMAT}"
        self._counts = _read_json(cache).get(self._key, {}) if cache is not None else {}

    @classmethod
    def of_version(cls, version: str) -> "VramModel":
        return cls(ModelShapes.of_version(version), cache_file())

    def peak(self, work: GpuWork) -> Peak:
        tier = Tier(work.tier)
        weights = self._count("weights", {"dtype": work.dtype}, lambda: count_weights(self.shapes, work.dtype))
        denoise = self._count("denoise", _denoise_key(work), lambda: count_denoise(self.shapes, work))
        faces = self._count("faces", _faces_key(work), lambda: count_faces(self.shapes, work))
        features = self._count("features", {"dtype": work.dtype}, lambda: count_features(self.shapes, work.dtype))
        unet = weights["unet_streamed"] if tier.streamed else weights["unet"]
        beside = faces["align"] + faces["restore"] + GROUPS_IN_FLIGHT * faces["group_faces"]
        stages = {"whisper features": unet + weights["vae"] + weights["whisper"] + features["window"]}
        for stage, count in denoise.items():
            on_gpu = unet + (0 if tier.offload and stage == "unet" else weights["vae"])
            on_gpu += 0 if tier.offload else weights["whisper"]
            stages[stage] = on_gpu + count + beside
        stage = max(stages, key=stages.get)
        allocated = stages[stage]
        unseen = LIBRARY_WORKSPACES + (0 if tier.offload else DETECTOR_ARENA) + int(FRAGMENTATION * allocated)
        parts = {"weights": dict(weights), "stages": stages,
                 "beside the denoising": beside}
        return Peak(allocated, stage, parts, unseen)

    def _count(self, kind: str, key: dict, count):
        name = f"{kind} {json.dumps(key, sort_keys=True)}"
        with _COUNTING:  # one count at a time in a process: they share the fake models
            if name not in self._counts and self.cache is not None:  # another process may have counted it since
                self._counts.update(_read_json(self.cache).get(self._key, {}))
            if name not in self._counts:
                self._counts[name] = count()
                if self.cache is not None:
                    _store(self.cache, self._key, name, self._counts[name])
            return self._counts[name]


def _denoise_key(work: GpuWork) -> dict:
    return {"chunks_per_call": work.chunks_per_call, "vae_batch": work.vae_batch, "dtype": work.dtype,
            "attention": kernel_counted(work.attention), "halves": Tier(work.tier).guidance_in_sequence and
            work.guided, "guided": work.guided}


def _faces_key(work: GpuWork) -> dict:
    return {"face_batch": work.face_batch, "frame_shape": list(work.frame_shape), "dtype": work.dtype,
            "group": work.chunks_per_call}


def kernel_counted(attention: str) -> str:
    return "flash" if attention in FUSED_KERNELS else attention


# -- counting ---------------------------------------------------------------------------------------------------


_FAKE_MODELS: dict = {}
_COUNTING = threading.Lock()


def fake_models(shapes: ModelShapes, dtype: str):
    """The UNet, VAE and Whisper encoder at full size as fake tensors, with their mode (built once per process)."""
    key = (shapes.key, dtype)
    if key not in _FAKE_MODELS:
        _FAKE_MODELS.clear()  # a full-size set holds no data, but its Python objects take ~100 MB
        _FAKE_MODELS[key] = _build_fake_models(shapes, dtype)
    return _FAKE_MODELS[key]


def _build_fake_models(shapes: ModelShapes, dtype: str):
    from diffusers import AutoencoderKL
    from torch._subclasses.fake_tensor import FakeTensorMode
    from whisper.model import AudioEncoder

    from .models.unet import UNet3DConditionModel

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        unet = _in_dtype(UNet3DConditionModel(**shapes.unet), getattr(torch, dtype))
        vae = _in_dtype(AutoencoderKL(**shapes.vae), getattr(torch, dtype))
        whisper = AudioEncoder(*shapes.whisper).eval().requires_grad_(False)  # float32, as audio/encoder.py keeps it
    return mode, unet, vae, whisper


def _in_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(dtype)`` for fake weights (which ``Module.to`` cannot swap): each tensor replaced by a new one."""
    for owner in module.modules():
        for name, tensor in list(owner._parameters.items()) + list(owner._buffers.items()):
            if tensor is not None and tensor.is_floating_point():
                replaced = torch.empty_like(tensor, dtype=dtype)
                if name in owner._parameters:
                    owner._parameters[name] = torch.nn.Parameter(replaced, requires_grad=False)
                else:
                    owner._buffers[name] = replaced
    return module.eval().requires_grad_(False)


def stored_bytes(tensor: torch.Tensor) -> int:
    """A tensor's storage as the caching allocator hands it out."""
    return block_bytes(tensor.untyped_storage().nbytes())


def module_bytes(module: torch.nn.Module) -> int:
    return sum(stored_bytes(t) for t in [*module.parameters(), *module.buffers()])


def count_weights(shapes: ModelShapes, dtype: str) -> dict:
    """Bytes of each model's weights on the GPU; ``unet_streamed``: what streaming leaves there (two of the groups
    ``models.streaming`` streams)."""
    from .models.streaming import resident_bytes

    _, unet, vae, whisper = fake_models(shapes, dtype)
    return {"unet": module_bytes(unet), "vae": module_bytes(vae), "whisper": module_bytes(whisper),
            "unet_streamed": resident_bytes(unet, stored_bytes)}


def count_denoise(shapes: ModelShapes, work: GpuWork, steps: int = 2) -> dict:
    """Each denoising stage's peak bytes (weights aside) for one group of ``work.chunks_per_call`` chunks:
    ``LipSyncDenoiser.run`` on fake faces and audio windows (from the second step on, every step peaks alike)."""
    from .attention.selection import create_backend
    from .checkpoints import SCHEDULER_CONFIG
    from .denoise import Chunk, DenoiseSettings, LipSyncDenoiser
    from .mask import load_mouth_mask

    mode, unet, vae, _ = fake_models(shapes, work.dtype)
    dtype, size, frames = getattr(torch, work.dtype), shapes.resolution, shapes.chunk_size
    unet.set_attention_backend(create_backend(kernel_counted(work.attention), "cpu", dtype, strict=True))
    settings = DenoiseSettings(steps=steps, guidance_scale=1.5 if work.guided else 1.0, chunk_size=frames,
                               chunks_per_call=work.chunks_per_call, vae_batch=work.vae_batch,
                               guidance_in_sequence=Tier(work.tier).guidance_in_sequence)
    mask = torch.from_numpy(load_mouth_mask(size).copy())
    denoiser = LipSyncDenoiser(unet, vae, json.loads(SCHEDULER_CONFIG.read_text()), mask, settings, "cpu", dtype)
    with mode:
        chunks = [Chunk(torch.empty(frames, 3, size, size, dtype=torch.uint8),
                        torch.empty(frames, 50, shapes.unet["cross_attention_dim"]))  # float32, as the features
                  for _ in range(work.chunks_per_call)]
        tracker = LiveBytes()
        tracker.ignore(unet, vae)
        tracker.add(denoiser.paste_mask, denoiser.float_mask, denoiser.latent_mask)
        with tracker, tracker.in_stage("denoise loop"), tracker.stages(
                {"unet": unet, "vae encode": vae.encoder, "vae decode": vae.decoder}):
            denoiser.start()
            denoiser.run(chunks)
    return {stage: peak for stage, peak in tracker.stage_peaks.items() if stage != "other"}


def count_faces(shapes: ModelShapes, work: GpuWork) -> dict:
    """The face warp's peak (``FaceStage.crop`` on CUDA's recipe) and the paste's (``FaceStage.restore``) for
    ``work.face_batch`` frames of ``work.frame_shape``, and one group's faces on the GPU (uint8 aligned faces and
    synced faces in the run's dtype). Both face stages read values (which faces are there, the mask's area), so they
    run on real tensors: 2 and 3 frames, the line through them extended to the batch (every tensor they make has one
    row per frame; tested against a direct count), since whole batches of 1080p frames take seconds on a CPU. Not 1
    frame: since kornia 0.9.2 frees the warp's grid early, one frame's peak can sit in the Lanczos resize, whose weight
    matrices do not grow with the batch (off the warp's line)."""
    from .face.geometry import CropGeometry
    from .face.stage import FaceStage

    size, dtype = shapes.resolution, getattr(torch, work.dtype)
    affine = _face_affine(CropGeometry(size), *work.frame_shape)[None]
    stage = FaceStage(None, size, device="cpu", recipe="cuda")
    counts = {}
    for name, count in (("align", count_warp), ("restore", count_paste)):
        if work.face_batch <= 3:
            counts[name] = count(stage, affine, dtype, work.face_batch, work.frame_shape)
        else:
            two, three = (count(stage, affine, dtype, frames, work.frame_shape) for frames in (2, 3))
            counts[name] = three + (work.face_batch - 3) * (three - two)
    group = work.chunks_per_call * shapes.chunk_size
    counts["group_faces"] = block_bytes(group * 3 * size * size) + block_bytes(group * 3 * size * size * dtype.itemsize)
    return counts


def count_warp(stage, affine: torch.Tensor, dtype: torch.dtype, count: int, frame_shape: tuple[int, int]) -> int:
    """The face warp's peak for ``count`` frames (real tensors; their upload to the GPU included)."""
    from .face.stage import FaceTrack

    frames = torch.full((count, *frame_shape, 3), 128, dtype=torch.uint8)
    track = FaceTrack(affine[:1].expand(count, 2, 3).clone(), torch.ones(count, dtype=torch.bool),
                      np.zeros((count, 3, 2)))
    tracker = LiveBytes()
    with tracker:
        stage.crop(frames, track)
    return tracker.peak


def count_paste(stage, affine: torch.Tensor, dtype: torch.dtype, count: int, frame_shape: tuple[int, int]) -> int:
    """The paste back's peak for ``count`` frames (real tensors)."""
    from .face.stage import AlignedBatch

    frames = np.full((count, *frame_shape, 3), 128, dtype=np.uint8)
    synced = torch.zeros(count, 3, stage.resolution, stage.resolution, dtype=dtype)
    matrices = affine[:1].expand(count, 2, 3).clone()
    tracker = LiveBytes()
    with tracker:
        stage.restore(frames, synced, AlignedBatch(synced, matrices, torch.ones(count, dtype=torch.bool),
                                                   np.zeros((count, 3, 2))), out=frames)
    return tracker.peak


def _face_affine(geometry, height: int, width: int) -> torch.Tensor:
    """The frame -> crop matrix of the model's face: its crop FACE_SHARE of the frame's width, centred."""
    crop_width, crop_height = geometry.crop_size
    scale = crop_width / (FACE_SHARE * width)
    left, top = (width - crop_width / scale) / 2, (height - crop_height / scale) / 2
    return torch.tensor([[scale, 0.0, -scale * left], [0.0, scale, -scale * top]], dtype=torch.float32)


def count_features(shapes: ModelShapes, dtype: str) -> dict:
    """Whisper's encoder on one 30 s window of mel frames, in the run's dtype (``WhisperEncoder._encode``)."""
    from .audio.encoder import WhisperEncoder

    mode, _, _, whisper = fake_models(shapes, dtype)
    n_mels, n_ctx = shapes.whisper[:2]
    encoder = WhisperEncoder.__new__(WhisperEncoder)  # the counted module as the loaded encoder holds it
    encoder.model = whisper
    with mode:
        mel = torch.empty(1, n_mels, 2 * n_ctx, dtype=getattr(torch, dtype))
        tracker = LiveBytes()
        tracker.ignore(whisper)
        with tracker:
            encoder._encode(mel)
    return {"window": tracker.peak}


# -- the cache --------------------------------------------------------------------------------------------------


def cache_file() -> Path:
    """The counts' file in the user's cache folder."""
    from .paths import user_cache

    return user_cache() / "vram_counts.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: counted again


def _store(path: Path, key: str, name: str, value) -> None:
    """Add one count to the file (written whole to a temporary name, then renamed: never half a file)."""
    data = _read_json(path)
    data.setdefault(key, {})[name] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only home: counted again next time
