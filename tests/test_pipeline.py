"""End to end: real clips, tiny real-format checkpoints, the real detector, decoder and encoder.

Source frames carry a binary stamp of their index (``helpers.stamp``), so each output frame tells which source
frame it was made from: loops, cuts and frame-rate handling are checked exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from latentsync.errors import Cancelled
from latentsync.frames import pingpong_index
from latentsync.pipeline import LipSyncPipeline, PipelineOptions
from latentsync.video import MediaError
from helpers import CELL, decode, make_audio, make_clip, read_stamp, stamp, stream_info, write_clip

@pytest.fixture(scope="module")
def workspace(tmp_path_factory, media_dir, tiny_set):
    folder = tmp_path_factory.mktemp("pipeline")
    return {"folder": folder, "config": tiny_set.config, "checkpoints": tiny_set.checkpoints,
            "clip25": make_clip(media_dir, folder, 1.0, Fraction(25)),
            "clip30": make_clip(media_dir, folder, 1.0, Fraction(30000, 1001))}


@pytest.fixture(scope="module")
def pipeline(tiny_models):
    return LipSyncPipeline(tiny_models, PipelineOptions(steps=2, seed=1247, detector="dlib", memory_mode="aggressive"))


def test_audio_shorter_cuts_and_keeps_everything_but_the_face(pipeline, workspace, media_dir):
    out = workspace["folder"] / "cut.mp4"
    audio = make_audio(media_dir, workspace["folder"], 0.7)
    result = pipeline.run(workspace["clip25"], audio, out)
    info = stream_info(out)
    assert result.output_frames == info["frames"] == int(0.7 * 25)
    assert info["rate"] == 25 and info["audio_streams"] == 1
    assert abs(info["audio_seconds"] - info["frames"] / 25) < 0.05
    frames, source = decode(out), decode(workspace["clip25"])
    assert [read_stamp(f) for f in frames] == list(range(len(frames)))
    # far from the face (the top fifth of the frame) the output is the input, up to the encoder's loss
    top = slice(CELL, source.shape[1] // 5)
    assert np.abs(frames[:, top].astype(int) - source[: len(frames), top].astype(int)).mean() < 2.0
    assert result.frames_without_face == 0


def test_audio_longer_loops_forward_backward(pipeline, workspace, media_dir):
    out = workspace["folder"] / "loop.mp4"
    audio = make_audio(media_dir, workspace["folder"], 2.4)
    result = pipeline.run(workspace["clip25"], audio, out)
    frames = decode(out)
    assert len(frames) == result.output_frames == 60
    assert [read_stamp(f) for f in frames] == [pingpong_index(i, 25) for i in range(60)]


def test_ntsc_rate_input_stays_in_sync(pipeline, workspace, media_dir):
    out = workspace["folder"] / "ntsc.mp4"
    audio = make_audio(media_dir, workspace["folder"], 0.9)
    pipeline.run(workspace["clip30"], audio, out)
    info = stream_info(out)
    rate = Fraction(30000, 1001)
    assert info["rate"] == rate
    assert info["frames"] == int(0.9 * rate)
    assert abs(info["frames"] / rate - info["audio_seconds"]) < 1 / rate + 0.03
    assert [read_stamp(f) for f in decode(out)] == list(range(info["frames"]))


def test_frames_without_face_pass_through(pipeline, workspace, media_dir):
    source = decode(workspace["clip25"])[:20]
    source[5:9] = 0  # black frames: no face
    for i in range(5, 9):
        source[i] = stamp(source[i], i)
    out = workspace["folder"] / "noface.mp4"
    frames_seen = []
    result = pipeline.run(source, make_audio(media_dir, workspace["folder"], 0.8), out, fps=25,
                          frame_sink=frames_seen.append)
    assert result.frames_without_face == 4
    produced = np.concatenate(frames_seen)
    assert np.array_equal(produced[5:9], source[5:9])  # untouched, bit for bit, before encoding


def test_corrupt_input_fails_clearly_and_writes_nothing(pipeline, workspace, media_dir):
    broken = workspace["folder"] / "broken.mp4"
    broken.write_bytes(os.urandom(4096))
    out = workspace["folder"] / "never.mp4"
    with pytest.raises(MediaError, match="broken.mp4"):
        pipeline.run(broken, media_dir / "demo1_audio.wav", out)
    assert not out.exists()


def test_cancel_leaves_no_output_and_no_temp_files(pipeline, workspace, media_dir, tmp_path):
    out = tmp_path / "cancelled.mp4"
    calls = []
    with pytest.raises(Cancelled):
        pipeline.run(workspace["clip25"], make_audio(media_dir, workspace["folder"], 2.4), out,
                     should_cancel=lambda: len(calls) > 0, progress=lambda *a: calls.append(a))
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_user_errors_in_one_sentence(workspace, media_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    base = [sys.executable, "-m", "latentsync", "--checkpoints", str(workspace["checkpoints"]), "--unet-config",
            str(workspace["config"]), "--detector", "dlib", "--device", "cpu", "--quiet", "--out",
            str(tmp_path / "o.mp4")]
    missing = subprocess.run(base + ["--video", str(tmp_path / "nope.mp4"), "--audio",
                                     str(media_dir / "demo1_audio.wav")], capture_output=True, text=True, env=env)
    assert missing.returncode != 0 and "nope.mp4" in missing.stderr and "Traceback" not in missing.stderr
    bad_steps = subprocess.run(base + ["--video", str(workspace["clip25"]), "--audio",
                                       str(media_dir / "demo1_audio.wav"), "--steps", "0"],
                               capture_output=True, text=True, env=env)
    assert bad_steps.returncode != 0 and "--steps must be between 1 and 999" in bad_steps.stderr
    assert not (tmp_path / "o.mp4").exists()


def small_cli_run(workspace, media_dir, out: Path, seconds: float) -> list[str]:
    """The command line of a quick run: the clip at half size (dlib finds the face 4x sooner), 256 px faces."""

    small = workspace["folder"] / "clip_half.mp4"
    if not small.exists():
        write_clip(media_dir, workspace["folder"], small.name, 1.0, scale=2)
    return [sys.executable, "-m", "latentsync", "--checkpoints", str(workspace["checkpoints"]), "--unet-config",
            str(workspace["config"]), "--detector", "dlib", "--device", "cpu", "--resolution", "256", "--out",
            str(out), "--video", str(small), "--audio", str(make_audio(media_dir, workspace["folder"], seconds))]


def start_cli_run(workspace, media_dir, tmp_path, *extra: str):
    """A CLI run with a disk cache and an encode under way (the audio outlasts the video): (process, output, temp
    folder, environment); returns once generation has started."""
    import time

    temp = tmp_path / "tmp"  # the run's private temp folders (disk cache, audio) must go too
    temp.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               TMPDIR=str(temp))
    out = tmp_path / "out" / "o.mp4"
    out.parent.mkdir()
    process = subprocess.Popen(small_cli_run(workspace, media_dir, out, 6.0) + [
        "--memory-mode", "aggressive", "--disk-cache", "on", *extra], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    seen = ""
    while time.time() < deadline and "lip-sync" not in seen:  # wait until generation is under way
        seen += process.stderr.read(1) or ""
        if process.poll() is not None:
            break
    assert process.poll() is None, seen
    return process, out, temp, env


@pytest.mark.parametrize("names", [["SIGINT"], ["SIGTERM"], ["SIGTERM", "SIGTERM"]])  # Ctrl-C; docker stop; twice
def test_interrupted_cli_leaves_no_temp_files(workspace, media_dir, tmp_path, names):
    """Interrupted in the middle of a run: exit code 130, no output, nothing left in the output or temp folder; a
    second signal while the first is being handled does not cut the cleanup short."""
    import signal
    import time

    process, out, temp, _ = start_cli_run(workspace, media_dir, tmp_path)
    for index, name in enumerate(names):
        time.sleep(0.4 * index)
        process.send_signal(getattr(signal, name))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted: no output was written" in err
    assert list(out.parent.iterdir()) == []
    assert list(temp.iterdir()) == []


def test_killed_cli_leaves_no_encoder_and_a_rerun_removes_its_leftovers(workspace, media_dir, tmp_path):
    """kill -9: Python cleans nothing, but ffmpeg ends with it (it never finishes the hidden partial on its own),
    and the next run removes the partial and the disk cache the dead run left."""
    import signal
    import time

    import psutil

    process, out, temp, env = start_cli_run(workspace, media_dir, tmp_path, "--steps", "1")
    deadline = time.time() + 300
    while time.time() < deadline and not any(".partial" in p.name for p in out.parent.iterdir()):
        time.sleep(0.1)  # the first frames are with the encoder
    encoders = [child for child in psutil.Process(process.pid).children() if "ffmpeg" in child.name()]
    assert encoders
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    psutil.wait_procs(encoders, timeout=10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in encoders)
    left = sorted(p.name for p in out.parent.iterdir()) + sorted(p.name for p in temp.iterdir())
    assert any(".partial" in name for name in left) and any(name.endswith(".cache") for name in left), left
    time.sleep(0.5)
    rerun = subprocess.run(small_cli_run(workspace, media_dir, out, 0.64) + ["--quiet", "--steps", "1"], env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert [p.name for p in out.parent.iterdir()] == ["o.mp4"]
    assert list(temp.iterdir()) == []


def test_out_of_memory_mid_run_retries_smaller_and_delivers_each_frame_once(pipeline, workspace, media_dir,
                                                                             monkeypatch):
    import torch

    unet = pipeline.models.unet
    original, calls = unet.forward, []

    def flaky_forward(*args, **kwargs):  # the GPU runs out of memory once, after the first chunk is out
        calls.append(1)
        if len(calls) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", flaky_forward)
    delivered = []
    out = workspace["folder"] / "oom.mp4"
    result = pipeline.run(workspace["clip25"], make_audio(media_dir, workspace["folder"], 1.3), out,
                          frame_sink=delivered.append)
    frames = np.concatenate(delivered)
    assert result.output_frames == len(frames) == 32
    assert result.plan.vae_batch < 4  # the retry ran with halved batches
    assert [read_stamp(f) for f in frames] == [pingpong_index(i, 25) for i in range(32)]  # each frame once
    assert stream_info(out)["frames"] == 32


def test_audio_shorter_than_a_frame_is_one_clear_error(pipeline, workspace, tmp_path):
    audio = tmp_path / "blip.wav"
    soundfile.write(audio, np.zeros(400, dtype=np.int16), 16000, subtype="PCM_16")  # 25 ms < 40 ms
    with pytest.raises(ValueError, match="shorter than one video frame"):
        pipeline.run(workspace["clip25"], audio, tmp_path / "never.mp4")
    assert not (tmp_path / "never.mp4").exists()


def test_frames_only_run_writes_no_file_and_keeps_the_callers_audio_rate(pipeline, workspace, media_dir, tmp_path):
    """No output path: frames reach the sink and nothing is written. With a path and in-memory audio, the muxed
    track keeps the caller's rate and channels (not the 16 kHz mono copy the model listens to)."""
    import torch

    source = decode(workspace["clip25"])[:16]
    speech, rate = soundfile.read(media_dir / "demo1_audio.wav", dtype="float32")
    stereo = np.stack([speech, speech])[:, : int(0.64 * rate)]
    audio = {"waveform": torch.from_numpy(np.repeat(stereo, 3, axis=1))[None], "sample_rate": 3 * rate}  # 48 kHz
    seen = []
    result = pipeline.run(source, audio, fps=25, frame_sink=seen.append)
    assert result.output_path is None and sum(len(f) for f in seen) == result.output_frames == 16
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "with_audio.mp4"
    pipeline.run(source, audio, out, fps=25)
    with av.open(str(out)) as container:
        track = container.streams.audio[0]
        assert (track.sample_rate, track.channels) == (48000, 2)
    with pytest.raises(ValueError, match="nothing would receive the frames"):
        pipeline.run(source, audio, fps=25)


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KB tmpfs: an output folder that fills up (root and mount needed: CI's machines and ours have both)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip()}); "
                    "test_safe_inputs.test_a_failed_copy_into_a_full_folder_is_a_full_disk covers the sentence")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_full_output_folder_is_named_not_the_inputs(workspace, media_dir, small_disk):
    """A full output folder ends the run with the full-disk sentence naming it (not a failed mux blaming the
    inputs), exit code 1, nothing left there."""
    done = subprocess.run(small_cli_run(workspace, media_dir, small_disk / "o.mp4", 2.0) + ["--quiet", "--steps", "1"],
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().startswith(f"error: no space left on the disk of {small_disk}"), done.stderr
    assert "check that the inputs" not in done.stderr and "[Errno" not in done.stderr
    assert list(small_disk.iterdir()) == []


def test_audio_without_speech_is_warned_about_and_speech_is_not(pipeline, workspace, media_dir, tmp_path):
    silence = tmp_path / "silence.wav"
    soundfile.write(silence, np.zeros(int(0.8 * 16000), dtype=np.int16), 16000, subtype="PCM_16")
    quiet = pipeline.run(workspace["clip25"], silence, frame_sink=lambda batch: None)
    assert [w for w in quiet.warnings if w.startswith("little or no speech: ")]
    spoken = pipeline.run(workspace["clip25"], make_audio(media_dir, workspace["folder"], 0.8),
                          frame_sink=lambda batch: None)
    assert not [w for w in spoken.warnings if w.startswith("little or no speech")]


def test_the_stage_says_no_face_is_found_until_one_is(pipeline, workspace, media_dir):
    """Frames without a face pass through fast: the progress says so rather than a lip-sync count that moves."""
    source = decode(workspace["clip25"])[:24]
    source[:16] = 0  # the first group (16 frames on the CPU) has no face
    stages = []
    result = pipeline.run(source, make_audio(media_dir, workspace["folder"], 0.96), fps=25,
                          frame_sink=lambda batch: None, progress=lambda stage, done, total: stages.append(stage))
    synced = [stage for stage in stages if stage.startswith("lip-sync")]
    assert synced[0] == "lip-sync, no face found so far" and synced[-1] == "lip-sync"
    assert result.frames_without_face == 16
