"""Dubbing modes on real clips with the tiny set: the speech placed inside the video (audio_start), the rest of the
video kept (when_video_is_longer keep), loop and hold (when_audio_is_longer), the mouth mask, and the exact split
with a kept lead and tail. Source frames carry a stamp of their index (``test_pipeline.stamp``), so every output
frame says which source frame it was made from; files are written lossless (ffv1) where pixels are compared."""

from __future__ import annotations

import numpy as np
import pytest

from latentsync.frames import pingpong_index
from latentsync.pipeline import LipSyncPipeline, PipelineOptions
from helpers import collect, decode, make_audio, read_stamp, sound_of, stamp, write_clip

STEPS = dict(steps=2, detector="dlib")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, media_dir, tiny_models):
    folder, models = tmp_path_factory.mktemp("dubbing"), tiny_models
    clip = write_clip(media_dir, folder, "clip.mp4", 1.2, scale=2)  # 30 frames at 25 fps, 256 px faces
    frames = np.stack([stamp(frame, i) for i, frame in enumerate(decode(clip))])
    return {"folder": folder, "models": models, "media": media_dir, "frames": frames}


def pipeline(setup, **options) -> LipSyncPipeline:
    return LipSyncPipeline(setup["models"], PipelineOptions(**STEPS, **options))


def test_audio_start_passes_the_lead_through_and_syncs_as_the_cut_video(setup):
    frames, audio = setup["frames"], make_audio(setup["media"], setup["folder"], 0.7)  # 17 frames of speech
    dubbed = pipeline(setup, audio_start=0.4, codec="ffv1")
    out = setup["folder"] / "start.mkv"
    seen, masks = [], []
    result = dubbed.run(frames, audio, out, fps=25, frame_sink=seen.append, mask_sink=masks.append)
    produced = np.concatenate(seen)
    assert result.output_frames == len(produced) == 10 + 17 and result.audio_delay == 0.4
    assert np.array_equal(produced[:10], frames[:10])  # before the speech: the video, bit for bit
    cut = collect(pipeline(setup).frames(frames[10:], audio, fps=25))
    assert np.array_equal(produced[10:], cut)  # the synced part: a run on the video cut at 0.4 s
    assert [read_stamp(f) for f in produced] == list(range(27))
    assert np.array_equal(decode(out), produced)  # one lossless encode of everything
    # the sound: 0.4 s of silence, then the speech
    sound, rate = sound_of(out)
    assert np.abs(sound[:int(0.38 * rate)]).max() < 1e-3 and np.abs(sound[int(0.4 * rate):]).max() > 0.05
    # the mouth mask: nothing before the speech; where the face was synced, the mouth and never the stamp corner
    mask = np.concatenate(masks)
    assert mask.shape == produced.shape[:3] and mask.dtype == np.uint8
    assert not mask[:10].any() and mask[10:].max() == 255
    assert not mask[:, :40].any()  # the stamp row, far from the face
    changed = np.abs(produced[10:].astype(int) - frames[10:27].astype(int)).max(axis=-1)
    assert changed[mask[10:] > 200].mean() > 4 * changed[mask[10:] == 0].mean()


def test_keep_passes_the_tail_through_and_pads_the_sound(setup):
    frames, audio = setup["frames"], make_audio(setup["media"], setup["folder"], 0.5)  # 12 frames of speech
    out = setup["folder"] / "keep.mkv"
    seen = []
    result = pipeline(setup, audio_start=0.2, when_video_is_longer="keep", codec="ffv1").run(
        frames, audio, out, fps=25, frame_sink=seen.append)
    produced = np.concatenate(seen)
    assert result.output_frames == len(produced) == 30  # the whole video: 5 + 12 synced + 13
    assert np.array_equal(produced[:5], frames[:5]) and np.array_equal(produced[17:], frames[17:])
    assert not np.array_equal(produced[5:17], frames[5:17])
    assert np.array_equal(decode(out), produced)
    sound, rate = sound_of(out)
    assert abs(len(sound) / rate - 1.2) < 0.03  # padded to the video's end
    assert np.abs(sound[int(0.72 * rate):]).max() < 1e-3  # silence after the speech (0.2 + 0.5 s)
    # cut (the default) ends with the speech
    assert pipeline(setup, audio_start=0.2).frames(frames, audio, fps=25).output_frames == 17


@pytest.mark.parametrize("mode, expected", [("pingpong", lambda i: pingpong_index(i, 25)), ("loop", lambda i: i % 25),
                                            ("hold", lambda i: min(i, 24))])
def test_pingpong_loop_and_hold_after_a_lead(setup, mode, expected):
    frames, audio = setup["frames"], make_audio(setup["media"], setup["folder"], 1.4)  # 35 frames of speech
    produced = collect(pipeline(setup, audio_start=0.2, when_audio_is_longer=mode).frames(frames, audio, fps=25))
    assert len(produced) == 5 + 35
    assert [read_stamp(f) for f in produced] == list(range(5)) + [5 + expected(i) for i in range(35)]


def test_frames_without_a_face_and_a_start_outside_the_video(setup):
    frames = setup["frames"].copy()
    for i in range(12, 16):  # black: no face
        frames[i] = stamp(np.zeros_like(frames[i]), i)
    masks = []
    run = pipeline(setup, audio_start=0.2, when_video_is_longer="keep").frames(
        frames, make_audio(setup["media"], setup["folder"], 0.7), fps=25, mask_sink=masks.append)
    produced = collect(run)
    assert np.array_equal(produced[12:16], frames[12:16]) and not np.concatenate(masks)[12:16].any()
    assert run.result().frames_without_face == 4
    with pytest.raises(ValueError, match=r"audio_start 1.2 s falls on frame 31 of a 30-frame video \(it lasts 1.20 s\): "
                                         r"the latest start is 1.16 s, its last frame"):
        pipeline(setup, audio_start=1.2).frames(frames, make_audio(setup["media"], setup["folder"], 0.5), fps=25)


@pytest.mark.parametrize("options, seconds, count", [
    (dict(audio_start=0.24, when_video_is_longer="keep"), 1.2, 60),  # a lead, 30 synced frames, a tail
    (dict(audio_start=0.8, when_audio_is_longer="loop"), 1.0, 30),  # a lead, 25 synced frames looping 10
])
def test_segments_with_a_kept_lead_and_tail_join_to_the_single_run(setup, options, seconds, count):
    frames = np.concatenate([setup["frames"], setup["frames"][::-1]])[:count]
    audio = make_audio(setup["media"], setup["folder"], seconds)
    dubbed = pipeline(setup, **options)
    expected = collect(dubbed.frames(frames, audio, fps=25))
    plan = dubbed.plan_split(frames, audio, fps=25)
    segments = plan.segments(3)
    assert segments[0].start == 0 and segments[-1].stop == plan.output_frames == len(expected)
    assert len(segments) == 2  # two groups of synced frames: at most one segment each
    joined = np.concatenate([collect(dubbed.frames(frames, audio, fps=25, segment=s)) for s in segments])
    assert np.array_equal(joined, expected)
