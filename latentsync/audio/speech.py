"""Where the speech is in a track: silero-vad's detector, which ships its model in its wheel and runs offline.

silero-vad over webrtcvad (both tried on the demo tracks, a chord and white noise): both find the demo sentences
to within 0.1 s, but webrtcvad calls 98 % of a chord and all of the noise speech, and cuts the speech into many
short pieces; silero takes about 0.5 s a minute of audio on one CPU core, which is little beside a run.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np
import torch

from .loading import SAMPLE_RATE

SPEECH_SHARE_FLOOR = 0.1  # less speech than this share of the track: warn (a chord: 5 %, 0.64 s of demo1: 25 %)
_IN_USE = threading.Lock()  # the detector keeps its state between windows: one track at a time


@dataclass(frozen=True)
class SpeechSpan:
    """Seconds from the track's start."""
    start: float
    end: float


@functools.lru_cache(maxsize=1)
def _detector() -> tuple:
    """silero-vad's model and its get_speech_timestamps, loaded once."""
    threads = torch.get_num_threads()
    try:
        import silero_vad  # its import sets torch's thread count to 1 for the whole process
    finally:
        torch.set_num_threads(threads)
    return silero_vad.load_silero_vad(), silero_vad.get_speech_timestamps


def speech_spans(samples: np.ndarray, min_pause: float = 0.1, pad: float = 0.03,
                 min_speech: float = 0.25) -> list[SpeechSpan]:
    """The stretches of speech in mono float ``samples`` at 16 kHz, in order: silences shorter than ``min_pause``
    seconds stay inside a stretch, each stretch is widened by ``pad`` seconds on both sides (within the track),
    and stretches shorter than ``min_speech`` are dropped."""
    model, get_speech_timestamps = _detector()
    with _IN_USE:
        found = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), model,
                                      sampling_rate=SAMPLE_RATE, min_silence_duration_ms=round(min_pause * 1000),
                                      speech_pad_ms=round(pad * 1000), min_speech_duration_ms=round(min_speech * 1000))
    return [SpeechSpan(span["start"] / SAMPLE_RATE, span["end"] / SAMPLE_RATE) for span in found]


def speech_share(samples: np.ndarray) -> float:
    """The share of ``samples`` (mono float at 16 kHz) that the detector hears as speech, 0..1."""
    if len(samples) == 0:
        return 0.0
    spans = speech_spans(samples, min_pause=0.0, pad=0.0, min_speech=0.0)
    return sum(span.end - span.start for span in spans) * SAMPLE_RATE / len(samples)


def little_speech_warning(samples: np.ndarray) -> str | None:
    """A warning when less than SPEECH_SHARE_FLOOR of ``samples`` (mono float at 16 kHz) is speech, else None."""
    share = speech_share(samples)
    if share >= SPEECH_SHARE_FLOOR:
        return None
    return (f"little or no speech: the voice detector hears speech in {share:.0%} of the audio (silence, music or "
            "noise?), and the mouth is generated over all of it; connect the speech track")
