"""Audio stage: speech track -> Whisper encoder features -> per-video-frame audio windows.

    samples = load_audio("speech.mp3")                      # float32 mono 16 kHz
    encoder = WhisperEncoder.from_checkpoint("checkpoints/whisper/tiny.pt", device="cuda", dtype=torch.float16)
    features = encoder.features(samples)                    # (T50, n_layer+1, d), 50 steps/s, on the CPU
    total = num_video_frames(len(samples), fps)             # floor(duration * fps): the product's length
    chunk = frame_windows(features, fps, start=0, stop=16)  # (16, 10*(n_layer+1), d)
"""

from .encoder import WhisperCheckpointError, WhisperEncoder
from .loading import SAMPLE_RATE, load_audio, load_stereo, placed, resample, waveform_to_16k
from .windows import (STEPS_PER_SECOND, WINDOW_STEPS, frame_centers, frame_window, frame_windows,
                      frames_for_duration, num_video_frames, require_video_frames, window_indices)

__all__ = [
    "SAMPLE_RATE", "STEPS_PER_SECOND", "WINDOW_STEPS",
    "load_audio", "load_stereo", "waveform_to_16k", "resample", "placed",
    "WhisperEncoder", "WhisperCheckpointError",
    "num_video_frames", "frames_for_duration", "require_video_frames",
    "frame_centers", "window_indices", "frame_windows", "frame_window",
]
