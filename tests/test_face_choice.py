"""Several faces: the largest (the published rule) or the N-th from the left, followed through the clip.

The clip is a demo clip beside its own mirror image: two faces of the same size side by side. Choosing one must
change that side only; the other half stays the input, pixel for pixel (compared before any encoding).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentsync.face.choice import FaceTracker
from latentsync.pipeline import LipSyncPipeline, PipelineOptions
from latentsync.video import VideoWriter, iter_frame_batches, video_encoder
from helpers import make_audio

REPO = Path(__file__).resolve().parents[1]
FRAMES = 16


@pytest.fixture(scope="module")
def two_faces(media_dir, tmp_path_factory):
    """16 frames of demo1 at half size (540x960) beside their mirror image: (1080 wide x 960 high) uint8."""
    import av

    with av.open(str(media_dir / "demo1_video.mp4")) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.reformat(width=540, height=960, format="rgb24").to_ndarray())
            if len(frames) == FRAMES:
                break
    half = np.stack(frames)
    return np.concatenate([half, half[:, :, ::-1]], axis=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, media_dir, tiny_set, tiny_models):
    folder = tmp_path_factory.mktemp("faces")
    return {"folder": folder, "checkpoints": tiny_set.checkpoints, "config": tiny_set.config, "models": tiny_models,
            "audio": make_audio(media_dir, folder, FRAMES / 25 + 0.01)}


def synced(setup, frames, face: int) -> np.ndarray:
    pipeline = LipSyncPipeline(setup["models"], PipelineOptions(steps=1, detector="dlib", face=face))
    return np.concatenate([b.copy() for b in pipeline.frames(frames, setup["audio"], fps=25)])


@pytest.mark.parametrize("face,changed", [(1, "left"), (2, "right")])
def test_the_chosen_face_changes_and_the_other_stays_untouched(setup, two_faces, face, changed):
    out = synced(setup, two_faces, face)
    halves = {"left": np.s_[:, :, :540], "right": np.s_[:, :, 540:]}
    other = "right" if changed == "left" else "left"
    assert np.array_equal(out[halves[other]], two_faces[halves[other]])  # pixel for pixel
    difference = np.abs(out[halves[changed]].astype(int) - two_faces[halves[changed]].astype(int))
    assert (difference.reshape(FRAMES, -1).max(axis=1) > 0).all()  # the mouth was redone in every frame


def test_largest_face_warns_when_two_are_the_same_size(setup, two_faces, caplog):
    with caplog.at_level(logging.WARNING, logger="latentsync.pipeline"):
        pipeline = LipSyncPipeline(setup["models"], PipelineOptions(steps=1, detector="dlib"))
        run = pipeline.frames(two_faces, setup["audio"], fps=25)
        for _ in run:
            pass
        run.result()
    assert any("nearly the same size" in r.message and "face = 1" in r.message for r in caplog.records)


def test_tracker_follows_the_face_it_picked():
    tracker = FaceTracker(2)
    left, right = np.array([100., 100, 200, 250]), np.array([600., 100, 700, 250])
    assert tracker.choose(np.stack([left]), [0]) is None  # only one face yet: the second has not appeared
    assert tracker.choose(np.stack([right, left]), [0, 1]) == 0  # the second from the left
    moved = right + [20, 5, 20, 5]
    assert tracker.choose(np.stack([left, moved]), [0, 1]) == 1  # followed, wherever it is in the list
    assert tracker.choose(np.stack([left]), [0]) is None  # it left: the frame has no chosen face
    assert tracker.choose(np.stack([left, moved]), [0, 1]) == 1  # back where it was last seen
    assert tracker.choose(np.stack([left, moved]), [0]) is None  # not usable (too small, ...): not chosen


def test_cli_face_flag(setup, two_faces, tmp_path):
    clip = tmp_path / "two.mp4"
    with VideoWriter(clip, two_faces.shape[2], two_faces.shape[1], 25, encoder=video_encoder(quality=10)) as writer:
        writer.write(two_faces)
    source = np.concatenate(list(iter_frame_batches(clip, 16)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    out = tmp_path / "synced.mp4"
    done = subprocess.run([sys.executable, "-m", "latentsync", "--checkpoints", str(setup["checkpoints"]),
                           "--unet-config", str(setup["config"]), "--detector", "dlib", "--device", "cpu", "--quiet",
                           "--steps", "1", "--face", "2", "--resolution", "256", "--video", str(clip), "--audio",
                           str(setup["audio"]),
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    result = np.concatenate(list(iter_frame_batches(out, 16))).astype(int)
    # the mouths of demo1 at half size: rows 300-460, columns 240-370 on the left, mirrored on the right
    left = np.abs(result[:, 300:460, 240:370] - source[:, 300:460, 240:370]).mean()
    right = np.abs(result[:, 300:460, 710:840] - source[:, 300:460, 710:840]).mean()
    assert right > 4 * left  # the right mouth was synced; the left one only passed through the encoder
