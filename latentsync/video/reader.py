"""Probe and stream-decode video files with PyAV: batches of RGB frames, never the whole video."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import MediaError


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about a video file.

    width/height are the displayed size (after rotation); frames from `iter_frame_batches` have this size.
    rotation is the container's display rotation in degrees counter-clockwise (0, 90, 180, 270), already
    applied to decoded frames. duration = num_frames / fps, in seconds.
    """

    path: Path
    width: int
    height: int
    fps: Fraction
    num_frames: int
    duration: float
    rotation: int = 0
    codec: str = ""
    has_audio: bool = False


# each kind of file: what it is called, and what to do when it cannot be read
_KINDS = {"video": ("a video", "re-export it (e.g. as H.264 MP4)"),
          "audio": ("an audio file", "export it again (e.g. as WAV)")}


def _open(path: str | Path, kind: str = "video"):
    """Open a media file with PyAV, turning every failure into a MediaError naming the path (``kind``: what the
    file should be, video or audio)."""
    import av

    path = Path(path)
    noun, fix = _KINDS[kind]
    if not path.exists():
        raise MediaError(f"{kind} file not found: {path}: check the path")
    if not path.is_file():
        raise MediaError(f"not a file: {path}: give the path of {noun}")
    try:
        return av.open(str(path), mode="r")
    except Exception as error:  # av.FFmpegError (InvalidDataError, ...), OSError
        raise MediaError(f"cannot read {path} as media ({_reason(error)}): the file is corrupt, incomplete or not "
                         f"{noun}; {fix}") from None


def _reason(error: BaseException) -> str:
    """FFmpeg's words for what went wrong, without its error number and the path (the sentence names the file)."""
    return getattr(error, "strerror", None) or type(error).__name__


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise MediaError(f"{path} has no video stream: give a video file, not an audio or image file")
    return container.streams.video[0]


def _rate(stream, path: Path) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate.numerator, rate.denominator)
    raise MediaError(f"{path} does not state a frame rate: re-encode it with a constant frame rate")


def _normal_rotation(degrees: float) -> int:
    return int(round(degrees / 90.0)) % 4 * 90


def _first_frame(container, stream, path: Path):
    import av

    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as error:
        raise MediaError(f"cannot decode the video in {path} ({_reason(error)}): the file is corrupt or uses an "
                         "unsupported codec; re-export it as H.264 MP4") from None
    raise MediaError(f"{path} contains no decodable video frame: the file is empty or corrupt")


def count_frames(path: str | Path) -> int:
    """Exact number of video packets (frames) in the file, by demuxing without decoding."""
    container = _open(path)
    try:
        stream = _video_stream(container, Path(path))
        return sum(1 for packet in container.demux(stream) if packet.size > 0)
    finally:
        container.close()


def probe_video(path: str | Path) -> VideoInfo:
    """Size, exact frame rate, frame count (counted when the container does not say) and rotation of a video.

    Decodes the first frame to make sure the stream is readable. Raises MediaError on any unusable file.
    """
    path = Path(path)
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        fps = _rate(stream, path)
        frame = _first_frame(container, stream, path)
        rotation = getattr(frame, "rotation", None)
        if rotation is None:  # old PyAV: ffmpeg's legacy "rotate" tag is clockwise
            rotation = -float(stream.metadata.get("rotate", 0) or 0)
        rotation = _normal_rotation(rotation)
        width, height = frame.width, frame.height
        codec = stream.codec_context.name
        has_audio = bool(container.streams.audio)
        num_frames = int(stream.frames or 0)
    finally:
        container.close()
    if num_frames <= 0:
        num_frames = count_frames(path)
    if num_frames <= 0:
        raise MediaError(f"{path} contains no video frames: the file is empty or corrupt")
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(path=path, width=width, height=height, fps=fps, num_frames=num_frames,
                     duration=float(num_frames / fps), rotation=rotation, codec=codec, has_audio=has_audio)


def _to_rgb(frame, rotation: int) -> np.ndarray:
    array = frame.to_ndarray(format="rgb24")
    return np.rot90(array, rotation // 90) if rotation else array


def _decode(container, stream, path: Path) -> Iterator:
    import av

    try:
        yield from container.decode(stream)
    except av.FFmpegError as error:
        raise MediaError(f"decoding {path} failed ({_reason(error)}): the file is corrupt or truncated") from None


def _frames_from(path: Path, start: int) -> Iterator[tuple[int, object, int]]:
    """(index, frame, rotation) from frame `start` on: seeks when start > 0, counts frames from 0 otherwise.

    After a seek, indices come from timestamps; if they do not line up with a constant frame rate the
    file is decoded again from the start, counting frames (exact for variable frame rates too).
    """
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        fps = _rate(stream, path)
        rotation = None
        if start > 0 and stream.time_base is not None:
            origin = stream.start_time or 0
            target = origin + int(Fraction(start) / fps / stream.time_base)
            seekable = True
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
            except Exception:
                seekable = False
            frames = _decode(container, stream, path)
            first = next(frames, None) if seekable else None
            if first is not None and first.pts is not None:
                exact = (first.pts - origin) * stream.time_base * fps
                index = round(exact)
                if abs(exact - index) < Fraction(1, 4) and index <= start:
                    rotation = _normal_rotation(getattr(first, "rotation", 0) or 0)
                    yield index, first, rotation
                    for frame in frames:
                        if frame.pts is None:
                            raise MediaError(f"{path} has frames without timestamps after a seek: "
                                             "read it from the start (start=0) or re-encode it")
                        index = round((frame.pts - origin) * stream.time_base * fps)
                        yield index, frame, rotation
                    return
            container.close()
            container = _open(path)  # fall back: decode from the first frame, counting
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"
        for index, frame in enumerate(_decode(container, stream, path)):
            if rotation is None:
                rotation = _normal_rotation(getattr(frame, "rotation", 0) or 0)
            yield index, frame, rotation
    finally:
        container.close()


def iter_frame_batches(path: str | Path, batch_size: int, start: int = 0,
                       allocate: Callable[[tuple], np.ndarray] | None = None) -> Iterator[np.ndarray]:
    """Consecutive uint8 RGB batches (n, H, W, 3), n <= batch_size, from frame `start` to the last frame.

    Streams with PyAV (threaded decoding); holds at most one batch. Display rotation is applied. ``allocate(shape)``
    gives the array each batch is decoded into (a reused buffer; the default allocates a new one per batch).
    """
    allocate = allocate or (lambda shape: np.empty(shape, dtype=np.uint8))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    path = Path(path)
    buffer: np.ndarray | None = None
    filled = 0
    for index, frame, rotation in _frames_from(path, start):
        if index < start:
            continue
        rgb = _to_rgb(frame, rotation)
        if buffer is None:
            buffer = allocate((batch_size, *rgb.shape))
        if rgb.shape != buffer.shape[1:]:  # resolution change mid-stream: scale to the first frame's size
            height, width = buffer.shape[1:3]
            if rotation in (90, 270):
                width, height = height, width
            rgb = np.rot90(frame.to_ndarray(format="rgb24", width=width, height=height), rotation // 90)
        buffer[filled] = rgb
        filled += 1
        if filled == batch_size:
            yield buffer
            buffer, filled = None, 0
    if buffer is not None and filled:
        yield buffer[:filled]


def check_audio_file(path: str | Path) -> None:
    """MediaError in one sentence, before any work, for a missing, empty or unreadable audio file, or one without an
    audio stream (an audio file, or a video with sound, is fine)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise MediaError(f"the audio file {path} is empty (0 bytes): export the speech again")
    with _open(path, "audio") as container:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio stream: give a speech file, or a video that has sound")


# frame durations further than this from the usual one make a file variable-frame-rate (a timestamp rounded to
# its time base moves by at most one tick; phone videos vary by 10-50 %)
VARIABLE_RATE_TOLERANCE = 0.1


def variable_frame_rate(path: str | Path) -> tuple[float, float] | None:
    """(shortest, longest) frame duration in seconds when the video's frames are not evenly spaced (a phone's
    variable frame rate), None when they are. Reads packet timestamps only, no frame is decoded.

    The pipeline reads every frame in order at the stream's average rate, as the published code does (through
    ffmpeg at 25 fps), so the timing of such a video is evened out: callers say so."""
    path = Path(path)
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        stamps = sorted(packet.pts for packet in container.demux(stream) if packet.size > 0 and packet.pts is not None)
        tick = stream.time_base
    finally:
        container.close()
    if len(stamps) < 3 or tick is None:
        return None
    steps = np.diff(np.asarray(stamps, dtype=np.int64))
    usual = float(np.median(steps))
    spread = np.abs(steps - usual)
    if usual <= 0 or not (spread > max(1.0, VARIABLE_RATE_TOLERANCE * usual)).any():
        return None
    return float(steps.min() * tick), float(steps.max() * tick)
