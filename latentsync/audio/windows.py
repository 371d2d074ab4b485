"""Per-video-frame audio windows over the 50 steps/s Whisper features, and the frame count of a track.

Video frame ``i`` at ``fps`` is centred on feature step ``c = int(i * 50 / fps)`` and uses the ten steps
``c-4 .. c+5``, each clamped to ``[0, T50-1]``; its ``(10, L, d)`` slice is flattened step-major to
``(10*L, d)`` (as the reference's ``get_sliced_feature`` concatenates ``(L, d)`` rows).
"""

from __future__ import annotations

from fractions import Fraction
from numbers import Integral, Real
from typing import Union

import torch

from .loading import SAMPLE_RATE

STEPS_PER_SECOND = 50
"""Whisper encoder steps per second of audio (16 kHz, hop 160, conv stride 2)."""
WINDOW_BEFORE = 4
WINDOW_AFTER = 5
WINDOW_STEPS = WINDOW_BEFORE + 1 + WINDOW_AFTER  # 10

Fps = Union[int, float, Fraction]


def _exact_fps(fps: Fps) -> Fraction:
    """The frame rate as an exact fraction; a float is read as its shortest decimal (29.97 -> 2997/100)."""
    if isinstance(fps, bool) or not isinstance(fps, Real):
        raise TypeError(f"fps must be a number, got {type(fps).__name__}")
    exact = Fraction(repr(float(fps))) if isinstance(fps, float) else Fraction(fps)
    if exact <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return exact


def num_video_frames(num_samples: int, fps: Fps, *, sample_rate: int = SAMPLE_RATE) -> int:
    """Whole video frames in ``num_samples`` of audio: ``floor(duration * fps)``, ``duration = samples / rate``.

    This is the length of the product (the reference emits two more frames; see the README). Computed exactly
    (a float fps counts as its decimal value, so 100 s at 29.97 gives 2997 frames, not 2996).
    """
    if not isinstance(num_samples, Integral) or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
    return int(Fraction(int(num_samples)) * _exact_fps(fps) / int(sample_rate))


def frames_for_duration(seconds: float, fps: Fps) -> int:
    """Whole video frames in ``seconds`` of audio: ``floor(seconds * fps)`` (seconds read as a decimal)."""
    exact = Fraction(repr(float(seconds))) if isinstance(seconds, float) else Fraction(seconds)
    if exact < 0:
        raise ValueError(f"the duration must not be negative, got {seconds}")
    return int(exact * _exact_fps(fps))


def require_video_frames(num_samples: int, fps: Fps, *, sample_rate: int = SAMPLE_RATE) -> int:
    """:func:`num_video_frames`, raising a ValueError when the audio is shorter than one video frame."""
    total = num_video_frames(num_samples, fps, sample_rate=sample_rate)
    if total < 1:
        raise ValueError(f"the audio ({num_samples / sample_rate:.3f} s) is shorter than one video frame "
                         f"({1 / float(fps):.3f} s at {float(fps):g} fps): give a longer audio track")
    return total


def frame_centers(fps: Fps, start: int, stop: int) -> torch.Tensor:
    """``c = int(i * 50 / fps)`` for frames ``start .. stop-1`` (int64).

    A float fps is used as the reference uses it (Python float arithmetic, truncated); an int or Fraction fps
    is exact.
    """
    frames = torch.arange(start, stop, dtype=torch.int64)
    if isinstance(fps, float):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        # float64 products and quotients round like Python floats, so this equals int(i * 50 / fps) per frame
        return torch.trunc(frames.to(torch.float64) * STEPS_PER_SECOND / fps).to(torch.int64)
    exact = _exact_fps(fps)
    return frames * STEPS_PER_SECOND * exact.denominator // exact.numerator


def window_indices(fps: Fps, start: int, stop: int, num_steps: int) -> torch.Tensor:
    """Feature step indices ``(stop-start, 10)`` of frames ``start .. stop-1``, clamped to ``[0, num_steps-1]``."""
    offsets = torch.arange(-WINDOW_BEFORE, WINDOW_AFTER + 1, dtype=torch.int64)
    return (frame_centers(fps, start, stop)[:, None] + offsets[None, :]).clamp_(0, num_steps - 1)


def frame_windows(features: torch.Tensor, fps: Fps, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Audio windows of video frames ``start .. stop-1``: ``(stop-start, 10*L, d)`` from features ``(T50, L, d)``.

    Only the requested frames are gathered, so a streaming caller can ask for one chunk at a time. ``stop``
    defaults to the frames the features cover, ``floor(T50 * fps / 50)``; frames past the end are allowed
    (their windows clamp to the last step). The result is on the features' device and dtype.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be (steps, layers, dim), got shape {tuple(features.shape)}")
    num_steps, layers, dim = features.shape
    if num_steps == 0:
        raise ValueError("the audio features are empty: the audio is shorter than one feature step (20 ms)")
    if stop is None:
        stop = int(Fraction(num_steps) * _exact_fps(fps) / STEPS_PER_SECOND)
    start, stop = int(start), int(stop)
    if start < 0 or stop < start:
        raise ValueError(f"frame range must satisfy 0 <= start <= stop, got start={start}, stop={stop}")
    index = window_indices(fps, start, stop, num_steps).to(features.device)
    return features[index.reshape(-1)].reshape(stop - start, WINDOW_STEPS * layers, dim)


def frame_window(features: torch.Tensor, fps: Fps, frame: int) -> torch.Tensor:
    """The ``(10*L, d)`` audio window of one video frame."""
    return frame_windows(features, fps, frame, frame + 1)[0]


__all__ = ["STEPS_PER_SECOND", "WINDOW_STEPS", "num_video_frames", "frames_for_duration", "require_video_frames",
           "frame_centers", "window_indices", "frame_windows", "frame_window"]
