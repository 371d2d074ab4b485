"""A whole scene in one pass: lines of speech placed at their times in a video, each on its own face, and (with
``sync_only_speech``) only the stretches with speech synced. Every other frame is the video's own.

    output:  [ video ][ stretch: synced ][ video ][ stretch ][ stretch ][ video ... up to the video's end ]

A stretch is synced as a run on the video and the speech cut to it would sync it (its own audio features, faces
found afresh, the seed's noise from its first frame), then its first and last ``speech_blend`` frames fade in from
the video's own frames, in the feathered mouth region only, so that nothing pops at a boundary.

An edit list is checked whole before any model loads: one sentence per fault, naming its line.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .audio import SAMPLE_RATE, load_audio, load_stereo, num_video_frames
from .frames import FrameSource, frames_between
from .options import RUN

FACES = RUN["face"]
log = logging.getLogger("latentsync.pipeline")


@dataclass(frozen=True)
class Line:
    """One line of speech: ``audio`` (a file path, a ComfyUI AUDIO dict or a (waveform, rate) pair) starting
    ``start`` seconds into the video, spoken by ``face`` (the face option's values; None: the run's face)."""
    audio: Any
    start: float = 0.0
    face: int | None = None


@dataclass(frozen=True)
class Stretch:
    """Video frames [first, stop) synced to ``samples`` (16 kHz mono, exactly ``stop - first`` frames long)."""
    line: int  # its line's number, from 1
    first: int
    stop: int
    samples: np.ndarray
    face: int

    @property
    def frames(self) -> int:
        return self.stop - self.first


@dataclass(frozen=True)
class PlacedLine:
    """A checked line: its speech (16 kHz mono) on video frames [first, stop)."""
    line: Line
    samples: np.ndarray
    first: int
    stop: int


def parse_line(text: str, name: str) -> Line:
    """``AUDIO@START`` or ``AUDIO@START@FACE`` (seconds; the face option's numbers) as a Line; one sentence calling
    it ``name`` otherwise."""
    parts = text.strip().split("@")
    if len(parts) < 2:
        raise ValueError(f"{name}: {text!r} is not AUDIO@START or AUDIO@START@FACE (e.g. hello.wav@2.5@1)")
    face = None
    if len(parts) > 2 and parts[-1].strip().isdigit() and _is_number(parts[-2]):
        face = FACES.parse(parts.pop(), f"{name}'s face")
    start = parts.pop()
    if not _is_number(start):
        raise ValueError(f"{name}: the start {start!r} is not a number of seconds (AUDIO@START, e.g. hello.wav@2.5)")
    return Line("@".join(parts), float(start), face)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def check_lines(lines: list[Line], video_frames: int, fps: Fraction) -> list[PlacedLine]:
    """Each line with its speech and frames, after checking the edit list whole: files, starts inside the video,
    ends before its end, faces, no overlaps. One sentence naming the line otherwise (before any model loads)."""
    if not lines:
        raise ValueError("the edit list is empty: give at least one line (AUDIO@START)")
    video_seconds = video_frames / fps
    placed = []
    for number, line in enumerate(lines, 1):
        where = f"line {number}" if len(lines) > 1 else "the speech"
        if isinstance(line.audio, (str, Path)) and not Path(line.audio).is_file():
            raise FileNotFoundError(f"{where}: no such file: {line.audio}")
        if line.face is not None:
            FACES.check(line.face, f"{where}'s face")
        if not 0 <= line.start < float(video_seconds):
            raise ValueError(f"{where} starts at {line.start:g} s, outside the video (0 to {float(video_seconds):.2f} "
                             "s)")
        try:
            samples = load_audio(line.audio)
        except (ValueError, OSError) as error:
            raise type(error)(f"{where}: {error}") from None
        first = round(line.start * fps)
        stop = first + num_video_frames(len(samples), fps)
        if stop > video_frames:
            latest = math.floor((video_frames - (stop - first)) / fps * 100) / 100
            raise ValueError(f"{where} lasts {len(samples) / SAMPLE_RATE:.2f} s from {line.start:g} s: it ends after "
                             f"the video ({float(video_seconds):.2f} s)"
                             + (f"; start it by {latest:.2f} s" if latest >= 0 else "; the video is too short for it"))
        placed.append(PlacedLine(line, samples, first, stop))
    order = sorted(range(len(lines)), key=lambda i: placed[i].first)
    for before, after in zip(order, order[1:]):
        if placed[after].first < placed[before].stop:
            raise ValueError(f"line {after + 1} (from {lines[after].start:g} s) starts before line {before + 1} (from "
                             f"{lines[before].start:g} s) ends at {float(placed[before].stop / fps):.2f} s: lines "
                             "must not overlap")
    return placed


def plan_stretches(placed: list[PlacedLine], fps: Fraction, options, chunk: int) -> list[Stretch]:
    """The synced stretches of checked lines (``check_lines``), in video order: each line whole, or
    (``options.sync_only_speech``) its stretches with speech, padded, widened to the model's ``chunk`` frames where
    shorter and joined where they then touch."""
    stretches = []
    for number, spoken in enumerate(placed, 1):
        face = options.face if spoken.line.face is None else spoken.line.face
        for start, stop in _speech_frames(spoken.samples, fps, spoken.stop - spoken.first, chunk, options):
            cut = round(start * SAMPLE_RATE / fps)
            length = math.ceil((stop - start) * SAMPLE_RATE / fps)  # just enough for stop - start frames
            piece = spoken.samples[cut:cut + length]
            if len(piece) < length:
                piece = np.pad(piece, (0, length - len(piece)))
            stretches.append(Stretch(number, spoken.first + start, spoken.first + stop, piece, face))
    return sorted(stretches, key=lambda stretch: stretch.first)


def _speech_frames(samples: np.ndarray, fps: Fraction, count: int, chunk: int, options) -> list[tuple[int, int]]:
    """[start, stop) frame ranges of a line of ``count`` frames to sync."""
    if not options.sync_only_speech:
        return [(0, count)]
    from .audio.speech import speech_spans

    ranges = []
    for span in speech_spans(samples, min_pause=options.speech_min_pause, pad=options.speech_pad):
        start, stop = math.floor(span.start * fps), min(count, math.ceil(span.end * fps))
        if stop - start < chunk:  # the model syncs `chunk` frames at a time: a shorter stretch is widened
            start = max(0, min(start - (chunk - (stop - start)) // 2, count - chunk))
            stop = min(count, start + chunk)
        if ranges and start <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(stop, ranges[-1][1]))
        else:
            ranges.append((start, stop))
    return ranges


def blend_weight(position: int, frames: int, blend: int, at_start: bool, at_end: bool) -> float:
    """How much of the synced mouth frame ``position`` of a ``frames``-long stretch shows: rising over its first
    ``blend`` frames and falling over its last (where the video's own frames are next to it), 1 between."""
    weight = 1.0
    if at_start and position < blend:
        weight = min(weight, (position + 1) / (blend + 1))
    if at_end and frames - 1 - position < blend:
        weight = min(weight, (frames - position) / (blend + 1))
    return weight


class SceneFrames:
    """A scene run, read as a pipeline run is (``SyncedFrames``): iterate it once for the output's uint8 batches, the
    video's own frames up to ``stop`` with each stretch as ``sync(stretch, progress, mask_sink)`` makes it (a
    pipeline run on the video cut at the stretch), blended at its ends; then ask ``result()``.

    ``sound`` and ``audio_delay``: what the output's sound is made of (as ``LipSyncPipeline.run`` muxes it).
    ``mask_sink``: each batch's mouth weight, uint8 (n, H, W), before the batch (0 outside the stretches)."""

    def __init__(self, video: FrameSource, stretches: list[Stretch], output_frames: int, blend: int, sync: Callable,
                 sound, audio_delay: float | None, samples: np.ndarray | None, warnings: list[str],
                 progress=None, should_cancel=None, mask_sink=None, batch: int = 16):
        from .engine.threads import StageTimes

        self.video, self.stretches, self.blend, self.sync = video, stretches, blend, sync
        self.output_frames = output_frames  # the video's frames from its first to the last line's end, or its end
        self.sound, self.audio_delay, self.samples = sound, audio_delay, samples
        self.warnings = list(warnings)
        for warning in warnings:
            log.warning("%s", warning)
        self.report = progress or (lambda *_: None)
        self.should_cancel, self.mask_sink, self.batch = should_cancel, mask_sink, batch
        self.fps, self.width, self.height = video.fps, video.width, video.height
        self.times = StageTimes()
        self.results: list = []  # each stretch's RunResult: its run is let go once done (its buffers, features)
        self._prepared = None  # the first stretch's (masks, run), made early when ``memory`` asks for its plan
        self._memory = None
        self._started = time.perf_counter()

    @property
    def memory(self):
        """The memory plan of the stretches' runs (the first one's: they share the options and the frame size)."""
        if self._memory is None and self.stretches:
            self._prepared = self._new_run(self.stretches[0])
            self._memory = self._prepared[1].plan.memory
        return self._memory

    def __iter__(self) -> Iterator[np.ndarray]:
        position = 0
        for number, stretch in enumerate(self.stretches):
            yield from self._passed(position, stretch.first)
            yield from self._synced(number, stretch)
            position = stretch.stop
        yield from self._passed(position, self.output_frames)

    def _new_run(self, stretch: Stretch) -> tuple:
        masks: list[np.ndarray] = []
        offset = stretch.first

        def progress(stage: str, done: float, total: int) -> None:  # one count over the scene's output frames
            if stage.startswith("lip-sync"):
                self.report(stage, offset + done, self.output_frames)

        return masks, self.sync(stretch, progress, masks.append)

    def _passed(self, start: int, stop: int) -> Iterator[np.ndarray]:
        if start >= stop:
            return
        from .engine.control import check_cancel

        batches = frames_between(self.video, start, stop, self.batch)
        try:
            for position, batch in batches:
                check_cancel(self.should_cancel)
                if self.mask_sink is not None:
                    self.mask_sink(np.zeros(batch.shape[:3], dtype=np.uint8))
                yield batch
                self.report("lip-sync", position + len(batch), self.output_frames)
        finally:
            batches.close()

    def _synced(self, number: int, stretch: Stretch) -> Iterator[np.ndarray]:
        prepared, self._prepared = self._prepared if number == 0 else None, None
        masks, run = prepared or self._new_run(stretch)
        at_start, at_end = stretch.first > 0, stretch.stop < self.output_frames
        position = 0
        for batch in self._named(run, stretch):
            mask = masks.pop(0)
            weights = np.array([blend_weight(position + i, stretch.frames, self.blend, at_start, at_end)
                                for i in range(len(batch))], dtype=np.float32)
            if (weights < 1).any():
                batch, mask = self._blended(batch, mask, stretch.first + position, weights)
            if self.mask_sink is not None:
                self.mask_sink(mask)
            position += len(batch)
            yield batch
        self.results.append(run.result())

    def _named(self, run, stretch: Stretch) -> Iterator[np.ndarray]:
        """The run's batches; its missing face named by the line it was asked for."""
        from .errors import NoFaceError

        try:
            yield from run
        except NoFaceError as error:
            raise NoFaceError(f"line {stretch.line} (face {stretch.face or 'the largest'}, frames {stretch.first} to "
                              f"{stretch.stop - 1}): {error}") from None

    def _blended(self, synced: np.ndarray, mask: np.ndarray, first: int, weights: np.ndarray) -> tuple:
        """The video's own frames with the synced mouth over them at ``weights`` (per frame) in the mouth region."""
        with contextlib.closing(frames_between(self.video, first, first + len(synced), len(synced))) as batches:
            source = np.concatenate([batch for _, batch in batches]).astype(np.float32)
        mouth = mask.astype(np.float32) / 255.0 * weights[:, None, None]
        mixed = np.rint(source + mouth[..., None] * (synced.astype(np.float32) - source)).astype(np.uint8)
        blended = np.where(weights[:, None, None, None] < 1, mixed, synced)
        return blended, np.rint(mouth * 255).astype(np.uint8)

    def result(self, output_path: Path | None = None):
        """The scene's RunResult: its frames, those without a face, every run's warnings (once each)."""
        from .engine.run import RunResult

        results = self.results
        seconds = dict(self.times.seconds)
        for result in results:
            for stage, spent in result.seconds.items():
                if stage != "total":
                    seconds[stage] = seconds.get(stage, 0.0) + spent
        seconds["total"] = time.perf_counter() - self._started
        warnings = list(dict.fromkeys([*self.warnings, *(warning for result in results
                                                          for warning in result.warnings)]))
        return RunResult(output_path, self.output_frames, self.fps, sum(r.frames_without_face for r in results),
                         results[0].plan if results else None, seconds, warnings, self.audio_delay)


def scene_sound(placed: list[tuple[Any, int]], fps: Fraction, seconds: float, rate: int = 48000):
    """The output's sound: each (audio, first frame) of ``placed`` from that frame's time on, silence between,
    ``seconds`` long, as (float32 (2, samples), ``rate``)."""
    track = np.zeros((2, round(seconds * rate)), dtype=np.float32)
    for audio, first in placed:
        sound = load_stereo(audio, rate)
        at = round(first / fps * rate)
        end = min(track.shape[1], at + sound.shape[1])
        track[:, at:end] += sound[:, :end - at]
    return np.clip(track, -1.0, 1.0), rate
