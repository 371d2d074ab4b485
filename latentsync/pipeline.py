"""The streaming lip-sync pipeline: decode -> detect/align -> denoise chunks -> restore -> encode.

Every stage passes bounded batches: the frames, faces and outputs of the whole video are never in memory at once
(the stages: ``latentsync/engine``). When the audio outlasts the video, the video is played forward, backward,
forward... (the reference's ping-pong); only then are the source frames and their aligned faces kept for
revisiting, in RAM or in a disk cache by the memory plan. ``LipSyncPipeline.run`` is the usual consumer: a video
file with the audio muxed in, written atomically, and/or every batch to a frame sink.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from . import split
from .engine.control import Progress
from .engine.plan import plan_run
from .engine.run import RunResult, SyncedFrames
from .memory_limiter import vram_cap
from .model_set import LipSyncModels
from .options import PipelineOptions
from .paths import check_not_an_input, disk_full_sentence
from .scene import Line, SceneFrames, check_lines
from .tempfiles import TEMP_PREFIX, output_prefix, owned_temp_dir, remove_stale

__all__ = ["LipSyncPipeline", "LipSyncModels", "PipelineOptions", "RunResult", "SyncedFrames", "Progress"]


class LipSyncPipeline:
    """Lip-syncs videos with loaded models. ``frames()`` yields the synced frames (every stage running at the same
    time); ``run()`` delivers them to a file and/or a frame sink."""

    def __init__(self, models: LipSyncModels, options: PipelineOptions | None = None, overlap: bool = True):
        self.models = models
        self.options = options if options is not None else PipelineOptions()
        self.overlap = overlap  # False: the same stages one after another in the caller's thread (a baseline)

    def frames(self, video, audio, *, fps: float | None = None, progress: Progress | None = None,
               should_cancel: Callable[[], bool] | None = None, segment: split.Segment | None = None,
               mask_sink: Callable[[np.ndarray], None] | None = None, mask_feather: int | None = None
               ) -> SyncedFrames:
        """Start lip-syncing ``video`` (a path, a FrameSource, or (N, H, W, 3) frames at ``fps``) to ``audio`` (a
        path, a ComfyUI AUDIO dict or (waveform, rate)): probes the inputs, computes the audio features and plans
        the memory; iterating the result yields the output's uint8 (n, H, W, 3) batches in order (the video's own
        frames where the options keep them before or after the speech).

        ``segment`` (from ``plan_split``): only those output frames, equal to the same frames of the whole run.
        ``mask_sink``: given each batch's mouth mask, uint8 (n, H, W) (255 = the generated mouth), before it; its
        edge feathered over ``mask_feather`` crop pixels (default: the options' mouth_feather, as pasted)."""
        started = time.perf_counter()
        report = progress or (lambda *_: None)
        # 1. plan: the inputs probed, the speech placed in the video (timeline), the memory plan
        report("read video and audio", 0, 1)
        plan = plan_run(self.models, self.options, video, audio, fps, segment)
        # 2. audio features: Whisper over the whole speech (windows are cut per group by the synthesis stage)
        report("audio features", 0, 1)
        features = self.models.audio_encoder.features(plan.samples,
                                                      seamless=self.options.audio_context == "seamless")
        report("audio features", 1, 1)
        if plan.memory.offload:
            self.models.audio_encoder.offload()
        wanted = self.options.attention
        used = self.models.use_attention(wanted, self.options.lip_focus)  # before the run: its compiled calls use it
        # 3-5. the stages, started when the run is iterated: align (decode, detect, warp) -> synthesise (VAE + UNet)
        # -> restore (paste back); 6. write: ``run`` (a file and/or a frame sink)
        run = SyncedFrames(self.models, self.options, plan, features, overlap=self.overlap, progress=progress,
                           should_cancel=should_cancel, mask_sink=mask_sink, mask_feather=mask_feather)
        if segment is None:  # (a segment's run is one part of a run that checks it once)
            from .audio.speech import little_speech_warning

            warning = little_speech_warning(plan.samples)
            if warning:
                run.warn(warning)
        if wanted not in ("auto", used):
            run.warn(f"{wanted} unavailable: attention_mode {wanted} does not run here, {used} runs instead (the "
                     "same result within float tolerance); verify_installation.py says why")
        run.times.add("audio", time.perf_counter() - started)
        return run

    def scene(self, video, lines: list, *, fps: float | None = None, progress: Progress | None = None,
              should_cancel: Callable[[], bool] | None = None,
              mask_sink: Callable[[np.ndarray], None] | None = None) -> SceneFrames:
        """Start dubbing a scene: ``lines`` (``latentsync.scene.Line``: audio, start, face) placed in ``video``, each
        synced on its face, whole or (``sync_only_speech``) where its speech is; every other frame is the video's
        own. The output runs to the video's end (when_video_is_longer keep) or to the last line's end (cut). The
        edit list is checked whole before any model work: one sentence naming the line."""
        from .audio import SAMPLE_RATE
        from .frames import frames_from, open_source
        from .scene import plan_stretches, scene_sound

        report = progress or (lambda *_: None)
        report("read video and audio", 0, 1)
        source = open_source(video, fps)
        placed = check_lines(lines, source.num_frames, source.fps)
        stretches = plan_stretches(placed, source.fps, self.options, self.models.chunk_size)
        stop = source.num_frames if self.options.when_video_is_longer == "keep" else max(p.stop for p in placed)
        if len(placed) == 1:  # the speech as given (its own file and quality), placed at its first frame
            first = placed[0].first
            sound, delay = lines[0].audio, (float(first / source.fps) if first or stop > placed[0].stop else None)
        else:
            sound, delay = scene_sound([(p.line.audio, p.first) for p in placed], source.fps,
                                       float(stop / source.fps)), 0.0
        warnings = [] if stretches else ["no speech to sync: the voice detector hears none in the audio, so every "
                                         "frame is the video's own"]
        feather = max(self.options.mouth_feather, self.models.resolution // 32)  # the blend's mouth region

        def sync(stretch, stretch_progress, masks) -> SyncedFrames:  # a run on the video cut at the stretch
            options = dataclasses.replace(self.options, face=stretch.face, audio_start=0.0,
                                          when_video_is_longer="cut", sync_only_speech=False)
            return LipSyncPipeline(self.models, options, self.overlap).frames(
                frames_from(source, stretch.first), (stretch.samples, SAMPLE_RATE), progress=stretch_progress,
                should_cancel=should_cancel, mask_sink=masks, mask_feather=feather)

        return SceneFrames(source, stretches, stop, self.options.speech_blend, sync, sound, delay, placed[0].samples if
                           len(placed) == 1 else None, warnings, progress, should_cancel, mask_sink)

    def plan_split(self, video, audio, *, fps: float | None = None, progress: Progress | None = None,
                   should_cancel: Callable[[], bool] | None = None, anchors: np.ndarray | None = None
                   ) -> split.SplitPlan:
        """``latentsync.split.plan_split`` with these models and options."""
        return split.plan_split(self.models, self.options, video, audio, fps=fps, progress=progress,
                                should_cancel=should_cancel, anchors=anchors)

    def detect_faces(self, video, start: int, stop: int, *, fps: float | None = None,
                     should_cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """``latentsync.split.detect_faces`` with these models and options."""
        return split.detect_faces(self.models, self.options, video, start, stop, fps=fps, should_cancel=should_cancel)

    def run(self, video, audio, output_path: str | Path | None = None, *, fps: float | None = None,
            progress: Progress | None = None, should_cancel: Callable[[], bool] | None = None,
            frame_sink: Callable[[np.ndarray], None] | None = None, segment: split.Segment | None = None,
            mask_sink: Callable[[np.ndarray], None] | None = None) -> RunResult:
        """Lip-sync and deliver: a video at ``output_path`` (the options' codec) with the audio muxed in (written
        atomically; placed at ``audio_start`` and padded with silence where the options keep video around it),
        and/or every batch to ``frame_sink`` (a copy it may keep); at least one of the two. A sink (``frame_sink``,
        ``mask_sink``) with a ``start(frames, height, width)`` method is told the output's size first, once the run
        is planned: to preallocate, or to refuse with its own error before a frame is made.

        ``audio``: a speech track, or a list of ``latentsync.scene.Line`` (a scene: ``scene``); with
        ``sync_only_speech`` the speech is a scene of one line, at ``audio_start``.
        ``segment``: only those frames, and no audio (the parts are joined and the audio muxed once).
        ``mask_sink``: each batch's mouth mask (``frames``).

        The output is never one of the inputs (ValueError); temporary files that killed runs left beside it or in
        the temp folder are removed first; a full disk is an OSError naming the folder and the fix."""
        if output_path is None and frame_sink is None:
            raise ValueError("nothing would receive the frames: give an output path, a frame sink, or both")
        lines = audio if isinstance(audio, list) else [Line(audio, self.options.audio_start)] if (
            self.options.sync_only_speech) else None
        if lines is not None and segment is not None:
            raise ValueError("a scene (sync_only_speech, or lines) runs whole: it cannot be split into segments")
        temp_folder = self.options.cache_dir or tempfile.gettempdir()
        if output_path is not None:
            inputs = {f"line {n}": line.audio for n, line in enumerate(lines, 1)} if lines else {"audio": audio}
            check_not_an_input(output_path, {"video": video, **inputs})
            remove_stale(Path(output_path).parent, output_prefix(output_path))  # what killed runs left there
        remove_stale(temp_folder, TEMP_PREFIX)
        if lines is not None:
            synced = self.scene(video, lines, fps=fps, progress=progress, should_cancel=should_cancel,
                                mask_sink=mask_sink)
        else:
            synced = self.frames(video, audio, fps=fps, progress=progress, should_cancel=should_cancel,
                                 segment=segment, mask_sink=mask_sink)
        try:
            return self._deliver(synced, synced.sound if lines is not None else audio, output_path, frame_sink,
                                 mask_sink, muxed=segment is None)
        except (OSError, ValueError) as error:  # MediaError is a ValueError: ffmpeg's "No space left on device"
            full = disk_full_sentence(error, [Path(output_path).parent] if output_path is not None else [],
                                      temp_folder)
            if full is None:
                raise
            raise OSError(errno.ENOSPC, full) from error

    def _deliver(self, synced: SyncedFrames | SceneFrames, audio, output_path, frame_sink, mask_sink, muxed: bool
                 ) -> RunResult:
        from .video import VideoWriter, video_encoder

        for sink in (frame_sink, mask_sink):
            if hasattr(sink, "start"):
                sink.start(synced.output_frames, synced.height, synced.width)
        delay, sound = synced.audio_delay, None
        if muxed and delay is not None and not isinstance(audio, (str, Path)):  # placed once: the file, the caller
            from .audio import placed

            waveform, rate = _waveform_and_rate(audio, synced.samples)
            sound = placed(waveform, rate, delay, float(synced.output_frames / synced.fps)), rate
            audio, delay = sound, None  # (a file's speech is placed by the encoder: no decoded copy in memory)
        with contextlib.ExitStack() as stack:
            writer = None
            if output_path is not None:
                muxed_audio = self._audio_file(audio, synced.samples, stack) if muxed else None
                writer = stack.enter_context(VideoWriter(output_path, synced.width, synced.height, synced.fps,
                                                         audio=muxed_audio, encoder=video_encoder(self.options.codec),
                                                         audio_delay=delay))
            if synced.memory is not None:  # (a scene without a stretch to sync runs no model)
                stack.enter_context(vram_cap(synced.memory, self.models.device, enabled=self.options.hard_vram_cap))
            # 6. write: every batch the stages (3-5) make, to the encoder and/or the sink
            for batch in stack.enter_context(contextlib.closing(iter(synced))):  # closed first: threads stop
                if writer is not None:
                    with synced.times.measure("encode"):
                        writer.write(batch)
                if frame_sink is not None:
                    frame_sink(batch.copy())
        result = synced.result(None if output_path is None else Path(output_path))
        return dataclasses.replace(result, sound=sound) if sound is not None else result

    def _audio_file(self, audio, samples: np.ndarray, stack: contextlib.ExitStack) -> Path:
        """The audio to mux: its file, or in-memory audio written to a private temp wav at its own rate."""
        from .video import write_wav

        if isinstance(audio, (str, Path)):
            return Path(audio)
        folder = owned_temp_dir("audio", self.options.cache_dir)
        stack.callback(shutil.rmtree, folder, True)
        path = folder / "audio.wav"
        write_wav(path, *_waveform_and_rate(audio, samples))
        return path


def _waveform_and_rate(audio, samples: np.ndarray) -> tuple:
    """The caller's own waveform and rate (a ComfyUI AUDIO dict or a (waveform, rate) pair), so the muxed track
    keeps its quality; the 16 kHz mono analysis copy otherwise."""
    if isinstance(audio, Mapping):
        return audio["waveform"], int(audio["sample_rate"])
    if isinstance(audio, tuple):
        return audio[0], int(audio[1])
    return samples, 16000
