"""Locate ffmpeg and choose the H.264 encoder (NVENC when a trial encode works, else libx264)."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess

from .errors import FFmpegNotFoundError

log = logging.getLogger(__name__)

#: Environment variable that points at a specific ffmpeg binary (checked first).
FFMPEG_ENV = "LATENTSYNC_FFMPEG"


def find_ffmpeg() -> str:
    """Path of an ffmpeg binary: $LATENTSYNC_FFMPEG, then ffmpeg on PATH, then imageio-ffmpeg's bundled one."""
    override = os.environ.get(FFMPEG_ENV)
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return override
        raise FFmpegNotFoundError(f"{FFMPEG_ENV}={override!r} is not an executable file: fix or unset it")
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as error:  # ImportError, or the package without its binary
        raise FFmpegNotFoundError(
            "ffmpeg was not found (not on PATH and no bundled binary): run `pip install imageio-ffmpeg` "
            f"or install ffmpeg system-wide ({error})") from None


@functools.lru_cache(maxsize=8)
def _encoders(ffmpeg: str) -> frozenset[str]:
    """Names of the encoders this ffmpeg build lists (empty if it cannot be asked)."""
    try:
        listing = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    names = set()
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VAS":
            names.add(parts[1])
    return frozenset(names)


def _nvenc_args(quality: int) -> list[str]:
    return ["-c:v", "h264_nvenc", "-preset", "p5", "-tune", "hq", "-rc", "vbr", "-cq", str(quality),
            "-b:v", "0", "-pix_fmt", "yuv420p"]


@functools.lru_cache(maxsize=8)
def _nvenc_trial(ffmpeg: str) -> bool:
    if "h264_nvenc" not in _encoders(ffmpeg):
        return False
    args = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi",
            "-i", "color=c=gray:s=256x256:r=25", "-frames:v", "3", *_nvenc_args(23), "-f", "null", "-"]
    try:
        result = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    if result.returncode != 0:
        log.debug("h264_nvenc trial failed: %s", result.stderr.decode(errors="replace").strip()[-500:])
    return result.returncode == 0


def nvenc_available(ffmpeg: str | None = None) -> bool:
    """True when a short h264_nvenc trial encode succeeds with this ffmpeg (cached per binary)."""
    try:
        binary = ffmpeg or find_ffmpeg()
    except FFmpegNotFoundError:
        return False
    return _nvenc_trial(binary)


def choose_video_encoder(quality: int = 18, ffmpeg: str | None = None) -> list[str]:
    """ffmpeg output arguments for H.264 yuv420p: h264_nvenc (cq=quality) if it works, else libx264 (crf=quality).

    Falls back to libopenh264, then mpeg4, on builds without libx264.
    """
    binary = ffmpeg or find_ffmpeg()
    if nvenc_available(binary):
        return _nvenc_args(quality)
    encoders = _encoders(binary)
    if not encoders or "libx264" in encoders:
        return ["-c:v", "libx264", "-preset", "medium", "-crf", str(quality), "-pix_fmt", "yuv420p"]
    if "libopenh264" in encoders:
        return ["-c:v", "libopenh264", "-b:v", "8M", "-pix_fmt", "yuv420p"]
    return ["-c:v", "mpeg4", "-q:v", "2", "-pix_fmt", "yuv420p"]



def video_encoder(codec: str = "h264", quality: int = 18, ffmpeg: str | None = None) -> list[str]:
    """ffmpeg output arguments for ``codec``: ``choose_video_encoder`` for h264; FFV1 for ffv1, whose RGB frames
    decode to exactly the frames written (for masters, and to compare runs pixel for pixel)."""
    if codec == "ffv1":
        return ["-c:v", "ffv1", "-level", "3", "-pix_fmt", "bgr0"]
    if codec != "h264":
        raise ValueError(f"codec must be h264 or ffv1; got {codec!r}")
    return choose_video_encoder(quality, ffmpeg)
