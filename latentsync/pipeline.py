"""The streaming lip-sync pipeline: decode -> detect/align -> denoise chunks -> restore -> encode.

Every stage passes bounded batches: the frames, faces and outputs of the whole video are never in memory
at once. When the audio outlasts the video, the video is played forward, backward, forward... (the
reference's ping-pong); only then are the source frames and their aligned faces kept for revisiting, in RAM
or in a disk cache by the memory plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import shutil
import tempfile
import threading
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
from .face import AlignedBatch, FaceStage, FaceTrack, no_face_error
from .frames import ArraySource, FrameSource, FrameStore, VideoFileSource, pingpong_index
from .mask import load_mouth_mask
from .memory_limiter import (MemoryPlan, detect_hardware, free_memory, is_oom, log_memory, plan_memory,
                             smaller_batches, vram_cap)
from .options import LOAD, RUN, check_all
from .paths import check_not_an_input, disk_full_sentence
from .stages import BufferPool, StageTimes, Stopped, in_thread
from .tempfiles import TEMP_PREFIX, output_prefix, owned_temp_dir, remove_stale

log = logging.getLogger("latentsync.pipeline")

Progress = Callable[[str, float, int], None]  # (stage, done, total); done may be fractional (denoising steps)
PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class Cancelled(Exception):
    """The user cancelled the run; nothing was written."""

    __module__ = "latentsync"  # its name in error reports (ComfyUI names the pack by its disk path)


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
    face: int = RUN["face"].default  # 0: the largest in each frame (published); N: the N-th from the left
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
    # what the user should know (also logged): sentences that start with a short label, "label: ..."
    warnings: list[str] = field(default_factory=list)


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
class Group:
    """Consecutive output frames on their way through the stages: decoded and aligned, then synced, then restored
    (in place: ``frames`` is a reused buffer, valid until the consumer asks for the next group)."""

    start: int  # output index of the first frame
    frames: np.ndarray  # (n, H, W, 3) uint8
    aligned: AlignedBatch
    synced: torch.Tensor | None = None  # (n, 3, R, R) in [-1, 1]; None when no frame of the group has a face


@dataclass(frozen=True)
class Segment:
    """Output frames [start, stop) of a run, made exactly as the whole run makes them: from the whole clip's face
    track, with the run's batch sizes, and the random generator replayed to ``start``."""

    start: int
    stop: int
    track: FaceTrack  # of the source frames the whole run aligns
    batches: dict  # MemoryPlan batch sizes of the whole run (they decide float sums and face-crop regions)

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass
class SplitPlan:
    """A run cut into segments that other processes (GPUs, machines) can make: ``LipSyncPipeline.plan_split``."""

    num_frames: int  # output frames (the audio's length)
    fps: Fraction
    width: int
    height: int
    group_frames: int  # segments start at multiples of this (the run's batch of frames)
    track: FaceTrack
    batches: dict

    def segments(self, parts: int) -> list[Segment]:
        """At most ``parts`` segments of near-equal length, cut at multiples of ``group_frames``."""
        groups = -(-self.num_frames // self.group_frames)
        parts = max(1, min(parts, groups))
        cuts = [round(k * groups / parts) * self.group_frames for k in range(parts)] + [self.num_frames]
        return [Segment(a, b, self.track, self.batches) for a, b in zip(cuts, cuts[1:])]


class LipSyncPipeline:
    """Lip-syncs videos with loaded models. ``frames()`` yields the synced frames (every stage running at the same
    time); ``run()`` is its usual consumer: an mp4 with the audio muxed in, and/or a frame sink."""

    def __init__(self, models: LipSyncModels, options: PipelineOptions, overlap: bool = True):
        self.models = models
        self.options = options
        self.overlap = overlap  # False: the same stages one after another in the caller's thread (a baseline)

    def frames(self, video, audio, *, fps: float | None = None, progress: Progress | None = None,
               should_cancel: Callable[[], bool] | None = None, segment: Segment | None = None) -> "SyncedFrames":
        """Start lip-syncing ``video`` (a path, a FrameSource, or (N, H, W, 3) frames at ``fps``) to ``audio`` (a
        path, a ComfyUI AUDIO dict or (waveform, rate)): probes the inputs, computes the audio features and plans
        the memory; iterating the result yields the synced uint8 (n, H, W, 3) batches in order.

        ``segment`` (from ``plan_split``): only those output frames, equal to the same frames of the whole run."""
        started = time.perf_counter()
        report = progress or (lambda *_: None)
        report("read video and audio", 0, 1)
        run = self._start(video, audio, fps, progress, should_cancel, segment)
        report("audio features", 0, 1)
        run.features = self.models.audio_encoder.features(run.samples)
        report("audio features", 1, 1)
        used = self.models.use_attention(self.options.attention, self.options.lip_focus)
        if self.options.attention not in ("auto", used):
            run.warn(f"{self.options.attention} unavailable: attention_mode {self.options.attention} does not run "
                     f"here, {used} runs instead (the same result within float tolerance); verify_installation.py "
                     "says why")
        run.times.add("audio", time.perf_counter() - started)
        return run

    def plan_split(self, video, audio, *, fps: float | None = None, progress: Progress | None = None,
                   should_cancel: Callable[[], bool] | None = None, anchors: np.ndarray | None = None) -> SplitPlan:
        """Detect and smooth the face geometry of the whole clip (no pixels warped, no denoising) and fix the
        batch sizes, so that the run can be cut into segments (``SplitPlan.segments``) made anywhere.

        ``anchors``: the detections of every frame to track, from ``detect_faces`` over parts of the clip (made in
        parallel); only the smoothing is left to do then, and no frame is decoded."""
        run = self._start(video, audio, fps, progress, should_cancel, None)
        track = run.track(anchors)
        batches = {name: getattr(run.plan, name) for name in ("chunks_per_call", "vae_batch", "face_batch")}
        return SplitPlan(run.num_frames, run.fps, run.width, run.height, run.group_frames, track, batches)

    def frames_to_track(self, video, audio, *, fps: float | None = None) -> int:
        """How many source frames a run aligns (and ``plan_split`` wants anchors for): from the first on, all of
        them when the audio outlasts the video (ping-pong), else as many as the output has."""
        run = self._start(video, audio, fps, None, None, None)
        return run.frames_to_track

    def detect_faces(self, video, start: int, stop: int, *, fps: float | None = None,
                     should_cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """Anchors (stop - start, 3, 2) of the largest face in source frames start .. stop - 1 (NaN where none):
        the detection of the default face choice, which looks at each frame alone, so parts of a clip can be
        detected in parallel and joined for ``plan_split``. (Following one person, ``face`` = N, is sequential.)"""
        if self.options.face:
            raise ValueError("detect_faces serves the largest-face choice (face = 0): face = N follows one person "
                             "from frame to frame, so its detection runs in order (plan_split)")
        source = self._source(video, fps)
        faces = FaceStage(self.models.face_detector(self.options.detector), self.models.resolution)
        parts, position = [], start
        with contextlib.closing(source.batches(self.models.chunk_size, None, *([start] if start else []))) as batches:
            for batch in batches:
                _check_cancel(should_cancel)
                batch = batch[:stop - position]
                parts.append(faces.locate(batch).anchors)  # its smoothing is not kept: plan_split smooths in order
                position += len(batch)
                if position >= stop:
                    break
        if position < stop:
            raise ValueError(f"the video has {position} frames, fewer than the {stop} asked for")
        return np.concatenate(parts)

    def _start(self, video, audio, fps, progress, should_cancel, segment: Segment | None) -> "SyncedFrames":
        from .audio import load_audio, require_video_frames

        source = self._source(video, fps)
        samples = load_audio(audio)
        total = require_video_frames(len(samples), source.fps)
        if segment is not None and not 0 <= segment.start < segment.stop <= total:
            raise ValueError(f"segment {segment.start}..{segment.stop} is outside the run's {total} frames")
        if segment is not None and segment.start % (self.models.chunk_size * segment.batches["chunks_per_call"]):
            raise ValueError(f"segment {segment.start}..{segment.stop} does not start at a batch of the run: take "
                             "segments from plan_split(...).segments(n)")
        revisits = total > source.num_frames
        hardware = detect_hardware(str(self.models.device))
        plan = plan_memory(hardware, resolution=self.models.resolution, source_frames=source.num_frames,
                           frame_shape=(source.height, source.width), revisits=revisits,
                           optimization_level=self.options.optimization_level, memory_mode=self.options.memory_mode,
                           vram_fraction=self.options.vram_fraction, disk_cache=self.options.disk_cache)
        if segment is not None:  # the whole run's batch sizes, whatever this device would choose
            plan = dataclasses.replace(plan, **segment.batches)
        for reason in plan.reasons:
            log.info("memory plan: %s", reason)
        run = SyncedFrames(self, source, samples, total, plan, progress, should_cancel, segment)
        if total < self.models.chunk_size:
            run.warn(f"speech too short: it lasts {len(samples) / 16000:.2f} s, so the output has only {total} "
                     f"frame(s); the model syncs {self.models.chunk_size} frames at a time: give at least "
                     f"{self.models.chunk_size / float(source.fps):.2f} s of speech")
        return run

    def run(self, video, audio, output_path: str | Path | None = None, *, fps: float | None = None,
            progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None,
            frame_sink: Callable[[np.ndarray], None] | None = None, segment: Segment | None = None,
            encoder: list[str] | None = None) -> RunResult:
        """Lip-sync and deliver: a video at ``output_path`` with the audio muxed in (written atomically), and/or
        every batch to ``frame_sink`` (a copy it may keep); at least one of the two.

        ``segment``: only those frames, and no audio (the parts are joined and the audio muxed once).
        ``encoder``: ffmpeg video-encoder arguments (default: H.264, NVENC when it works).

        The output is never one of the inputs (ValueError); temporary files that killed runs left beside it or in
        the temp folder are removed first; a full disk is an OSError naming the folder and the fix."""

        if output_path is None and frame_sink is None:
            raise ValueError("nothing would receive the frames: give an output path, a frame sink, or both")
        temp_folder = self.options.cache_dir or tempfile.gettempdir()
        if output_path is not None:
            check_not_an_input(output_path, {"video": video, "audio": audio})
            remove_stale(Path(output_path).parent, output_prefix(output_path))  # what killed runs left there
        remove_stale(temp_folder, TEMP_PREFIX)
        try:
            return self._run(video, audio, output_path, fps, progress, should_cancel, frame_sink, segment, encoder)
        except (OSError, ValueError) as error:  # MediaError is a ValueError: ffmpeg's "No space left on device"
            full = disk_full_sentence(error, [Path(output_path).parent] if output_path is not None else [],
                                      temp_folder)
            if full is None:
                raise
            raise OSError(errno.ENOSPC, full) from error

    def _run(self, video, audio, output_path, fps, progress, should_cancel, frame_sink, segment, encoder):
        from .video import VideoWriter, write_wav

        synced = self.frames(video, audio, fps=fps, progress=progress, should_cancel=should_cancel, segment=segment)
        with contextlib.ExitStack() as stack:
            writer = None
            if output_path is not None:
                audio_path = audio if isinstance(audio, (str, Path)) or segment is not None else None
                if audio_path is None:  # in-memory audio is muxed from a private temp wav, at its own rate
                    folder = owned_temp_dir("audio", self.options.cache_dir)
                    stack.callback(shutil.rmtree, folder, True)
                    audio_path = folder / "audio.wav"
                    write_wav(audio_path, *_waveform_and_rate(audio, synced.samples))
                writer = stack.enter_context(VideoWriter(output_path, synced.width, synced.height, synced.fps,
                                                         audio=None if segment is not None else audio_path,
                                                         encoder=encoder))
            stack.enter_context(vram_cap(synced.plan, self.models.device, enabled=self.options.hard_vram_cap))
            for batch in stack.enter_context(contextlib.closing(iter(synced))):  # closed first: threads stop
                if writer is not None:
                    with synced.times.measure("encode"):
                        writer.write(batch)
                if frame_sink is not None:
                    frame_sink(batch.copy())
        return synced.result(None if output_path is None else Path(output_path))

    def _source(self, video, fps) -> FrameSource:
        if isinstance(video, (str, Path)):
            return VideoFileSource(video)
        if hasattr(video, "batches"):
            return video
        if fps is None or fps <= 0:
            raise ValueError("frames given without a frame rate: pass fps (e.g. 25)")
        return ArraySource(video, fps)


class SyncedFrames:
    """One run of the pipeline: iterate it (once) for the synced frames, then ask ``result()``.

    Stages: decode -> detect/align (one thread), VAE + UNet (one thread: the random draws stay in video order, so
    the output does not depend on the threading), restore (one thread), the consumer behind them. Bounded queues
    and a pool of frame buffers join them, so memory stays flat; an out-of-memory error shrinks that stage's
    batches and redoes only the batch that failed (the generator rewound to its start), never the run.
    """

    def __init__(self, pipeline: LipSyncPipeline, source: FrameSource, samples: np.ndarray, total: int,
                 plan: MemoryPlan, progress: Progress | None, should_cancel: Callable[[], bool] | None,
                 segment: Segment | None = None):
        self.models, self.options, self.overlap = pipeline.models, pipeline.options, pipeline.overlap
        self.source, self.samples, self.num_frames = source, samples, total
        self.features: torch.Tensor | None = None  # the audio's Whisper features, set before iterating
        self.segment = segment
        self.first, self.stop = (segment.start, segment.stop) if segment is not None else (0, total)
        self.fps, self.width, self.height = source.fps, source.width, source.height
        self.plan = plan
        self.report = progress or (lambda *_: None)
        self.should_cancel = should_cancel
        self.times = StageTimes()
        self.stopping = threading.Event()
        self.frames_with_face = 0
        self.warnings: list[str] = []
        self._faces: FaceStage | None = None  # the align stage's, for its choice statistics
        self._plan_lock = threading.Lock()
        self._started = time.perf_counter()
        self._done = False

    # -- the consumer's side ---------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._done:
            raise RuntimeError("a run's frames can be iterated once")
        self._done = True
        return self._synced()

    @property
    def group_frames(self) -> int:
        """Frames per group: decoded, aligned and denoised together (segments start at multiples of it)."""
        return self.models.chunk_size * self.plan.chunks_per_call

    def result(self, output_path: Path | None = None) -> RunResult:
        seconds = dict(self.times.seconds, total=time.perf_counter() - self._started)
        count = self.stop - self.first
        without = count - self.frames_with_face
        if without:
            log.warning("%d of %d frames had no usable face and were passed through unchanged", without, count)
        self._warn_close_calls()
        return RunResult(output_path, count, self.fps, without, self.plan, seconds, list(self.warnings))

    def warn(self, message: str) -> None:
        """A warning for the run's result (and the log)."""
        log.warning("%s", message)
        self.warnings.append(message)

    @property
    def frames_to_track(self) -> int:
        """The source frames the run aligns: all of them when it revisits frames (ping-pong), else its outputs."""
        return self.source.num_frames if self.num_frames > self.source.num_frames else self.num_frames

    def track(self, anchors: np.ndarray | None = None) -> FaceTrack:
        """Detection and smoothing alone over every source frame the run aligns, in the run's batches: the face
        track that segments of this run are made from. With ``anchors`` (every such frame's detection), the
        smoothing alone: no frame is decoded."""
        count = self.frames_to_track
        detector = self.models.face_detector(self.options.detector) if anchors is None else None
        faces = self._faces = FaceStage(detector, self.models.resolution, device=self.models.device,
                                        face=self.options.face)
        if anchors is not None:
            if len(anchors) != count:
                raise ValueError(f"anchors for {len(anchors)} frames given; the run aligns {count}")
            rows = [None if np.isnan(points).any() else points for points in anchors]
            parts = []
            for group in range(0, count, self.group_frames):  # the run's groups and face batches: its smoothing steps
                stop = min(count, group + self.group_frames)
                for start in range(group, stop, self.plan.face_batch):
                    parts.append(faces.locate(None, rows[start:min(stop, start + self.plan.face_batch)]))
            return self._checked(FaceTrack.concatenate(parts), count)
        parts, position = [], 0
        with contextlib.closing(self.source.batches(self.group_frames)) as batches:
            for batch in batches:
                self._check()
                batch = batch[:count - position]
                with self.times.measure("align"):
                    parts.append(self._align(faces, batch, crop=False))
                position += len(batch)
                self.report("track faces", position, count)
                if position >= count:
                    break
        return self._checked(FaceTrack.concatenate(parts), count)

    def _checked(self, track: FaceTrack, count: int) -> FaceTrack:
        if not bool(track.has_face.any()):
            raise no_face_error(count)
        self._warn_close_calls()
        return track

    def _warn_close_calls(self) -> None:
        close_calls = getattr(self._faces.chooser, "close_calls", 0) if self._faces is not None else 0
        if close_calls:
            log.warning("%d frames had two faces of nearly the same size: the largest-face choice can jump between "
                        "them; choose one with face = 1 (the leftmost), 2, ...", close_calls)

    def _synced(self) -> Iterator[np.ndarray]:
        log_memory("start")
        group_frames = self.group_frames
        # in flight at most: one in each of the three stages, one in each queue behind them, one with the consumer
        pool = BufferPool(group_frames, self.height, self.width, count=7 if self.overlap else 2,
                          stopping=self.stopping)
        stage = (lambda items, name: in_thread(items, name, self.stopping)) if self.overlap else (lambda i, _: i)
        groups = stage(self._aligned(pool, group_frames), "align")
        groups = stage(self._denoised(groups), "denoise")
        groups = stage(self._restored(groups), "restore")
        try:
            for group in groups:
                yield group.frames
                pool.release(group.frames)
        finally:
            self.stopping.set()
            groups.close()
        if self.frames_with_face == 0 and self.segment is None:  # a segment's clip has a face somewhere
            raise no_face_error(self.num_frames)
        log_memory("end")

    # -- stage 1: decode -> detect / align -------------------------------------------------------------------

    def _aligned(self, pool: BufferPool, size: int) -> Iterator[Group]:
        known = self.segment.track if self.segment is not None else None  # a segment detects nothing
        detector = self.models.face_detector(self.options.detector) if known is None else None
        faces = self._faces = FaceStage(detector, self.models.resolution, device=self.models.device,
                                        face=self.options.face)
        if self.num_frames > self.source.num_frames:
            yield from self._revisited(faces, pool, size, known)
            return
        produced = self.first
        self.report("detect faces", 0, self.stop - self.first)
        batches = self.source.batches(size, pool.allocate, *([produced] if produced else []))
        while produced < self.stop:
            self._check()
            with self.times.measure("decode"):
                batch = next(batches, None)
            if batch is None:
                return
            batch = batch[: self.stop - produced]
            with self.times.measure("align"):
                part = None if known is None else known.slice(produced, produced + len(batch))
                aligned = self._align(faces, batch, part)
            self.frames_with_face += int(aligned.has_face.sum())
            produced += len(batch)
            if self.frames_with_face == 0 and known is None and produced >= self.stop:
                raise no_face_error(self.num_frames)  # the last frame aligned: fail before it is encoded
            yield Group(produced - len(batch), batch, aligned)

    def _revisited(self, faces: FaceStage, pool: BufferPool, size: int, known: FaceTrack | None) -> Iterator[Group]:
        """Ping-pong looping: align every source frame once, in order (as the reference does), keep the frames and
        face crops (RAM or disk cache) and the small geometry (RAM), then replay them by index. A segment crops
        only the batches of source frames it replays, where the whole clip's track puts the faces."""
        count, res = self.source.num_frames, self.models.resolution
        needed = None if known is None else {pingpong_index(i, count) // size for i in range(self.first, self.stop)}
        in_ram = isinstance(self.source, ArraySource)  # in-RAM frames are indexed where they are
        cache_dir = self.options.cache_dir
        with contextlib.ExitStack() as stack:
            frames = None if in_ram else stack.enter_context(
                FrameStore(count, (self.height, self.width, 3), self.plan.disk_cache, cache_dir))
            crops = stack.enter_context(FrameStore(count, (3, res, res), self.plan.disk_cache, cache_dir))
            affines, has_faces, anchors = [], [], []  # small: kept in RAM
            position = 0
            batches = self.source.batches(size, pool.allocate)
            while True:
                self._check()
                with self.times.measure("decode"):
                    batch = next(batches, None)
                if batch is None:
                    break
                if needed is None or position // size in needed:
                    with self.times.measure("align"):
                        aligned = self._align(
                            faces, batch, None if known is None else known.slice(position, position + len(batch)))
                        if frames is not None:
                            frames.write(position, batch)
                        crops.write(position, aligned.faces.cpu().numpy())
                    affines.append(aligned.affine)
                    has_faces.append(aligned.has_face)
                    anchors.append(aligned.anchors)
                pool.release(batch)
                position += len(batch)
                self.report("align faces", position, count)
            if known is None:
                affine, has_face, anchors = torch.cat(affines), torch.cat(has_faces), np.concatenate(anchors)
            else:
                affine, has_face, anchors = (known.affine.to(faces.device), known.has_face.to(faces.device),
                                             known.anchors)
            if not bool(has_face.any()):
                raise no_face_error(count)
            for start in range(self.first, self.stop, size):
                self._check()
                indices = [pingpong_index(i, count) for i in range(start, min(self.stop, start + size))]
                with self.times.measure("decode"):
                    buffer = pool.allocate((size, self.height, self.width, 3))[:len(indices)]
                    batch = self.source.at(indices, buffer) if in_ram else frames.read(indices, buffer)
                    crop = torch.from_numpy(crops.read(indices)).to(faces.device)
                aligned = AlignedBatch(crop, affine[indices], has_face[indices], anchors[indices])
                self.frames_with_face += int(aligned.has_face.sum())
                yield Group(start, batch, aligned)

    def _align(self, faces: FaceStage, frames: np.ndarray, known: FaceTrack | None = None, crop: bool = True):
        """Detect and align in sub-batches of the plan's face batch (a segment crops where the ``known`` track puts
        the faces; ``crop`` False: the track alone); out of memory, the sub-batch is redone smaller from the face
        stage's state before it (its smoothing carries across frames)."""
        parts, start = [], 0
        while start < len(frames):
            size = self.plan.face_batch
            before = faces.snapshot()
            try:
                part = frames[start:start + size]
                located = known.slice(start, start + size) if known is not None else faces.locate(part)
                parts.append(faces.crop(part, located) if crop else located)
            except RuntimeError as error:
                if not is_oom(error):
                    raise
                faces.rewind(before)
                self._shrink("face", error)
                continue
            start += size
        return parts[0] if len(parts) == 1 else type(parts[0]).concatenate(parts)

    # -- stage 2: VAE + UNet ---------------------------------------------------------------------------------

    def _denoised(self, groups: Iterator[Group]) -> Iterator[Group]:
        from .audio import frame_windows

        models, options = self.models, self.options
        settings = DenoiseSettings(steps=options.steps, guidance_scale=options.guidance_scale, seed=options.seed,
                                   chunk_size=models.chunk_size, chunks_per_call=self.plan.chunks_per_call,
                                   vae_batch=self.plan.vae_batch, deepcache_interval=options.deepcache_interval)
        mask = torch.from_numpy(load_mouth_mask(models.resolution).copy())
        denoiser = LipSyncDenoiser(models.unet, models.vae, _scheduler_config(), mask, settings, models.device,
                                   models.dtype)
        denoiser.start()
        denoiser.skip(self.first)  # a segment's noise: the draws a whole run makes before its first frame
        device = torch.device(models.device)
        sync = torch.cuda.current_stream(device).synchronize if device.type == "cuda" else None
        for group in groups:
            count = len(group.frames)
            window = frame_windows(self.features, float(self.fps), start=group.start, stop=group.start + count)
            with self.times.measure("denoise", sync):
                group.synced = self._denoise(denoiser, group, window)
            self.report("lip-sync", group.start + count - self.first, self.stop - self.first)
            yield group

    def _denoise(self, denoiser: LipSyncDenoiser, group: Group, audio: torch.Tensor) -> torch.Tensor | None:
        """Synced faces for a group, or None when no frame of it has a face. Out of memory: smaller batches, the
        generator rewound to the group's start, the group redone (the same draws: the same result)."""
        has_face = group.aligned.has_face
        if not bool(has_face.any()):
            denoiser.skip(len(group.frames))
            return None
        face_pixels = _fill_missing_faces(group.aligned.faces, has_face)
        size = denoiser.settings.chunk_size
        chunks = [Chunk(face_pixels[i:i + size], audio[i:i + size]) for i in range(0, len(group.frames), size)]
        count = len(group.frames)

        def on_step(step: int, steps: int) -> None:  # progress; cancel and stop within one denoising step
            self._check()
            self.report("lip-sync", group.start - self.first + count * step / steps, self.stop - self.first)

        while True:
            state = denoiser.generator_state()
            try:
                return torch.cat(denoiser.run(chunks, on_step=on_step))
            except RuntimeError as error:
                if not is_oom(error):
                    raise
                denoiser.rewind(state)
                plan = self._shrink("denoise", error)
                denoiser.resize(plan.chunks_per_call, plan.vae_batch)

    # -- stage 3: restore ------------------------------------------------------------------------------------

    def _restored(self, groups: Iterator[Group]) -> Iterator[Group]:
        faces = FaceStage(None, self.models.resolution, device=self.models.device)
        for group in groups:
            if group.synced is not None:
                with self.times.measure("restore"):
                    self._restore(faces, group)
            yield group

    def _restore(self, faces: FaceStage, group: Group) -> None:
        """Paste the synced faces into the group's frames, in place, in sub-batches of the face batch."""
        start = 0
        while start < len(group.frames):
            stop = start + self.plan.face_batch
            part = group.frames[start:stop]
            try:
                faces.restore(part, group.synced[start:stop], group.aligned.slice(start, stop), out=part)
            except RuntimeError as error:
                if not is_oom(error):
                    raise
                self._shrink("face", error)
                continue
            start = stop

    # -- shared ----------------------------------------------------------------------------------------------

    def _check(self) -> None:
        if self.stopping.is_set():
            raise Stopped("the run is stopping")
        _check_cancel(self.should_cancel)

    def _shrink(self, stage: str, error: BaseException) -> MemoryPlan:
        free_memory()
        with self._plan_lock:
            self.plan = smaller_batches(self.plan, stage, error)
            return self.plan


# -- helpers -----------------------------------------------------------------------------------------------------


def _scheduler_config() -> dict:
    import json

    return json.loads(SCHEDULER_CONFIG.read_text())


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
