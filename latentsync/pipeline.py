"""The streaming lip-sync pipeline: decode -> detect/align -> denoise chunks -> restore -> encode.

Every stage passes bounded batches: the frames, faces and outputs of the whole video are never in memory
at once. When the audio outlasts the video, the video is played forward, backward, forward... (the
reference's ping-pong); only then are the source frames and their aligned faces kept for revisiting, in RAM
or in a disk cache by the memory plan.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
import yaml

from .checkpoints import SCHEDULER_CONFIG, CheckpointSet, locate
from .denoise import Chunk, DenoiseSettings, LipSyncDenoiser
from .frames import ArraySource, FrameSource, FrameStore, VideoFileSource, pingpong_index
from .mask import load_mouth_mask
from .memory_limiter import MemoryPlan, detect_hardware, log_memory, plan_memory, vram_cap, with_oom_backoff
from .options import LOAD, RUN, check_all

log = logging.getLogger("latentsync.pipeline")

Progress = Callable[[str, float, int], None]  # (stage, done, total); done may be fractional (denoising steps)
PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class Cancelled(Exception):
    """The user cancelled the run; nothing was written."""


@dataclass
class PipelineOptions:
    """Per-run choices (defaults, ranges and help in ``latentsync.options.RUN``); none of them reloads weights."""

    steps: int = RUN["steps"].default
    guidance_scale: float = RUN["guidance_scale"].default  # the node's lips_expression
    seed: int = RUN["seed"].default
    attention: str = RUN["attention"].default
    lip_focus: float = RUN["lip_focus"].default  # > 1 favours mouth keys (flex only; changes outputs)
    deepcache_interval: int = RUN["deepcache_interval"].default  # > 1: DeepCache (changes outputs, opt-in)
    optimization_level: str = RUN["optimization_level"].default
    memory_mode: str = RUN["memory_mode"].default
    vram_fraction: float = RUN["vram_fraction"].default
    disk_cache: bool | None = RUN["disk_cache"].default  # None: the memory plan decides
    detector: str = RUN["detector"].default
    # False inside a host that owns VRAM policy (ComfyUI): vram_fraction then only sizes the batches
    hard_vram_cap: bool = True
    cache_dir: str | None = None  # where disk caches go (a private folder inside it); default: system temp

    def __post_init__(self):
        check_all(RUN, vars(self))


@dataclass
class RunResult:
    output_path: Path | None  # None when no file was asked for
    num_frames: int
    fps: Fraction
    frames_without_face: int
    plan: MemoryPlan
    seconds: dict = field(default_factory=dict)


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

    @classmethod
    def load(cls, version: str = LOAD["version"].default, checkpoint_dirs=None, *, unet_config=None,
             device: str | torch.device | None = None, precision: str = LOAD["precision"].default,
             weights_device: str | torch.device | None = None, progress: Progress | None = None) -> "LipSyncModels":
        """Find the checkpoints (no download: a missing file is one sentence with the download command) and load
        the UNet, VAE and Whisper encoder for ``device`` (default: the best one here) in ``precision``.

        ``weights_device``: where the weights are put now (default ``device``); a host that moves them to the
        compute device itself when a run starts (ComfyUI's model management) loads them on its offload device."""
        from .audio import WhisperEncoder
        from .models.loading import load_unet, load_unet_config
        from .vae import load_vae

        check_all(LOAD, {"version": version, "precision": precision})
        found = locate(version, checkpoint_dirs, unet_config=unet_config)
        config = yaml.safe_load(Path(found.unet_config).read_text())
        resolution, chunk_size = int(config["data"]["resolution"]), int(config["data"]["num_frames"])
        hardware = detect_hardware(None if device is None else str(device))
        dtype = PRECISION_DTYPES.get(precision) or plan_memory(
            hardware, resolution=resolution, source_frames=0, frame_shape=(0, 0), revisits=False).dtype
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
        from .attention import create_backend

        if self._attention is None or self._attention[:2] != (mode, lip_focus):
            mouth = torch.from_numpy(load_mouth_mask(self.resolution)[0].copy()) < 0.5
            backend = create_backend(mode, self.device, self.dtype, lip_focus=lip_focus, mouth_mask=mouth)
            self.unet.set_attention_backend(backend)
            self._attention = (mode, lip_focus, backend.name)
            log.info("attention: %s (asked for %s)", backend.name, mode)
        return self._attention[2]

    def face_detector(self, name: str):
        """The face detector ``name`` (created once per model set; never downloads anything)."""
        from .face import create_detector

        if name not in self._detectors:
            root = self.checkpoints.root if self.checkpoints is not None else None
            self._detectors[name] = create_detector(name, checkpoints_dir=root, device=str(self.device))
        return self._detectors[name]


@dataclass
class AlignedFrames:
    """A batch of output frames with their aligned faces (uint8 values) and alignment data."""

    frames: np.ndarray  # (n, H, W, 3) uint8
    aligned: object  # the face stage's AlignedBatch for these frames


class LipSyncPipeline:
    def __init__(self, models: LipSyncModels, options: PipelineOptions):
        self.models = models
        self.options = options

    def run(self, video, audio, output_path: str | Path | None = None, *, fps: float | None = None,
            progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None,
            frame_sink: Callable[[np.ndarray], None] | None = None) -> RunResult:
        """Lip-sync ``video`` (a path or (N, H, W, 3) frames at ``fps``) to ``audio`` (a path or (waveform, rate)).

        Writes an mp4 with the audio muxed in to ``output_path`` (atomically) when one is given, and passes every
        output frame batch (uint8 (n, H, W, 3)) to ``frame_sink`` when given; at least one of the two.
        """
        from .audio import frame_windows, load_audio, require_video_frames

        if output_path is None and frame_sink is None:
            raise ValueError("nothing would receive the frames: give an output path, a frame sink, or both")
        report = progress or (lambda *_: None)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        source = self._source(video, fps)
        samples = load_audio(audio)
        total = require_video_frames(len(samples), source.fps)
        features = self.models.audio_encoder.features(samples)
        timings["audio"] = time.perf_counter() - started
        revisits = total > source.num_frames
        hardware = detect_hardware(str(self.models.device))
        plan = plan_memory(hardware, resolution=self.models.resolution, source_frames=source.num_frames,
                           frame_shape=(source.height, source.width), revisits=revisits,
                           optimization_level=self.options.optimization_level, memory_mode=self.options.memory_mode,
                           vram_fraction=self.options.vram_fraction, disk_cache=self.options.disk_cache)
        for reason in plan.reasons:
            log.info("memory plan: %s", reason)
        self.models.use_attention(self.options.attention, self.options.lip_focus)
        log_memory("start")

        delivered = 0  # frames already handed to frame_sink: a retry after OOM must not hand them again

        def sink_once(start: int, frames: np.ndarray) -> None:
            nonlocal delivered
            if frame_sink is not None and start + len(frames) > delivered:
                frame_sink(frames[delivered - start:] if start < delivered else frames)
                delivered = start + len(frames)

        def attempt(current_plan: MemoryPlan) -> RunResult:
            return self._generate(source, samples, audio, features, total, revisits, current_plan, output_path,
                                  report, should_cancel, sink_once, timings, frame_windows)

        with vram_cap(plan, self.models.device, enabled=self.options.hard_vram_cap):
            result, _ = with_oom_backoff(plan, attempt)
        timings["total"] = time.perf_counter() - started
        log_memory("end")
        return result

    # -- stages ------------------------------------------------------------------------------------------------

    def _source(self, video, fps) -> FrameSource:
        if isinstance(video, (str, Path)):
            return VideoFileSource(video)
        if hasattr(video, "batches"):
            return video
        if fps is None or fps <= 0:
            raise ValueError("frames given without a frame rate: pass fps (e.g. 25)")
        return ArraySource(video, fps)

    def _generate(self, source, samples, audio, features, total, revisits, plan, output_path, report,
                  should_cancel, frame_sink, timings, frame_windows) -> RunResult:
        from .face import FaceStage, no_face_error
        from .video import VideoWriter, write_wav

        models, options = self.models, self.options
        settings = DenoiseSettings(steps=options.steps, guidance_scale=options.guidance_scale, seed=options.seed,
                                   chunk_size=models.chunk_size, chunks_per_call=plan.chunks_per_call,
                                   vae_batch=plan.vae_batch, deepcache_interval=options.deepcache_interval)
        mask = torch.from_numpy(load_mouth_mask(models.resolution).copy())
        denoiser = LipSyncDenoiser(models.unet, models.vae, _scheduler_config(), mask, settings, models.device,
                                   models.dtype)
        denoiser.start()
        faces = FaceStage(models.face_detector(options.detector), models.resolution, device=models.device)
        group_frames = models.chunk_size * plan.chunks_per_call
        fps = source.fps
        done = with_face = 0
        with contextlib.ExitStack() as stack:
            writer = None
            if output_path is not None:
                audio_path = audio if isinstance(audio, (str, Path)) else None
                if audio_path is None:  # in-memory audio is muxed from a private temp wav, at its own rate
                    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="latentsync-audio-"))
                    audio_path = Path(folder) / "audio.wav"
                    write_wav(audio_path, *_waveform_and_rate(audio, samples))
                writer = stack.enter_context(VideoWriter(output_path, source.width, source.height, fps,
                                                         audio=audio_path))
            if revisits:
                batches = self._revisited(source, total, faces, plan, stack, report, should_cancel)
            else:
                batches = self._streamed(source, total, faces, plan)
            stages = _StageClock(timings)
            groups = _regroup(batches, group_frames)
            while (group := stages.next("decode_align", groups)) is not None:
                _check_cancel(should_cancel)
                with_face += int(group.aligned.has_face.sum())
                window = frame_windows(features, float(fps), start=done, stop=done + len(group.frames))

                def on_step(step: int, steps: int, first=done, size=len(group.frames)) -> None:
                    _check_cancel(should_cancel)
                    report("lip-sync", first + size * step / steps, total)

                with stages("denoise"):
                    synced = self._denoise(denoiser, group, window, on_step)
                with stages("restore"):
                    frames = group.frames if synced is None else faces.restore(group.frames, synced, group.aligned)
                if writer is not None:
                    with stages("encode"):
                        writer.write(frames)
                frame_sink(done, frames)
                done += len(frames)
                report("lip-sync", done, total)
            if with_face == 0:
                raise no_face_error(total)
        if with_face < total:
            log.warning("%d of %d frames had no usable face and were passed through unchanged",
                        total - with_face, total)
        return RunResult(None if output_path is None else Path(output_path), total, fps, total - with_face, plan,
                         timings)

    def _streamed(self, source: FrameSource, total: int, faces, plan: MemoryPlan) -> Iterator[AlignedFrames]:
        """Frames 0..total-1 in order, aligned as they are decoded (the audio is not longer than the video)."""
        produced = 0
        for batch in _prefetch(source.batches(plan.face_batch)):
            batch = batch[: total - produced]
            yield AlignedFrames(batch, faces.align(batch))
            produced += len(batch)
            if produced >= total:
                return

    def _revisited(self, source: FrameSource, total: int, faces, plan: MemoryPlan, stack, report,
                   should_cancel) -> Iterator[AlignedFrames]:
        """Ping-pong looping: align every source frame once (in order, as the reference does), keep the frames
        and face crops (RAM or disk cache) and the small geometry (RAM), then replay them by index."""
        from .face import AlignedBatch, no_face_error

        count, res = source.num_frames, self.models.resolution
        keep_frames = not isinstance(source, ArraySource)  # in-RAM frames are indexed where they are
        frames = stack.enter_context(FrameStore(count, (source.height, source.width, 3), plan.disk_cache,
                                                self.options.cache_dir)) if keep_frames else None
        crops = stack.enter_context(FrameStore(count, (3, res, res), plan.disk_cache, self.options.cache_dir))
        affines, has_faces, anchors = [], [], []  # small: kept in RAM
        position = 0
        for batch in _prefetch(source.batches(plan.face_batch)):
            _check_cancel(should_cancel)
            aligned = faces.align(batch)
            if frames is not None:
                frames.write(position, batch)
            crops.write(position, aligned.faces.cpu().numpy())
            affines.append(aligned.affine)
            has_faces.append(aligned.has_face)
            anchors.append(aligned.anchors)
            position += len(batch)
            report("align faces", position, count)
        affine, has_face, anchors = torch.cat(affines), torch.cat(has_faces), np.concatenate(anchors)
        if not bool(has_face.any()):
            raise no_face_error(count)
        for start in range(0, total, plan.face_batch):
            indices = [pingpong_index(i, count) for i in range(start, min(total, start + plan.face_batch))]
            batch = frames.read(indices) if frames is not None else _frames_at(source, indices)
            crop = torch.from_numpy(crops.read(indices)).to(faces.device)
            yield AlignedFrames(batch, AlignedBatch(crop, affine[indices], has_face[indices], anchors[indices]))

    def _denoise(self, denoiser: LipSyncDenoiser, group: AlignedFrames, audio: torch.Tensor, on_step):
        """Synced faces for a group of frames, or None when no frame of the group has a face. ``on_step(done,
        steps)`` runs after every denoising step (progress, and cancellation within one step)."""
        has_face = group.aligned.has_face
        if not bool(has_face.any()):
            denoiser.skip(len(group.frames))
            return None
        face_pixels = _fill_missing_faces(group.aligned.faces, has_face)
        size = denoiser.settings.chunk_size
        chunks = [Chunk(face_pixels[i:i + size], audio[i:i + size]) for i in range(0, len(group.frames), size)]
        return torch.cat(denoiser.run(chunks, on_step=on_step))


# -- helpers -----------------------------------------------------------------------------------------------------


def _scheduler_config() -> dict:
    import json

    return json.loads(SCHEDULER_CONFIG.read_text())


class _StageClock:
    """Adds the seconds spent in each stage to ``timings`` (a synchronising read on CUDA keeps it honest)."""

    def __init__(self, timings: dict):
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started

    def next(self, stage: str, iterator):
        with self(stage):
            return next(iterator, None)


def _waveform_and_rate(audio, samples: np.ndarray) -> tuple:
    """The caller's own waveform and rate (a ComfyUI AUDIO dict or a (waveform, rate) pair), so the muxed track
    keeps its quality; the 16 kHz mono analysis copy otherwise."""
    if isinstance(audio, Mapping):
        return audio["waveform"], int(audio["sample_rate"])
    if isinstance(audio, tuple):
        return audio[0], int(audio[1])
    return samples, 16000


def _check_cancel(should_cancel) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("cancelled by the user; no output was written")


def _frames_at(source: ArraySource, indices: list[int]) -> np.ndarray:
    from .frames import to_uint8

    return to_uint8(source.frames[indices])


def _fill_missing_faces(faces: torch.Tensor, has_face: torch.Tensor) -> torch.Tensor:
    """Give frames without a face the nearest face of the group, so the chunk stays a coherent clip.

    Their outputs are discarded (those frames pass through unchanged); only their neighbours see them.
    """
    if bool(has_face.all()):
        return faces
    valid = torch.nonzero(has_face.cpu()).flatten()
    positions = torch.arange(len(has_face))
    nearest = valid[(positions[:, None] - valid[None, :]).abs().argmin(dim=1)]
    return faces[nearest.to(faces.device)]


def _regroup(batches: Iterator[AlignedFrames], size: int) -> Iterator[AlignedFrames]:
    """Re-cut aligned batches into groups of exactly ``size`` frames (the last may be shorter)."""
    pending: list[AlignedFrames] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += len(batch.frames)
        while count >= size:
            merged = _merge(pending)
            yield _slice(merged, 0, size)
            rest = _slice(merged, size, count)
            pending, count = ([rest] if count > size else []), count - size
    if count:
        yield _merge(pending)


def _merge(batches: list[AlignedFrames]) -> AlignedFrames:
    if len(batches) == 1:
        return batches[0]
    frames = np.concatenate([b.frames for b in batches])
    aligned = type(batches[0].aligned).concatenate([b.aligned for b in batches])
    return AlignedFrames(frames, aligned)


def _slice(batch: AlignedFrames, start: int, stop: int) -> AlignedFrames:
    return AlignedFrames(batch.frames[start:stop], batch.aligned.slice(start, stop))


def _prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run ``iterator`` in a background thread, at most ``depth`` items ahead (decoding overlaps compute)."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=depth)
    finished = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(finished)
        except BaseException as error:  # handed to the consumer
            items.put(error)

    thread = threading.Thread(target=produce, name="latentsync-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is finished:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
