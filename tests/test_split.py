"""One run cut into segments made separately (other GPUs, other machines): joined, they are the single run's
frames bit for bit, with streamed and ping-pong video and with frames without a face on both sides of a cut."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentsync.pipeline import LipSyncPipeline, PipelineOptions
from latentsync.split import frames_to_track
from helpers import collect, decode, make_audio, stamp, write_clip


@pytest.fixture(scope="module")
def setup(tmp_path_factory, media_dir, tiny_models):
    folder, models = tmp_path_factory.mktemp("split"), tiny_models
    # 256 px faces in a half-size clip: the exactness does not depend on the size, the test's time does
    clip = write_clip(media_dir, folder, "clip.mp4", 1.2, scale=2)  # 30 frames
    return {"folder": folder, "clip": clip, "media": media_dir,
            "pipeline": LipSyncPipeline(models, PipelineOptions(steps=2, detector="dlib"))}


def split_and_join(pipeline: LipSyncPipeline, video, audio, parts: int, fps=None):
    plan = pipeline.plan_split(video, audio, fps=fps)
    segments = plan.segments(parts)
    runs = [pipeline.frames(video, audio, fps=fps, segment=segment) for segment in segments]
    joined = np.concatenate([collect(run) for run in runs])
    return plan, segments, joined, sum(run.result().frames_without_face for run in runs)


@pytest.mark.parametrize("seconds, parts", [(1.1, 2), (2.0, 3)])  # streamed; ping-pong across the reversal
def test_segments_join_to_the_single_run_bit_for_bit(setup, seconds, parts):
    pipeline = setup["pipeline"]
    audio = make_audio(setup["media"], setup["folder"], seconds)
    single = pipeline.frames(setup["clip"], audio)
    expected = collect(single)
    plan, segments, joined, _ = split_and_join(pipeline, setup["clip"], audio, parts)
    assert len(segments) == parts and segments[0].start == 0 and segments[-1].stop == single.output_frames
    assert all(s.start % plan.group_frames == 0 and s.stop == t.start for s, t in zip(segments, segments[1:]))
    if seconds > 1.2:  # the video plays backward from frame 30 on: segments 2 and 3 replay frames 1 made
        assert single.output_frames == 50 and segments[1].stop > 30
    assert joined.shape == expected.shape
    assert np.array_equal(joined, expected)


def test_frames_without_a_face_across_a_cut(setup):
    """Frames 12..35 are black: the cut at 16 has faceless frames on both sides, the segment 16..32 has no face
    at all (it must not fail: the clip has faces), and the single run skips that group's noise."""
    pipeline = setup["pipeline"]
    frames = np.concatenate([decode(setup["clip"])] * 2)[:40]
    for i in range(12, 36):
        frames[i] = stamp(np.zeros_like(frames[i]), i)
    audio = make_audio(setup["media"], setup["folder"], 1.55)
    single = pipeline.frames(frames, audio, fps=25)
    expected = collect(single)
    plan, segments, joined, without = split_and_join(pipeline, frames, audio, 3, fps=25)
    assert [(s.start, s.stop) for s in segments] == [(0, 16), (16, 32), (32, single.output_frames)]
    assert np.array_equal(joined, expected)
    assert without == single.result().frames_without_face == 24
    assert not np.array_equal(joined[36:], frames[36:single.output_frames])  # the faces after the gap were synced

    # the detection shared by two workers (cut inside the faceless stretch), the smoothing done once: the same track
    count = frames_to_track(pipeline.options, frames, audio, fps=25)
    anchors = np.concatenate([pipeline.detect_faces(frames, 0, 13, fps=25),
                              pipeline.detect_faces(frames, 13, count, fps=25)])
    shared = pipeline.plan_split(frames, audio, fps=25, anchors=anchors).track
    assert count == len(plan.track) == single.output_frames
    assert torch.equal(shared.affine, plan.track.affine) and torch.equal(shared.has_face, plan.track.has_face)
    assert np.array_equal(shared.anchors, plan.track.anchors, equal_nan=True)
    assert int((~shared.has_face).sum()) == 24


def test_a_plan_cuts_at_most_one_segment_per_group(setup):
    pipeline = setup["pipeline"]
    plan = pipeline.plan_split(setup["clip"], make_audio(setup["media"], setup["folder"], 1.0))
    assert plan.output_frames == 25 and plan.group_frames == 16 and len(plan.track) == 25  # the frames it outputs
    assert [(s.start, s.stop) for s in plan.segments(8)] == [(0, 16), (16, 25)]
    with pytest.raises(ValueError, match="face = N follows one person"):
        LipSyncPipeline(pipeline.models, PipelineOptions(face=1)).detect_faces(setup["clip"], 0, 16)
    with pytest.raises(ValueError, match="outside"):
        pipeline.frames(setup["clip"], make_audio(setup["media"], setup["folder"], 0.5),
                        segment=plan.segments(2)[1])
