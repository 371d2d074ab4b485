"""Every error the library raises on purpose, under one base class: one sentence with the cause and the fix.

Each also keeps the built-in class callers knew it by (a ``MediaError`` is a ``ValueError``, a missing checkpoint a
``FileNotFoundError``), so ``except LatentSyncError`` catches all of them and older ``except`` clauses still work.
"""

from __future__ import annotations


class LatentSyncError(Exception):
    """Base of the library's own errors."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = "latentsync"  # its name in error reports (ComfyUI names the pack by its disk path)


LatentSyncError.__module__ = "latentsync"


class Cancelled(LatentSyncError):
    """The user cancelled the run; nothing was written."""


class NoFaceError(LatentSyncError, RuntimeError):
    """No usable face anywhere in the input."""


class OutOfMemory(LatentSyncError, RuntimeError):
    """Even the smallest batch did not fit."""


class BackendUnavailableError(LatentSyncError, RuntimeError):
    """The requested attention backend cannot run here; the message says why and what can."""


class MediaError(LatentSyncError, ValueError):
    """A media file is missing, unreadable, has no usable stream, or could not be written."""


class FFmpegNotFoundError(LatentSyncError, RuntimeError):
    """No ffmpeg binary could be found."""


class MissingCheckpointError(LatentSyncError, FileNotFoundError):
    """A weight file is absent and could not be downloaded."""


class DownloadError(LatentSyncError, RuntimeError):
    """A download that was asked for could not be completed (offline, a failed transfer, a bad checksum)."""


class CheckpointError(LatentSyncError, ValueError):
    """A UNet checkpoint that cannot be used."""


class CheckpointCorruptError(CheckpointError):
    """The file is not a readable checkpoint."""


class WhisperCheckpointError(LatentSyncError, ValueError):
    """A Whisper checkpoint that cannot be used (unreadable, wrong format, wrong tensors)."""


class JobsFileError(LatentSyncError, ValueError):
    """The jobs file cannot be read as jobs."""


class ManifestError(LatentSyncError, RuntimeError):
    """The manifest cannot be written, or another batch holds it."""


def unsafe_pickle(error: BaseException) -> bool:
    """Whether torch's weights-only load refused the file for holding Python objects besides tensors (which could
    run code): such a file is never loaded here, and torch's advice to load it unsafely is never repeated."""
    return "Unsupported global" in str(error)  # a GLOBAL opcode naming a callable: code would run on loading


def torch_load_detail(error: BaseException) -> str:
    """What went wrong reading a checkpoint, in a few words of torch's, never its advice on loading unsafely."""
    text = str(error)
    if "Weights only load failed" in text:  # torch's long text, advice included: only its cause, if it names one
        causes = [line.strip() for line in text.splitlines() if line.strip().startswith(("WeightsUnpickler error",
                                                                                          "Unsupported"))]
        return causes[0] if causes else "not a weights-only checkpoint"
    return (text.strip().splitlines() or [type(error).__name__])[0]


def sentence_of(error: BaseException) -> str:
    """An error's own sentence: an OSError made of a number and a sentence without "[Errno 28]" before it."""
    if isinstance(error, OSError) and error.errno and error.strerror and error.filename is None:
        return error.strerror
    return str(error)
