"""Errors raised by the video stage (defined with the library's others in ``latentsync.errors``)."""

from ..errors import FFmpegNotFoundError, MediaError  # noqa: F401
