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
from typing import Callable, Iterator

import numpy as np
import torch
import yaml

from .checkpoints import SCHEDULER_CONFIG, CheckpointSet, download_buffalo, locate
from .denoise import Chunk, DenoiseSettings, LipSyncDenoiser
from .frames import ArraySource, FrameSource, FrameStore, VideoFileSource, pingpong_index
from .mask import load_mouth_mask
from .memory_limiter import (MemoryPlan, apply_vram_fraction, detect_hardware, log_memory, plan_memory,
                             with_oom_backoff)

log = logging.getLogger("latentsync.pipeline")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class Cancelled(Exception):
    """The user cancelled the run; nothing was written."""


@dataclass
class PipelineOptions:
    version: str = "1.6"
    steps: int = 20
    guidance_scale: float = 1.5  # the node's lips_expression
    seed: int = 1247
    attention: str = "auto"
    lip_focus: float = 1.0  # > 1 favours mouth keys in spatial attention (flex only; changes outputs)
    deepcache_interval: int = 0  # > 1: DeepCache, full UNet every N steps (faster; changes outputs, opt-in)
    optimization_level: str = "balanced"
    memory_mode: str = "balanced"
    vram_fraction: float = 0.0
    disk_cache: bool | None = None  # None: the memory plan decides
    detector: str = "auto"
    device: str | None = None
    checkpoints_dir: str | None = None
    unet_config: str | None = None
    cache_dir: str | None = None  # where disk caches go (a private folder inside it); default: system temp

    def __post_init__(self):
        if not 1 <= self.steps <= 999:
            raise ValueError(f"inference_steps must be between 1 and 999, got {self.steps}")
        if not 1.0 <= self.guidance_scale <= 3.0:
            raise ValueError(f"lips_expression (guidance scale) must be between 1.0 and 3.0, got {self.guidance_scale}")
        if not 1.0 <= self.lip_focus <= 4.0:
            raise ValueError(f"lip_focus must be between 1.0 and 4.0, got {self.lip_focus}")


@dataclass
class RunResult:
    output_path: Path
    num_frames: int
    fps: Fraction
    frames_without_face: int
    plan: MemoryPlan
    seconds: dict = field(default_factory=dict)


@dataclass
class LipSyncModels:
    """Everything loaded once and reused across runs (the node caches this)."""

    checkpoints: CheckpointSet
    unet: torch.nn.Module
    vae: torch.nn.Module
    audio_encoder: object
    detector: object
    device: torch.device
    dtype: torch.dtype
    resolution: int
    chunk_size: int
    attention: str

    @classmethod
    def load(cls, options: PipelineOptions, progress: Progress | None = None) -> "LipSyncModels":
        from .attention import create_backend
        from .audio import WhisperEncoder
        from .face import create_detector
        from .models.loading import load_unet, load_unet_config
        from .vae import load_vae

        found = locate(options.version, options.checkpoints_dir, unet_config=options.unet_config)
        if options.detector in ("auto", "insightface"):
            download_buffalo(found.root)  # the reference geometry's detector; no-op when present or offline
        config = yaml.safe_load(Path(found.unet_config).read_text())
        resolution, chunk_size = int(config["data"]["resolution"]), int(config["data"]["num_frames"])
        hardware = detect_hardware(options.device)
        dtype = plan_memory(hardware, resolution=resolution, source_frames=0, frame_shape=(0, 0),
                            revisits=False).dtype
        device = torch.device(options.device or hardware.device)
        steps = ["unet", "vae", "whisper", "face detector"]
        report = progress or (lambda *_: None)
        report("load models", 0, len(steps))
        unet = load_unet(found.unet, load_unet_config(found.unet_config), device=device, dtype=dtype)
        mouth = torch.from_numpy(load_mouth_mask(resolution)[0].copy()) < 0.5
        backend = create_backend(options.attention, device, dtype, lip_focus=options.lip_focus, mouth_mask=mouth)
        unet.set_attention_backend(backend)
        report("load models", 1, len(steps))
        vae = load_vae(found.vae_dir, device, dtype)
        report("load models", 2, len(steps))
        encoder = WhisperEncoder.from_checkpoint(found.whisper, device=device, dtype=dtype)
        report("load models", 3, len(steps))
        detector = create_detector(options.detector, checkpoints_dir=found.root, device=str(device))
        report("load models", 4, len(steps))
        log.info("models loaded: LatentSync %s at %d px on %s (%s), attention %s", options.version, resolution,
                 device, dtype, backend.name)
        return cls(found, unet, vae, encoder, detector, device, dtype, resolution, chunk_size, backend.name)


@dataclass
class AlignedFrames:
    """A batch of output frames with their aligned faces (uint8 values) and alignment data."""

    frames: np.ndarray  # (n, H, W, 3) uint8
    aligned: object  # the face stage's AlignedBatch for these frames


class LipSyncPipeline:
    def __init__(self, models: LipSyncModels, options: PipelineOptions):
        self.models = models
        self.options = options

    def run(self, video, audio, output_path: str | Path, *, fps: float | None = None,
            progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None,
            frame_sink: Callable[[np.ndarray], None] | None = None) -> RunResult:
        """Lip-sync ``video`` (a path or (N, H, W, 3) frames at ``fps``) to ``audio`` (a path or (waveform, rate)).

        Writes an mp4 with the audio muxed in to ``output_path`` (atomically) and passes every output frame
        batch to ``frame_sink`` when given.
        """
        from .audio import frame_windows, load_audio, require_video_frames

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
        apply_vram_fraction(plan)
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
        faces = FaceStage(models.detector, models.resolution, device=models.device)
        group_frames = models.chunk_size * plan.chunks_per_call
        fps = source.fps
        done = with_face = 0
        with contextlib.ExitStack() as stack:
            audio_path = audio if isinstance(audio, (str, Path)) else None
            if audio_path is None:  # in-memory audio is muxed from a private temp wav
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="latentsync-audio-"))
                audio_path = Path(folder) / "audio.wav"
                write_wav(audio_path, samples, 16000)
            writer = stack.enter_context(VideoWriter(output_path, source.width, source.height, fps, audio=audio_path))
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
                with stages("denoise"):
                    synced = self._denoise(denoiser, group, window, should_cancel)
                with stages("restore"):
                    frames = group.frames if synced is None else faces.restore(group.frames, synced, group.aligned)
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
        return RunResult(Path(output_path), total, fps, total - with_face, plan, timings)

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

    def _denoise(self, denoiser: LipSyncDenoiser, group: AlignedFrames, audio: torch.Tensor, should_cancel):
        """Synced faces for a group of frames, or None when no frame of the group has a face."""
        has_face = group.aligned.has_face
        if not bool(has_face.any()):
            denoiser.skip(len(group.frames))
            return None
        face_pixels = _fill_missing_faces(group.aligned.faces, has_face)
        size = denoiser.settings.chunk_size
        chunks = [Chunk(face_pixels[i:i + size], audio[i:i + size]) for i in range(0, len(group.frames), size)]
        # cancellation is checked at every denoising step: a long chunk never makes the user wait
        return torch.cat(denoiser.run(chunks, on_step=lambda done, steps: _check_cancel(should_cancel)))


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
