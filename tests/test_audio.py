"""The Whisper audio stage against the reference vectors made with the published LatentSync implementation."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file
from scipy.signal import resample_poly

from latentsync.audio import (WhisperCheckpointError, WhisperEncoder, frame_window, frame_windows, load_audio,
                              num_video_frames, require_video_frames)
from latentsync.tools.make_tiny_checkpoints import make_tiny_whisper_checkpoint, save_whisper_checkpoint

TOL = 1e-4  # DESIGN.md: float32 on the CPU, max abs error of the audio features


@pytest.fixture(scope="module")
def encoder(reference_dir) -> WhisperEncoder:
    return WhisperEncoder.from_checkpoint(reference_dir / "whisper_tiny_random.pt")


@pytest.fixture(scope="module")
def demo1(media_dir) -> np.ndarray:
    return load_audio(media_dir / "demo1_audio.wav")


@pytest.fixture(scope="module")
def demo1_features(encoder, demo1) -> torch.Tensor:
    return encoder.features(demo1)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


# -- reference vectors ----------------------------------------------------------------------------------------

def test_demo1_features_and_windows_match_reference(reference_dir, demo1, demo1_features):
    reference = load_file(str(reference_dir / "whisper_tiny_features.safetensors"))
    assert demo1_features.shape == reference["features"].shape == (480, 3, 64)
    assert _max_err(demo1_features, reference["features"]) <= TOL
    # the reference emits windows for two frames past the audio's end (clamped): compare every one of them
    count = reference["chunks"].shape[0]
    assert _max_err(frame_windows(demo1_features, 25, 0, count), reference["chunks"]) <= TOL
    total = num_video_frames(len(demo1), 25)
    assert total == 240 == count - 2
    assert frame_windows(demo1_features, 25).shape == (total, 30, 64)


def test_long_track_two_encoder_windows_match_reference(reference_dir, media_dir, encoder):
    samples = load_audio(media_dir / "long_speech_39s.wav")
    reference = load_file(str(reference_dir / "whisper_tiny_features_long.safetensors"))
    features = encoder.features(samples)
    assert features.shape == reference["features"].shape == (1952, 3, 64)
    assert _max_err(features, reference["features"]) <= TOL
    count = reference["chunks"].shape[0]
    assert _max_err(frame_windows(features, 25, 0, count), reference["chunks"]) <= TOL
    assert num_video_frames(len(samples), 25) == 976
    # both windows in one encoder call give the same features
    assert _max_err(encoder.features(samples, window_batch=2), features) <= 1e-5


def edge_jump(features: torch.Tensor, edge: int) -> torch.Tensor:
    """The change from step ``edge - 1`` to ``edge``, divided by the 99th percentile of the changes between
    consecutive steps elsewhere: per layer, then over all layers together (the last entry)."""
    change = torch.cat([(features[1:] - features[:-1]).norm(dim=-1),
                        (features[1:] - features[:-1]).flatten(1).norm(dim=-1, keepdim=True)], dim=1)
    others = torch.cat([change[:edge - 1], change[edge:]])
    return change[edge - 1] / others.quantile(0.99, dim=0)


def test_seamless_context_removes_the_jump_at_the_30_s_window_edge(reference_dir, media_dir, encoder, demo1,
                                                                    demo1_features):
    assert torch.equal(encoder.features(demo1, seamless=True), demo1_features)  # one window: the same features
    samples = load_audio(media_dir / "long_speech_39s.wav")
    published = load_file(str(reference_dir / "whisper_tiny_features_long.safetensors"))["features"]
    windows, seamless = encoder.features(samples), encoder.features(samples, seamless=True, window_batch=2)
    assert seamless.shape == windows.shape
    assert (edge_jump(published, 1500) > 3.0).all()  # the published features jump at 30 s, in every layer
    assert (edge_jump(windows, 1500) > 3.0).all()
    assert (edge_jump(seamless, 1500) <= 1.0).all()
    # the first 15 s come from the first window alone, as in the published features
    assert torch.equal(seamless[:750], windows[:750])


def test_blocked_log_mel_equals_whisper(encoder, demo1):
    import whisper

    expected = whisper.log_mel_spectrogram(torch.from_numpy(demo1))
    assert _max_err(encoder.log_mel(demo1), expected) <= 1e-6
    assert _max_err(encoder.log_mel(demo1, block_frames=97), expected) <= 1e-5  # many blocks, odd edges


def test_features_equal_openai_whisper_encoder_layers(tmp_path):
    """An independent path: the full openai-whisper model, its encoder blocks observed with hooks."""
    import whisper

    path = make_tiny_whisper_checkpoint(tmp_path / "tiny.pt", seed=3, n_audio_state=24, n_audio_layer=4)
    model = whisper.load_model(str(path), device="cpu")
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal(16000 * 3 + 123)).astype(np.float32)
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    for block in model.encoder.blocks:
        block.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        model.encoder(whisper.pad_or_trim(whisper.log_mel_spectrogram(samples), 3000)[None])
    steps = (len(samples) // 160) // 2
    expected = torch.stack(seen, dim=2)[0, :steps]

    encoder = WhisperEncoder.from_checkpoint(path)
    features = encoder.features(samples)
    assert features.shape == (steps, 5, 24)
    assert _max_err(features, expected) <= 1e-5


# -- audio input ----------------------------------------------------------------------------------------------

def test_wav_file_gives_the_int16_samples_over_32768(media_dir, demo1):
    raw, rate = soundfile.read(str(media_dir / "demo1_audio.wav"), dtype="int16")
    assert rate == 16000 and demo1.dtype == np.float32
    np.testing.assert_array_equal(demo1, raw.astype(np.float32) / 32768.0)


def test_waveform_inputs_at_16k_are_taken_as_they_are(demo1):
    mono = torch.from_numpy(demo1)
    np.testing.assert_array_equal(load_audio(demo1, 16000), demo1)
    np.testing.assert_array_equal(load_audio((mono, 16000)), demo1)
    np.testing.assert_array_equal(load_audio({"waveform": mono[None, None], "sample_rate": 16000}), demo1)
    stereo = torch.stack([mono, mono])[None]  # ComfyUI AUDIO (batch, channels, samples)
    np.testing.assert_array_equal(load_audio({"waveform": stereo, "sample_rate": 16000}), demo1)
    as_int16 = np.round(demo1 * 32768).astype(np.int16)
    np.testing.assert_array_equal(load_audio(as_int16[:, None], 16000), demo1)  # (samples, channels)
    with pytest.raises(ValueError, match="needs its sample_rate"):
        load_audio(demo1)


def test_waveform_at_44k_stereo_is_close_to_the_file(encoder, demo1, demo1_features):
    """The file resampled to 44.1 kHz stereo (L = x + n, R = x - n) and back through load_audio.

    The two polyphase passes (scipy's Kaiser beta=5 filters) leave about 1e-3 of the signal, spread over the
    band (measured: 0.013 max sample error). Log-mel magnifies that in the quietest bins, so the features move by
    about 1 % of their range: measured 0.022 max, 0.0025 mean abs error for features peaking at 2.37. Bounds:
    0.05 max, 0.005 mean. Treating the 44.1 kHz samples as 16 kHz, or not downmixing, is off by far more.
    """
    high = resample_poly(demo1.astype(np.float64), 441, 160)
    noise = 0.01 * np.random.default_rng(0).standard_normal(high.shape)
    waveform = torch.from_numpy(np.stack([high + noise, high - noise]).astype(np.float32))[None]
    samples = load_audio({"waveform": waveform, "sample_rate": 44100})
    assert samples.shape == demo1.shape
    error = (encoder.features(samples) - demo1_features).abs()
    assert error.max().item() <= 0.05 and error.mean().item() <= 0.005


def test_other_rate_file_goes_through_ffmpeg_resampling(tmp_path, demo1):
    path = tmp_path / "stereo_44k.wav"
    high = resample_poly(demo1.astype(np.float64), 441, 160)
    soundfile.write(str(path), np.stack([high, high], axis=1), 44100, subtype="PCM_16")
    samples = load_audio(path)
    assert abs(len(samples) - len(demo1)) <= 2
    n = min(len(samples), len(demo1))
    assert np.abs(samples[:n] - demo1[:n]).max() < 0.05  # two different resamplers, 16-bit on the way


def test_missing_and_unreadable_audio_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        load_audio(tmp_path / "nothing.wav")
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(ValueError, match="junk.mp3"):
        load_audio(junk)


# -- frame windows --------------------------------------------------------------------------------------------

def _independent_windows(features: torch.Tensor, fps, count: int) -> torch.Tensor:
    """The reference's get_sliced_feature, frame by frame."""
    rows = []
    for i in range(count):
        center = int(i * 50 / fps)
        steps = [min(max(step, 0), len(features) - 1) for step in range(center - 4, center + 6)]
        rows.append(torch.cat([features[step] for step in steps], dim=0))
    return torch.stack(rows)


@pytest.mark.parametrize("fps", [30, 29.97, Fraction(30000, 1001), 24, 60.0])
def test_window_centres_follow_int_i_times_50_over_fps(demo1_features, fps):
    count = num_video_frames(153600, fps) + 2
    expected = _independent_windows(demo1_features, fps, count)
    assert torch.equal(frame_windows(demo1_features, fps, 0, count), expected)


def test_30fps_centres_by_hand(demo1_features):
    # frames 0..3 at 30 fps centre on steps 0, 1, 3, 5; frame 3 uses steps 1..10
    window = frame_window(demo1_features, 30, 3)
    assert torch.equal(window, demo1_features[1:11].reshape(30, 64))
    first = frame_window(demo1_features, 30, 0)  # steps -4..5 clamp to 0,0,0,0,0,1,..,5
    assert torch.equal(first, demo1_features[[0, 0, 0, 0, 0, 1, 2, 3, 4, 5]].reshape(30, 64))


def test_range_accessor_equals_slices_of_the_full_tensor(demo1_features):
    full = frame_windows(demo1_features, 25)
    for start, stop in [(0, 16), (16, 32), (100, 117), (230, 240), (5, 5)]:
        assert torch.equal(frame_windows(demo1_features, 25, start, stop), full[start:stop])
    assert torch.equal(frame_window(demo1_features, 25, 77), full[77])
    beyond = frame_windows(demo1_features, 25, 238, 245)  # past the end: clamped to the last step
    assert torch.equal(beyond[-1], demo1_features[[-1] * 10].reshape(30, 64))
    with pytest.raises(ValueError, match="start <= stop"):
        frame_windows(demo1_features, 25, 10, 5)


def test_frame_counts():
    assert num_video_frames(153600, 25) == 240
    assert num_video_frames(16000 * 100, 29.97) == 2997  # the decimal 29.97, not its binary neighbour
    assert num_video_frames(16000 * 1001, Fraction(30000, 1001)) == 30000
    assert num_video_frames(639, 25) == 0
    assert num_video_frames(640, 25) == 1


def test_audio_shorter_than_one_frame_is_refused(encoder):
    with pytest.raises(ValueError, match="shorter than one video frame"):
        require_video_frames(500, 25)
    assert require_video_frames(640, 25) == 1
    with pytest.raises(ValueError, match="too short"):
        encoder.features(np.zeros(200, dtype=np.float32))


def test_short_audio_features_and_out_dtype(encoder):
    samples = (0.05 * np.random.default_rng(1).standard_normal(700)).astype(np.float32)  # one frame at 25 fps
    features = encoder.features(samples, out_dtype=torch.float16)
    assert features.shape == (2, 3, 64) and features.dtype == torch.float16
    assert frame_windows(features, 25).shape == (1, 30, 64)


# -- checkpoints ----------------------------------------------------------------------------------------------

def test_missing_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "whisper" / "tiny.pt"
    with pytest.raises(FileNotFoundError, match="Whisper checkpoint not found: .*tiny.pt"):
        WhisperEncoder.from_checkpoint(path)


def test_corrupt_checkpoint_names_the_path(tmp_path):
    path = tmp_path / "tiny.pt"
    path.write_bytes(b"\x80\x02 this is not a checkpoint" * 20)
    with pytest.raises(WhisperCheckpointError, match=r"tiny.pt could not be read .*corrupt"):
        WhisperEncoder.from_checkpoint(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(WhisperCheckpointError, match="not in the openai-whisper format"):
        WhisperEncoder.from_checkpoint(path)


def test_checkpoint_with_a_missing_tensor_is_refused(tmp_path, reference_dir):
    checkpoint = torch.load(reference_dir / "whisper_tiny_random.pt", weights_only=True)
    weights = dict(checkpoint["model_state_dict"])
    del weights["encoder.blocks.1.mlp_ln.bias"]
    path = save_whisper_checkpoint(tmp_path / "broken.pt", checkpoint["dims"], weights)
    with pytest.raises(WhisperCheckpointError, match="missing encoder tensors encoder.blocks.1.mlp_ln.bias"):
        WhisperEncoder.from_checkpoint(path)


def test_tiny_checkpoint_is_seeded_and_openai_format(tmp_path):
    first = make_tiny_whisper_checkpoint(tmp_path / "a.pt", seed=5, n_audio_state=24, n_audio_layer=4)
    second = make_tiny_whisper_checkpoint(tmp_path / "b.pt", seed=5, n_audio_state=24, n_audio_layer=4)
    other = make_tiny_whisper_checkpoint(tmp_path / "c.pt", seed=6, n_audio_state=24, n_audio_layer=4)
    a, b, c = (torch.load(p, weights_only=True) for p in (first, second, other))
    assert a["dims"]["n_audio_state"] == 24 and a["dims"]["n_audio_layer"] == 4
    assert all(torch.equal(a["model_state_dict"][k], b["model_state_dict"][k]) for k in a["model_state_dict"])
    assert not torch.equal(a["model_state_dict"]["encoder.conv1.weight"], c["model_state_dict"]["encoder.conv1.weight"])
    encoder = WhisperEncoder.from_checkpoint(first)
    assert (encoder.num_layers, encoder.dim) == (5, 24)  # 10 steps x 5 layers = 50 tokens, as published


def test_half_precision_compute(reference_dir, demo1, demo1_features):
    """bfloat16 activations (weights float32, as openai-whisper runs fp16): measured 0.020 max abs error."""
    encoder = WhisperEncoder.from_checkpoint(reference_dir / "whisper_tiny_random.pt", dtype=torch.bfloat16)
    features = encoder.features(demo1)
    assert features.dtype == torch.float32
    assert _max_err(features, demo1_features) <= 0.05
