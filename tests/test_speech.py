"""The voice detector (silero-vad): speech found in the demo tracks, none in silence, a chord or noise, and a run
over a track without speech is warned about, by the library, so both fronts say it."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile

from latentsync.audio.speech import SPEECH_SHARE_FLOOR, little_speech_warning, speech_share, speech_spans

RATE = 16000


def chord(seconds: float = 6.0) -> np.ndarray:
    """Six notes switched on and off at different rates: tonal and rhythmic, with no voice."""
    t = np.arange(int(seconds * RATE)) / RATE
    notes = [220, 277, 330, 440, 554, 659]
    gates = [np.sin(2 * np.pi * (k + 1) * 0.5 * t) > 0 for k in range(len(notes))]
    return sum(0.1 * np.sin(2 * np.pi * f * t) * gate for f, gate in zip(notes, gates)).astype(np.float32)


@pytest.mark.parametrize("name", ["demo1_audio.wav", "demo2_audio.wav"])
def test_the_demo_speech_is_speech(media_dir, name):
    samples, rate = soundfile.read(media_dir / name, dtype="float32")
    assert rate == RATE
    assert speech_share(samples) > 0.8
    assert little_speech_warning(samples) is None
    spans = speech_spans(samples)
    assert spans and all(a.end <= b.start for a, b in zip(spans, spans[1:]))  # in order, apart
    assert spans[0].start < 0.6 and spans[-1].end > len(samples) / RATE - 0.5  # they speak from the start to the end


@pytest.mark.parametrize("sound", ["silence", "chord", "noise"])
def test_silence_music_and_noise_are_not_speech(sound):
    samples = {"silence": np.zeros(4 * RATE, np.float32), "chord": chord(),
               "noise": 0.05 * np.random.default_rng(0).standard_normal(4 * RATE).astype(np.float32)}[sound]
    assert speech_share(samples) < SPEECH_SHARE_FLOOR
    assert little_speech_warning(samples).startswith("little or no speech:")


def test_the_detector_leaves_torch_s_thread_count_alone():
    """silero_vad's import sets torch's thread count to 1 for the whole process (ComfyUI's included)."""
    code = ("import numpy, torch; torch.set_num_threads(3); from latentsync.audio.speech import speech_spans; "
            "speech_spans(numpy.zeros(16000, numpy.float32)); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


def test_speech_boundaries_match_the_hand_checked_reference(media_dir):
    import json
    from pathlib import Path

    reference = json.loads((Path(__file__).parent / "data" / "speech_boundaries.json").read_text())
    tolerance = reference["tolerance_seconds"]
    for name, marks in reference["tracks"].items():
        samples, _ = soundfile.read(media_dir / name, dtype="float32")
        spans = speech_spans(samples, min_pause=0.1, pad=0.0)
        for onset in marks["onsets"]:
            assert min(abs(span.start - onset) for span in spans) <= tolerance, (name, onset, spans)
        for end in marks["ends"]:
            assert min(abs(span.end - end) for span in spans) <= tolerance, (name, end, spans)
