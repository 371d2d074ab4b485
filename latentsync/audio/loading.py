"""Audio input: any file ffmpeg reads, a waveform array, or a ComfyUI AUDIO dict -> float32 mono at 16 kHz.

Files go through PyAV (FFmpeg's decoder and libswresample), converted to signed 16-bit mono at 16 kHz and
divided by 32768: the same samples the reference got from ``ffmpeg ... -f s16le -ac 1 -ar 16000`` in
``whisper.load_audio`` (for a 16 kHz 16-bit wav they are the file's samples, bit for bit). Without PyAV,
soundfile reads what libsndfile supports (wav, flac, ogg) and scipy resamples.

Waveforms stay in floating point: channels are averaged and the rate is converted with
``scipy.signal.resample_poly`` (a Kaiser-windowed polyphase filter) when it is not 16 kHz.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""The rate Whisper works at, in samples per second."""

AudioSource = Union[str, Path, np.ndarray, torch.Tensor, tuple, Mapping[str, Any]]

_MAX_CHANNELS = 64


def load_audio(source: AudioSource, sample_rate: int | None = None) -> np.ndarray:
    """Return ``source`` as a float32 mono waveform at 16 kHz, shape ``(samples,)``.

    ``source`` is one of: an audio or video file path (anything FFmpeg decodes); a ComfyUI AUDIO dict
    ``{"waveform": (batch, channels, samples), "sample_rate": int}``; a ``(waveform, sample_rate)`` tuple;
    or a waveform (numpy or torch) with ``sample_rate`` given. A waveform is ``(samples,)``,
    ``(channels, samples)`` or ``(samples, channels)`` (the shorter axis is taken as the channels) or
    ``(batch, channels, samples)`` (the first batch item is used). Float samples are taken as they are
    (nominally in [-1, 1]); int16 / int32 / uint8 samples are scaled to that range.
    """
    if isinstance(source, (str, Path)):
        if sample_rate is not None:
            raise ValueError("sample_rate is only for waveforms: a file carries its own rate")
        return _load_file(Path(source))
    if isinstance(source, Mapping):
        if "waveform" not in source or "sample_rate" not in source:
            raise ValueError("an audio dict must be ComfyUI AUDIO: {'waveform': (batch, channels, samples), "
                             "'sample_rate': int}")
        return waveform_to_16k(source["waveform"], int(source["sample_rate"]))
    if isinstance(source, tuple):
        if len(source) != 2:
            raise ValueError("an audio tuple must be (waveform, sample_rate)")
        return waveform_to_16k(source[0], int(source[1]))
    if isinstance(source, (np.ndarray, torch.Tensor)):
        if sample_rate is None:
            raise ValueError("a waveform needs its sample_rate: call load_audio(waveform, sample_rate)")
        return waveform_to_16k(source, int(sample_rate))
    raise TypeError(f"cannot read audio from a {type(source).__name__}: give a file path, a ComfyUI AUDIO dict, "
                    "a (waveform, sample_rate) tuple or a waveform with its sample_rate")


def waveform_to_16k(waveform, sample_rate: int) -> np.ndarray:
    """Downmix a waveform (numpy or torch, see :func:`load_audio` for the shapes) to mono, resample to 16 kHz."""
    if sample_rate <= 0:
        raise ValueError(f"the sample rate must be positive, got {sample_rate}")
    mono = _to_mono(_as_float_array(waveform))
    return resample(mono, sample_rate, SAMPLE_RATE)


def resample(samples: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of a 1-D float waveform (``scipy.signal.resample_poly``); float32 out."""
    samples = np.asarray(samples, dtype=np.float32)
    if rate_in == rate_out:
        return np.ascontiguousarray(samples)
    from scipy.signal import resample_poly

    ratio = Fraction(rate_out, rate_in)
    out = resample_poly(samples.astype(np.float64), ratio.numerator, ratio.denominator)
    return np.ascontiguousarray(out, dtype=np.float32)


def _as_float_array(waveform) -> np.ndarray:
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu()
        if waveform.is_floating_point():
            waveform = waveform.float()
        waveform = waveform.numpy()
    array = np.asarray(waveform)
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    if array.dtype == np.int32:
        return (array.astype(np.float64) / 2147483648.0).astype(np.float32)
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 128.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"audio samples must be float, int16, int32 or uint8, got {array.dtype}")
    return array.astype(np.float32, copy=False)


def _to_mono(array: np.ndarray) -> np.ndarray:
    shape = array.shape
    if array.ndim == 3:
        if array.shape[0] > 1:
            log.warning("audio batch of %d waveforms: using the first", array.shape[0])
        array = array[0]
    if array.ndim == 2:
        channel_axis = 0 if array.shape[0] <= array.shape[1] else 1
        if array.shape[channel_axis] > _MAX_CHANNELS:
            raise ValueError(f"audio waveform of shape {shape} has no recognisable channel axis")
        array = array.mean(axis=channel_axis, dtype=np.float64).astype(np.float32)
    if array.ndim != 1:
        raise ValueError(f"audio waveform must be (samples,), (channels, samples) or (batch, channels, samples), "
                         f"got shape {shape}")
    if array.size == 0:
        raise ValueError("the audio waveform is empty")
    if not np.isfinite(array).all():
        raise ValueError("the audio waveform contains NaN or infinite samples")
    return array


def _load_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        import av  # noqa: F401
    except ImportError:  # pragma: no cover - PyAV is a requirement; soundfile is the fallback
        return _load_with_soundfile(path)
    samples = _load_with_pyav(path)
    if samples.size == 0:
        raise ValueError(f"the audio in {path} is empty")
    return samples


def _load_with_pyav(path: Path) -> np.ndarray:
    samples = _decoded(path, "s16", "mono", SAMPLE_RATE)
    return samples.reshape(-1).astype(np.float32) / 32768.0


def _decoded(path: Path, sample_format: str, layout: str, rate: int) -> np.ndarray:
    """The first audio stream of ``path`` resampled by FFmpeg: (channels, samples) in ``sample_format``."""
    import av

    try:
        container = av.open(str(path))
    except Exception as error:  # PyAV raises several FFmpeg error types
        raise ValueError(f"cannot read audio from {path}: {_first_line(error)}") from error
    with container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format=sample_format, layout=layout, rate=rate)
        pieces: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                pieces.extend(out.to_ndarray() for out in resampler.resample(frame))
            pieces.extend(out.to_ndarray() for out in resampler.resample(None))
        except Exception as error:
            raise ValueError(f"cannot decode the audio in {path}: {_first_line(error)}") from error
    channels = 2 if layout == "stereo" else 1
    return np.concatenate(pieces, axis=1) if pieces else np.zeros((channels, 0), dtype=np.float32)


def _load_with_soundfile(path: Path) -> np.ndarray:  # pragma: no cover - only without PyAV
    import soundfile

    try:
        info = soundfile.info(str(path))
        if info.subtype == "PCM_16":
            data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
            data = data.astype(np.float32) / 32768.0
        else:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:
        raise ValueError(f"cannot read audio from {path} (install PyAV for formats other than wav/flac/ogg): "
                         f"{_first_line(error)}") from error
    return waveform_to_16k(data.T, int(rate))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def placed(waveform, sample_rate: int, delay: float, duration: float):
    """``waveform`` (..., samples; numpy or torch) after ``delay`` seconds of silence and padded with silence to
    ``duration`` seconds (never cut): the sound of an output whose speech starts inside the video."""
    before = round(delay * sample_rate)
    after = max(0, round(duration * sample_rate) - before - waveform.shape[-1])
    if hasattr(waveform, "new_zeros"):
        import torch

        shape = tuple(waveform.shape[:-1])
        return torch.cat([waveform.new_zeros(*shape, before), waveform, waveform.new_zeros(*shape, after)], dim=-1)
    pad = [(0, 0)] * (waveform.ndim - 1) + [(before, after)]
    return np.pad(waveform, pad)


def load_stereo(source: AudioSource, rate: int = 48000) -> np.ndarray:
    """``source`` (a file, a ComfyUI AUDIO dict or a (waveform, rate) pair) as float32 (2, samples) at ``rate``, for
    mixing into an output's sound: mono in both channels, the first two of more."""
    if isinstance(source, (str, Path)):
        return _decoded(Path(source), "fltp", "stereo", rate).astype(np.float32, copy=False)  # fltp: float32 already
    waveform, source_rate = (source["waveform"], source["sample_rate"]) if isinstance(source, Mapping) else source
    array = _as_float_array(waveform)
    array = array[0] if array.ndim == 3 else array[None] if array.ndim == 1 else array
    channels = [array[min(k, len(array) - 1)] for k in range(2)]
    return np.stack([resample(channel, int(source_rate), rate) for channel in channels])


__all__ = ["SAMPLE_RATE", "AudioSource", "load_audio", "load_stereo", "waveform_to_16k", "resample", "placed"]

