"""Encode RGB frames through an ffmpeg pipe, mux audio, and publish the file atomically."""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import wave
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from ..tempfiles import output_prefix, owned_name
from .rates import frame_rate
from .errors import MediaError
from .ffmpeg import choose_video_encoder, find_ffmpeg

AUDIO_BITRATE = "192k"  # AAC, for the muxed speech
ROOM_MARGIN = 16 * 1024 ** 2  # a folder with less free space than this (or than the video copied) counts as full


def _remove(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _temp_path(folder: Path, name: str, suffix: str) -> Path:
    """A fresh hidden name `.name.<pid>-<random><suffix>` in `folder` (a rerun removes it once its owner is gone:
    ``tempfiles.remove_stale``); ffmpeg creates the file (normal permissions)."""
    while True:
        temp = folder / owned_name(output_prefix(name), suffix)
        if not temp.exists():
            return temp


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal the child gets when its parent dies


def _end_with_parent():
    """For ffmpeg's ``preexec_fn`` on Linux: killed when the process that started it dies (even by kill -9), so
    it never finishes a hidden partial file on its own. ffmpeg runs in its own session so that a Ctrl-C reaches
    only Python, which then aborts it; this covers the deaths Python cannot see."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:  # runs in the child between fork and exec: no allocation, no locks
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above: end now
            os._exit(1)

    return set_death_signal


class _StderrDrain(threading.Thread):
    """Reads a pipe to its end, keeping the last lines, so the child never blocks on a full stderr."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.lines: collections.deque[str] = collections.deque(maxlen=40)

    def run(self) -> None:
        for line in iter(self.pipe.readline, b""):
            self.lines.append(line.decode(errors="replace").rstrip())
        self.pipe.close()

    def text(self) -> str:
        return " | ".join(line for line in self.lines if line)[-2000:]


class VideoWriter:
    """Write uint8 RGB frames to an H.264 MP4 at an exact rational frame rate, optionally with audio.

    Frames go through an ffmpeg pipe into a hidden temporary file beside `out_path`. On a clean close the
    audio (from `audio`; with `audio_delay` seconds of silence before it and silence after it up to the video's
    end; trimmed to the video's duration frames/fps) is muxed as AAC and the result renamed onto `out_path` with
    os.replace. On any error or interrupt the process is killed and every temporary file removed; `out_path` is
    never created or modified.

    Odd widths/heights are padded by one replicated row/column (yuv420p needs even sizes): the output is
    then (width + width % 2) x (height + height % 2); see `output_size`.
    """

    def __init__(self, out_path: str | Path, width: int, height: int, fps: Fraction | float | int,
                 audio: str | Path | None = None, audio_delay: float | None = None,
                 encoder: Sequence[str] | None = None,
                 ffmpeg: str | None = None):
        if width < 1 or height < 1:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        fps = frame_rate(fps)
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if audio is not None and not Path(audio).is_file():
            raise MediaError(f"audio file not found: {audio}: check the path")
        if audio_delay is not None and audio_delay < 0:
            raise ValueError(f"audio_delay must be >= 0 seconds, got {audio_delay}")
        self.out_path = Path(out_path)
        if not self.out_path.parent.is_dir():
            raise MediaError(f"output folder does not exist: {self.out_path.parent}: create it first")
        self.width, self.height, self.fps = int(width), int(height), fps
        self.output_size = (self.width + self.width % 2, self.height + self.height % 2)
        self.audio = Path(audio) if audio is not None else None
        self.audio_delay = audio_delay
        self.ffmpeg = ffmpeg or find_ffmpeg()
        self.encoder = list(encoder) if encoder is not None else choose_video_encoder(ffmpeg=self.ffmpeg)
        self.frames_written = 0
        self._suffix = self.out_path.suffix or ".mp4"
        self._video_temp: Path | None = None
        self._mux_temp: Path | None = None
        self._process: subprocess.Popen | None = None
        self._drain: _StderrDrain | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> "VideoWriter":
        self.open()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Start the ffmpeg encoder (done by `with`)."""
        if self._process is not None or self._closed:
            raise RuntimeError("VideoWriter can be opened once")
        folder, name = self.out_path.parent, self.out_path.name
        self._video_temp = _temp_path(folder, name, ".partial" + self._suffix)
        width, height = self.output_size
        args = [self.ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
                "-framerate", f"{self.fps.numerator}/{self.fps.denominator}", "-i", "pipe:0",
                "-an", *self.encoder, *self._container_flags(), str(self._video_temp)]
        try:
            self._process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, start_new_session=True,
                                             preexec_fn=_end_with_parent())
        except OSError as error:
            _remove(self._video_temp)
            self._closed = True
            raise MediaError(f"could not start ffmpeg ({self.ffmpeg}): {error}") from None
        self._drain = _StderrDrain(self._process.stderr)
        self._drain.start()

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 RGB frames shaped (n, H, W, 3) or (H, W, 3)."""
        if self._process is None or self._closed:
            raise RuntimeError("VideoWriter is not open: use it as a context manager")
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"expected frames shaped (n, {self.height}, {self.width}, 3), got {frames.shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        if len(frames) == 0:
            return
        if self.output_size != (self.width, self.height):
            frames = np.pad(frames, ((0, 0), (0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        frames = np.ascontiguousarray(frames)
        try:
            self._process.stdin.write(memoryview(frames).cast("B"))
        except (BrokenPipeError, OSError, ValueError):
            self._fail("ffmpeg stopped accepting frames")
        self.frames_written += len(frames)

    def close(self) -> Path:
        """Finish encoding, mux the audio, and rename onto out_path. Cleans up and raises on failure."""
        if self._closed:
            return self.out_path
        try:
            if self._process is None:
                raise RuntimeError("VideoWriter was never opened")
            if self.frames_written == 0:
                raise MediaError(f"no frames were written to {self.out_path}: nothing to save")
            try:
                self._process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            code = self._process.wait()
            self._drain.join(timeout=10)
            if code != 0:
                self._fail(f"ffmpeg exited with status {code} while encoding")
            final = self._video_temp
            if self.audio is not None:
                final = self._mux()
            os.replace(final, self.out_path)
        except BaseException:
            self.abort()
            raise
        self._cleanup()
        self._closed = True
        return self.out_path

    def abort(self) -> None:
        """Kill ffmpeg and remove every temporary file; out_path is left as it was."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            try:
                process.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._drain is not None:
            self._drain.join(timeout=2)
        self._cleanup()
        self._closed = True

    def __del__(self) -> None:  # a writer dropped without close: never leave ffmpeg or temp files behind
        try:
            if not self._closed and self._process is not None:
                self.abort()
        except Exception:
            pass

    # -- internals -------------------------------------------------------------------------------------------

    @property
    def duration(self) -> float:
        """Seconds of video written so far: frames / fps."""
        return float(self.frames_written / self.fps)

    def _container_flags(self) -> list[str]:
        return _container_flags(self._suffix)

    def _mux(self) -> Path:
        self._mux_temp = _temp_path(self.out_path.parent, self.out_path.name, ".mux" + self._suffix)
        _copy_video(self.ffmpeg, ["-i", str(self._video_temp)], self._mux_temp, self.duration, self.audio,
                    self.audio_delay)
        return self._mux_temp

    def _fail(self, what: str) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._drain is not None:
            self._drain.join(timeout=5)
        detail = self._drain.text() if self._drain is not None else ""
        self.abort()
        raise MediaError(f"{what} for {self.out_path}" + (f": {detail}" if detail else "")
                         + " (check the encoder, disk space and frame size)")

    def _cleanup(self) -> None:
        _remove(self._video_temp)
        _remove(self._mux_temp)
        self._video_temp = self._mux_temp = None


def join_videos(parts: Sequence[str | Path], out_path: str | Path, duration: float, audio: str | Path | None = None,
                ffmpeg: str | None = None, audio_delay: float | None = None) -> Path:
    """Join videos encoded alike (the segments of one run) into ``out_path`` without re-encoding them, with
    ``audio`` muxed in (trimmed to ``duration`` seconds; ``audio_delay`` as ``VideoWriter``'s); published
    atomically like ``VideoWriter``'s output."""
    out_path = Path(out_path)
    ffmpeg = ffmpeg or find_ffmpeg()
    listing = _temp_path(out_path.parent, out_path.name, ".parts.txt")
    temp = _temp_path(out_path.parent, out_path.name, ".join" + (out_path.suffix or ".mp4"))
    try:  # the concat demuxer's list: one quoted absolute path per line
        listing.write_text("".join("file '" + str(Path(part).resolve()).replace("'", "'\\''") + "'\n"
                                   for part in parts))
        _copy_video(ffmpeg, ["-f", "concat", "-safe", "0", "-i", str(listing)], temp, duration, audio, audio_delay)
        os.replace(temp, out_path)
    finally:
        _remove(listing)
        _remove(temp)
    return out_path


def _container_flags(suffix: str) -> list[str]:
    return ["-movflags", "+faststart"] if suffix.lower() in (".mp4", ".mov", ".m4v") else []


def _copy_video(ffmpeg: str, video_input: list[str], out: Path, duration: float, audio: Path | None,
                audio_delay: float | None) -> None:
    """The video stream copied as it is into ``out``, with ``audio`` (AAC, trimmed to ``duration``) when given:
    as it is, or (``audio_delay`` given) after that many seconds of silence and padded with silence."""
    if audio is not None:
        placed = [] if audio_delay is None else ["-af", _placed_audio_filter(audio_delay)]
        sound = ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", *placed, "-c:a", "aac", "-b:a", AUDIO_BITRATE,
                 "-t", f"{duration:.6f}"]
    else:
        sound = ["-map", "0:v:0"]
    args = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *video_input, *sound, "-c:v", "copy",
            *_container_flags(out.suffix), str(out)]
    result = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            check=False, preexec_fn=_end_with_parent())
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()[-1500:]
        if _short_of_room(out.parent, video_input[-1]):  # ffmpeg's words may be about what it read back, cut short
            raise OSError(errno.ENOSPC, f"No space left on device for {out} ({detail.splitlines()[-1]})")
        what = f"muxing the audio from {audio}" if audio is not None else f"writing {out}"
        raise MediaError(f"{what} failed ({detail}): check that the inputs are readable video and audio files")


def _short_of_room(folder: Path, video: str) -> bool:
    """Whether ``folder``'s disk has less room than a copy of ``video`` (a file, or a concat list's parts) takes:
    then a failed copy is a full disk, whatever ffmpeg said about it."""
    try:
        return shutil.disk_usage(folder).free < max(Path(video).stat().st_size, ROOM_MARGIN)
    except OSError:
        return False


def _placed_audio_filter(delay: float) -> str:
    """ffmpeg filters: ``delay`` seconds of silence first (in every channel, to the millisecond), silence after."""
    milliseconds = round(delay * 1000, 3)
    return (f"adelay=delays={milliseconds}:all=1," if milliseconds > 0 else "") + "apad"


def write_wav(path: str | Path, waveform, sample_rate: int) -> Path:
    """Write audio as 16-bit PCM WAV. waveform: float in [-1, 1] (or int16), shaped (samples,),
    (channels, samples) or (1, channels, samples) as in ComfyUI's AUDIO; numpy or torch."""
    if hasattr(waveform, "detach"):
        waveform = waveform.detach().cpu().float().numpy()
    data = np.asarray(waveform)
    if data.ndim == 3:
        if data.shape[0] != 1:
            raise ValueError(f"expected one audio clip, got a batch of {data.shape[0]}")
        data = data[0]
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2 or data.shape[1] == 0:
        raise ValueError(f"expected audio shaped (samples,) or (channels, samples), got {np.shape(waveform)}")
    if data.shape[0] > 8 and data.shape[1] <= 8:  # (samples, channels) given: accept it
        data = data.T
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    if data.dtype == np.int16:
        pcm = data
    else:
        pcm = np.round(np.clip(data.astype(np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)
    path = Path(path)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(pcm.shape[0])
        handle.setsampwidth(2)
        handle.setframerate(int(sample_rate))
        handle.writeframes(np.ascontiguousarray(pcm.T).astype("<i2").tobytes())
    return path
