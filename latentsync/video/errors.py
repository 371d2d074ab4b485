"""Errors raised by the video stage: one sentence with the cause and the fix."""

from __future__ import annotations


class MediaError(ValueError):
    """A media file is missing, unreadable, has no usable stream, or could not be written."""

    __module__ = "latentsync"  # its name in error reports (ComfyUI names the pack by its disk path)


class FFmpegNotFoundError(RuntimeError):
    """No ffmpeg binary could be found."""

    __module__ = "latentsync"  # its name in error reports (ComfyUI names the pack by its disk path)
