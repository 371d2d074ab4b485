"""Video I/O: probing, streaming decode, atomic encode + mux, cleanup on failure, error messages."""

from __future__ import annotations

import ast
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from latentsync import video as video_module
from latentsync.video import (MediaError, VideoWriter, choose_video_encoder, count_frames, find_ffmpeg,
                              iter_frame_batches, nvenc_available, probe_video, write_wav)
from helpers import sound_of

FAST = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p"]


def _pyav_frames(path: Path, count: int) -> list[np.ndarray]:
    """The first `count` frames decoded directly with PyAV, no threading: an independent reference."""
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return frames


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _stream_facts(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        packets = sum(1 for p in container.demux(video) if p.size > 0)
        return {"packets": packets, "rate": Fraction(video.average_rate), "audio": len(container.streams.audio),
                "duration": float(container.duration / av.time_base), "size": (video.width, video.height)}


@pytest.fixture(scope="module")
def small_frames(media_dir: Path) -> np.ndarray:
    """50 real frames from demo1, scaled by swscale to 270x480 so encoding stays fast."""
    with av.open(str(media_dir / "demo1_video.mp4")) as container:
        container.streams.video[0].thread_type = "AUTO"
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24", width=270, height=480))
            if len(frames) == 50:
                break
    return np.stack(frames)


@pytest.fixture(scope="module")
def numbered_clip(tmp_path_factory) -> Path:
    """60 small frames, frame i a flat grey of level 4*i, keyframe every 8 frames: seeks are checkable."""
    path = tmp_path_factory.mktemp("numbered") / "numbered.mp4"
    frames = np.repeat(np.arange(60, dtype=np.uint8)[:, None, None, None] * 4, 64 * 48 * 3).reshape(60, 48, 64, 3)
    encoder = ["-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-g", "8", "-pix_fmt", "yuv420p"]
    with VideoWriter(path, 64, 48, Fraction(25), encoder=encoder) as writer:
        writer.write(frames)
    return path


def _frame_level(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / 4))


# -- ffmpeg ----------------------------------------------------------------------------------------------------

def test_find_ffmpeg_and_encoder():
    binary = find_ffmpeg()
    assert Path(binary).is_file()
    args = choose_video_encoder()
    assert args[:2] in (["-c:v", "h264_nvenc"], ["-c:v", "libx264"], ["-c:v", "libopenh264"], ["-c:v", "mpeg4"])
    assert "yuv420p" in args and all(isinstance(a, str) for a in args)
    assert isinstance(nvenc_available(binary), bool)


def test_find_ffmpeg_missing_says_how_to_fix(monkeypatch):
    import builtins

    import latentsync.video.ffmpeg as ffmpeg_module

    real_import = builtins.__import__

    def no_imageio(name, *args, **kwargs):
        if name == "imageio_ffmpeg":
            raise ImportError("No module named 'imageio_ffmpeg'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delenv(ffmpeg_module.FFMPEG_ENV, raising=False)
    monkeypatch.setattr(ffmpeg_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(builtins, "__import__", no_imageio)
    with pytest.raises(RuntimeError, match="pip install imageio-ffmpeg"):
        find_ffmpeg()


def test_no_shell_strings_anywhere_in_video_package():
    folder = Path(video_module.__file__).parent
    for source in folder.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                pytest.fail(f"{source.name} passes shell= to a subprocess call")
            if isinstance(node, ast.Attribute) and node.attr in ("system", "popen") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                pytest.fail(f"{source.name} uses os.{node.attr}")


# -- reading ---------------------------------------------------------------------------------------------------

def test_probe_demo1_matches_independent_count(media_dir):
    path = media_dir / "demo1_video.mp4"
    info = probe_video(path)
    facts = _stream_facts(path)
    assert (info.width, info.height) == (1080, 1920)
    assert info.fps == Fraction(25) and isinstance(info.fps, Fraction)
    assert info.num_frames == 250 == facts["packets"] == count_frames(path)
    assert info.duration == pytest.approx(10.0)
    assert info.rotation == 0 and info.has_audio


def test_streaming_batches_cover_every_frame_in_order(media_dir):
    path = media_dir / "demo1_video.mp4"
    reference = _pyav_frames(path, 3)
    sizes, checked, total, last = [], 0, 0, None
    for batch in iter_frame_batches(path, 16):
        assert batch.dtype == np.uint8 and batch.shape[1:] == (1920, 1080, 3)
        if total == 0:
            for i, expected in enumerate(reference):
                np.testing.assert_array_equal(batch[i], expected)
                checked += 1
        sizes.append(len(batch))
        total += len(batch)
        last = batch[-1]
    assert checked == 3
    assert total == 250 and sizes == [16] * 15 + [10]
    assert last is not None and last.std() > 1  # a real picture, not an empty buffer


def test_start_and_random_access_land_on_the_right_frames(numbered_clip):
    assert probe_video(numbered_clip).num_frames == 60
    everything = np.concatenate(list(iter_frame_batches(numbered_clip, 7)))
    assert [_frame_level(f) for f in everything] == list(range(60))
    for start in (1, 8, 13, 59):  # on and between keyframes, and the last frame
        batches = list(iter_frame_batches(numbered_clip, 5, start=start))
        levels = [_frame_level(f) for b in batches for f in b]
        assert levels == list(range(start, 60)), start
    assert list(iter_frame_batches(numbered_clip, 5, start=60)) == []


def test_rotation_is_applied(tmp_path, numbered_clip):
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([find_ffmpeg(), "-loglevel", "error", "-y", "-display_rotation", "90", "-i", str(numbered_clip),
                    "-c", "copy", str(rotated)], check=True)
    info = probe_video(rotated)
    assert info.rotation == 90 and (info.width, info.height) == (48, 64)
    first = next(iter_frame_batches(rotated, 4))
    assert first.shape == (4, 64, 48, 3)


def test_frame_count_is_counted_when_the_container_does_not_say(tmp_path, numbered_clip):
    mkv = tmp_path / "numbered.mkv"
    subprocess.run([find_ffmpeg(), "-loglevel", "error", "-y", "-i", str(numbered_clip), "-c", "copy", str(mkv)],
                   check=True)
    with av.open(str(mkv)) as container:
        assert not container.streams.video[0].frames  # Matroska keeps no frame count
    info = probe_video(mkv)
    assert info.num_frames == 60 and info.fps == 25


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(MediaError, match="not found") as error:
        probe_video(missing)
    assert str(missing) in str(error.value)
    with pytest.raises(MediaError):
        next(iter_frame_batches(missing, 4))


def test_corrupt_file_is_a_clear_media_error(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="corrupt") as error:
        probe_video(corrupt)
    assert str(corrupt) in str(error.value) and "\n" not in str(error.value)
    assert isinstance(error.value, ValueError)


def test_audio_only_file_has_no_video_stream(media_dir):
    with pytest.raises(MediaError, match="no video stream"):
        probe_video(media_dir / "demo1_audio.wav")


# -- writing ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)])
def test_write_with_audio_exact_frames_rate_duration_quality(tmp_path, media_dir, small_frames, fps):
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 270, 480, fps, audio=media_dir / "demo1_audio.wav") as writer:
        writer.write(small_frames[:20])
        for frame in small_frames[20:]:
            writer.write(frame)  # single (H, W, 3) frames too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    facts = _stream_facts(out)
    assert facts["packets"] == 50 and probe_video(out).num_frames == 50
    assert facts["rate"] == fps and probe_video(out).fps == fps
    assert facts["audio"] == 1 and facts["size"] == (270, 480)
    assert abs(facts["duration"] - float(50 / fps)) <= float(1 / fps)
    decoded = np.concatenate(list(iter_frame_batches(out, 25)))
    assert decoded.shape == small_frames.shape
    assert _psnr(decoded, small_frames) > 35


def test_write_without_audio_and_odd_size_is_padded(tmp_path, small_frames):
    out = tmp_path / "odd.mp4"
    frames = small_frames[:5, :479, :269]
    with VideoWriter(out, 269, 479, 25, encoder=FAST) as writer:
        assert writer.output_size == (270, 480)
        writer.write(frames)
    info = probe_video(out)
    assert (info.width, info.height, info.num_frames) == (270, 480, 5)
    assert not info.has_audio
    decoded = np.concatenate(list(iter_frame_batches(out, 8)))
    assert _psnr(decoded[:, :479, :269], frames) > 35


def test_audio_delay_places_the_sound_and_pads_it_with_silence(tmp_path, small_frames):
    wav = tmp_path / "tone.wav"
    t = np.arange(16000) / 16000  # one second of tone
    write_wav(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], 16000)
    with av.open(str(wav)) as container:
        stream = container.streams.audio[0]
        assert stream.sample_rate == 16000 and stream.channels == 1
    out = tmp_path / "placed.mp4"
    with VideoWriter(out, 270, 480, 25, audio=wav, audio_delay=0.48, encoder=FAST) as writer:
        writer.write(small_frames[:25])
        writer.write(small_frames[:25])
    facts = _stream_facts(out)
    assert facts["audio"] == 1 and abs(facts["duration"] - 2.0) <= 0.04
    sound, rate = sound_of(out)
    loud = np.flatnonzero(np.abs(sound) > 0.05) / rate  # AAC's priming samples are skipped by the decoder
    assert abs(loud[0] - 0.48) < 0.01 and abs(loud[-1] - 1.48) < 0.01  # silence, the tone, silence
    assert len(sound) / rate > 1.95  # padded to the video's end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["placed.mp4", "tone.wav"]


def test_write_wav_accepts_comfy_audio_layout(tmp_path):
    stereo = np.zeros((1, 2, 800), dtype=np.float32)  # ComfyUI AUDIO waveform: (batch, channels, samples)
    path = write_wav(tmp_path / "a.wav", stereo, 44100)
    with av.open(str(path)) as container:
        assert container.streams.audio[0].channels == 2
    with pytest.raises(ValueError):
        write_wav(tmp_path / "b.wav", np.zeros((2, 2, 10)), 16000)


@pytest.mark.parametrize("interrupt", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_inside_with_leaves_nothing_behind(tmp_path, media_dir, small_frames, interrupt):
    out = tmp_path / "never.mp4"
    before = set(tmp_path.iterdir())
    with pytest.raises(type(interrupt)):
        with VideoWriter(out, 270, 480, 25, audio=media_dir / "demo1_audio.wav", encoder=FAST) as writer:
            writer.write(small_frames[:10])
            process = writer._process
            raise interrupt
    assert process.poll() is not None  # ffmpeg is gone
    assert not out.exists()
    assert set(tmp_path.iterdir()) == before


def test_failure_keeps_an_existing_output_untouched(tmp_path, small_frames):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous result")
    with pytest.raises(ValueError):
        with VideoWriter(out, 270, 480, 25, encoder=FAST) as writer:
            writer.write(small_frames[:3])
            writer.write(small_frames[:1, :10])  # wrong shape
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]


def test_ffmpeg_failure_is_a_media_error_and_cleans_up(tmp_path, small_frames):
    out = tmp_path / "bad.mp4"
    with pytest.raises(MediaError, match="ffmpeg"):
        with VideoWriter(out, 270, 480, 25, encoder=["-c:v", "no_such_encoder"]) as writer:
            for _ in range(50):
                writer.write(small_frames[:10])
    assert list(tmp_path.iterdir()) == []


def test_bad_audio_is_a_media_error_and_cleans_up(tmp_path, small_frames):
    not_audio = tmp_path / "text.wav"
    not_audio.write_text("not audio at all")
    out = tmp_path / "out.mp4"
    with pytest.raises(MediaError, match="muxing the audio"):
        with VideoWriter(out, 270, 480, 25, audio=not_audio, encoder=FAST) as writer:
            writer.write(small_frames[:5])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.wav"]


def test_zero_frames_is_an_error_without_output(tmp_path):
    out = tmp_path / "empty.mp4"
    with pytest.raises(MediaError, match="no frames"):
        with VideoWriter(out, 64, 48, 25, encoder=FAST):
            pass
    assert list(tmp_path.iterdir()) == []


def test_popen_gets_argument_lists_only(tmp_path, monkeypatch, small_frames):
    calls = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):
        def __init__(self, args, *rest, **kwargs):
            calls.append((args, kwargs))
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)  # subprocess.run goes through Popen too
    wav = write_wav(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    with VideoWriter(tmp_path / "x.mp4", 270, 480, 25, audio=wav, encoder=FAST) as writer:
        writer.write(small_frames[:2])
    assert len(calls) >= 2  # the encoder and the mux
    for args, kwargs in calls:
        assert isinstance(args, list) and all(isinstance(a, str) for a in args)
        assert not kwargs.get("shell", False)
