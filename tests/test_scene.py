"""Dubbing a scene in one pass, with the tiny set on real clips: lips synced only where the speech is
(sync_only_speech), several lines at their times, each on its face, every other frame the source's. Source frames
carry a stamp of their index (``test_pipeline.stamp``); files are lossless (ffv1) where pixels are compared."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from latentsync import NoFaceError, cli
from latentsync.pipeline import LipSyncPipeline, PipelineOptions
from latentsync.scene import Line
from helpers import collect, decode, read_stamp, sound_of, stamp, write_clip

RATE, FPS = 16000, 25
PER_FRAME = RATE // FPS  # 640 samples of speech per video frame
SPEECH = (0.5, 1.4)  # seconds of demo1's track that are speech throughout (its first word starts at ~0.45 s)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, media_dir, tiny_set, tiny_models):
    folder, models = tmp_path_factory.mktemp("scene"), tiny_models
    clip = write_clip(media_dir, folder, "clip.mp4", 3.2, scale=2)  # 80 frames, 256 px faces
    frames = np.stack([stamp(frame, i) for i, frame in enumerate(decode(clip))])
    track, rate = soundfile.read(media_dir / "demo1_audio.wav", dtype="float32")
    assert rate == RATE
    words = track[int(SPEECH[0] * RATE):int(SPEECH[1] * RATE)]  # 0.9 s of speech
    # the take's track, as long as the video: speech, 1.4 s of silence (44 % of it), speech
    take = np.concatenate([words, np.zeros(int(1.4 * RATE), np.float32), words])
    return {"folder": folder, "models": models, "frames": frames, "words": words, "take": take,
            "checkpoints": tiny_set.checkpoints, "config": tiny_set.config}


def pipeline(setup, **options) -> LipSyncPipeline:
    return LipSyncPipeline(setup["models"], PipelineOptions(steps=2, detector="dlib", **options))


def synced_ranges(produced: np.ndarray, frames: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of the runs of output frames that differ from the source's."""
    changed = [not np.array_equal(a, b) for a, b in zip(produced, frames)]
    ranges, start = [], None
    for i, flag in enumerate(changed + [False]):
        if flag and start is None:
            start = i
        if not flag and start is not None:
            ranges.append((start, i))
            start = None
    return ranges


def test_only_the_speech_is_synced_each_stretch_as_a_run_on_it_the_rest_is_the_source(setup):
    frames, take = setup["frames"], setup["take"]
    out = setup["folder"] / "speech_only.mkv"
    seen = []
    result = pipeline(setup, sync_only_speech=True, speech_blend=0, when_video_is_longer="keep", codec="ffv1").run(
        frames, (take, RATE), out, fps=FPS, frame_sink=seen.append)
    produced = np.concatenate(seen)
    assert result.output_frames == len(produced) == len(frames)
    assert [read_stamp(f) for f in produced] == list(range(len(frames)))
    assert np.array_equal(decode(out), produced)  # one lossless encode
    ranges = synced_ranges(produced, frames)
    # two stretches, one around each stretch of speech (frames 0..22 and 57..79, padded by 0.2 s = 5 frames): the
    # silence between them untouched
    assert len(ranges) == 2, ranges
    assert ranges[0][0] == 0 and 22 <= ranges[0][1] <= 30 and 50 <= ranges[1][0] <= 57 and ranges[1][1] == 80
    for first, stop in ranges:  # each: what a run on the video and the speech cut there makes
        cut = take[first * PER_FRAME:stop * PER_FRAME]
        alone = collect(pipeline(setup).frames(frames[first:stop], (cut, RATE), fps=FPS))
        assert np.array_equal(produced[first:stop], alone)
    # fewer frames through the model than syncing everything (80)
    assert sum(stop - first for first, stop in ranges) < 62
    sound, rate = sound_of(out)
    assert abs(len(sound) / rate - 3.2) < 0.03  # the take's track, padded to the video's end


def test_the_blend_changes_only_the_mouth_region_of_the_boundary_frames(setup):
    frames, take = setup["frames"], setup["take"]
    masks, plain = [], []
    pipeline(setup, sync_only_speech=True, speech_blend=0, when_video_is_longer="keep").run(
        frames, (take, RATE), fps=FPS, frame_sink=plain.append)
    plain = np.concatenate(plain)
    blended = []
    pipeline(setup, sync_only_speech=True, speech_blend=3, when_video_is_longer="keep").run(
        frames, (take, RATE), fps=FPS, frame_sink=blended.append, mask_sink=masks.append)
    blended, masks = np.concatenate(blended), np.concatenate(masks)
    (first, stop), (second, _) = synced_ranges(plain, frames)
    assert first == 0  # the video starts with speech: nothing to blend from there
    edges = [stop - 3, stop - 2, stop - 1, second, second + 1, second + 2]
    inner = [i for i in range(len(frames)) if i not in edges]
    assert np.array_equal(blended[inner], plain[inner])  # every other frame as without the blend
    for i in edges:
        moved = np.abs(blended[i].astype(int) - frames[i].astype(int)).max(axis=-1) > 0
        assert moved.any() and not moved[masks[i] == 0].any()  # only inside the (feathered) mouth region
        full = np.abs(plain[i].astype(int) - frames[i].astype(int)).sum()
        assert np.abs(blended[i].astype(int) - frames[i].astype(int)).sum() < full
    # the mouth fades in: frame by frame, more of the synced mouth
    fading_in = [np.abs(blended[i].astype(int) - frames[i].astype(int)).sum() for i in edges[3:]]
    assert fading_in == sorted(fading_in)


def test_two_lines_at_their_times_with_their_sound(setup, tmp_path):
    frames, words = setup["frames"], setup["words"]
    first, second = tmp_path / "first.wav", tmp_path / "second.wav"
    soundfile.write(first, words[:int(0.64 * RATE)], RATE, subtype="FLOAT")
    soundfile.write(second, words, RATE, subtype="FLOAT")
    out = tmp_path / "lines.mkv"
    seen = []
    result = pipeline(setup, when_video_is_longer="keep", codec="ffv1").run(
        frames, [Line(first, 0.4), Line(second, 2.0)], out, fps=FPS, frame_sink=seen.append)
    produced = np.concatenate(seen)
    assert result.output_frames == len(produced) == 80
    # line 1: frames 10..26 (0.64 s), line 2: frames 50..72 (0.9 s); every other frame the source's
    assert synced_ranges(produced, frames) == [(10, 26), (50, 72)]
    sound, rate = sound_of(out)
    loud = np.flatnonzero(np.abs(sound if sound.ndim == 1 else sound.mean(axis=1)) > 0.02) / rate
    assert abs(loud[0] - 0.4) < 0.08 and loud[-1] < 2.0 + 0.95  # the lines' sound at their times
    gap = (sound if sound.ndim == 1 else sound.mean(axis=1))[int(1.1 * rate):int(1.95 * rate)]
    assert np.abs(gap).max() < 1e-3  # silence between them


def test_each_line_on_its_own_face(setup, tmp_path):
    """Two demo faces side by side: line 1 on the left face, line 2 on the right; each line's frames change only
    its face's half of the frame."""
    frames = setup["frames"][:40]
    pair = np.concatenate([frames, frames[:, :, ::-1]], axis=2)  # the speaker and a mirror image beside them
    words = setup["words"]
    line = tmp_path / "line.wav"
    soundfile.write(line, words[:int(0.64 * RATE)], RATE, subtype="FLOAT")
    produced = collect(pipeline(setup, when_video_is_longer="keep").scene(
        pair, [Line(line, 0.0, face=1), Line(line, 0.8, face=2)], fps=FPS))
    half = pair.shape[2] // 2
    left = np.abs(produced[:, :, :half].astype(int) - pair[:, :, :half].astype(int)).sum(axis=(1, 2, 3))
    right = np.abs(produced[:, :, half:].astype(int) - pair[:, :, half:].astype(int)).sum(axis=(1, 2, 3))
    assert (left[:16] > 0).all() and not right[:16].any()  # line 1: the left face only
    assert (right[20:36] > 0).all() and not left[20:36].any()  # line 2: the right face only
    assert not left[16:20].any() and not right[16:20].any() and not left[36:].any() and not right[36:].any()
    with pytest.raises(NoFaceError, match=r"line 1 \(face 3, frames 20 to 35\): No face was found"):
        collect(pipeline(setup).scene(pair, [Line(line, 0.8, face=3)], fps=FPS))  # only two faces in the shot


@pytest.mark.parametrize("lines, sentence", [
    (["{a}@0", "{b}@0.3"], r"line 2 \(from 0.3 s\) starts before line 1 \(from 0 s\) ends at 0.64 s: lines must not "
                           r"overlap"),
    (["{a}@0", "{b}@4"], r"line 2 starts at 4 s, outside the video \(0 to 3.20 s\)"),
    (["{a}@0", "{missing}@1"], r"line 2: no such file: .*missing.wav"),
    (["{a}@0", "{b}@1@17"], r"line 2's face must be between 0 and 16, got 17"),
    (["{a}@0", "{b}@2.9"], r"line 2 lasts 0.64 s from 2.9 s: it ends after the video \(3.20 s\); start it by 2.56 s"),
    (["{a}@zero"], r"--line 1: the start 'zero' is not a number of seconds"),
])
def test_a_bad_edit_list_is_one_sentence_naming_the_line_before_models_load(setup, tmp_path, capsys, lines,
                                                                            sentence):
    import re

    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    for path in (a, b):
        soundfile.write(path, setup["words"][:int(0.64 * RATE)], RATE, subtype="FLOAT")
    clip = setup["folder"] / "clip.mp4"
    empty = tmp_path / "no-weights"
    empty.mkdir()  # no weights at all: the run would fail at loading them, after the edit list
    argv = ["--video", str(clip), "--out", str(tmp_path / "o.mp4"), "--checkpoints", str(empty), "--device", "cpu"]
    for text in lines:
        argv += ["--line", text.format(a=a, b=b, missing=tmp_path / "missing.wav")]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(sentence, error), error


def test_a_jobs_file_runs_a_scene_from_its_lines_column(setup, media_dir, tmp_path, capsys):
    """A jobs file row with `lines` instead of `audio`: the scene is run (its lines synced, the rest the source's);
    the manifest keeps its lines, so a rerun skips it and an edited edit list is redone."""
    clip = write_clip(media_dir, tmp_path, "clip.mp4", 1.6, scale=2)  # 40 frames
    line = tmp_path / "line.wav"
    soundfile.write(line, setup["words"][:int(0.64 * RATE)], RATE, subtype="FLOAT")
    table = tmp_path / "jobs.csv"
    table.write_text("video,audio,output,lines,codec,when_video_is_longer\n"
                     "clip.mp4,,scene.mkv,line.wav@0;line.wav@0.8@0,ffv1,keep\n")
    argv = ["batch", str(table), "--checkpoints", str(setup["checkpoints"]), "--unet-config",
            str(setup["config"]), "--device", "cpu", "--detector", "dlib", "--steps", "2", "--quiet",
            "--resolution", "256"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "1 done, 0 already complete" in capsys.readouterr().out
    produced, source = decode(tmp_path / "scene.mkv"), decode(clip)
    assert len(produced) == len(source) == 40
    assert synced_ranges(produced, source) == [(0, 16), (20, 36)]
    assert cli.main(argv) == 0 and "0 done, 1 already complete" in capsys.readouterr().out
    table.write_text(table.read_text().replace("@0.8@0", "@0.9@0"))  # the edit list changed: the job is redone
    assert cli.main(argv) == 0 and "1 done, 0 already complete" in capsys.readouterr().out
    assert synced_ranges(decode(tmp_path / "scene.mkv"), source) == [(0, 16), (22, 38)]


def test_a_jobs_file_row_with_audio_and_lines_is_refused(tmp_path):
    from latentsync.batch import jobs as jobs_file

    table = tmp_path / "jobs.csv"
    table.write_text("video,audio,output,lines\nv.mp4,a.wav,o.mp4,a.wav@1\n")
    with pytest.raises(jobs_file.JobsFileError, match="jobs.csv line 2 has both audio and lines: give one"):
        jobs_file.read_jobs(table)
    table.write_text("video,audio,output,lines\nv.mp4,,o.mp4,a.wav@soon\n")
    with pytest.raises(ValueError, match="line 2, column lines, item 1: the start 'soon' is not a number"):
        jobs_file.read_jobs(table)


def test_the_command_line_takes_audio_or_lines(setup, tmp_path, capsys):
    line = tmp_path / "a.wav"
    soundfile.write(line, setup["words"][:int(0.64 * RATE)], RATE, subtype="FLOAT")
    base = ["--video", str(setup["folder"] / "clip.mp4"), "--out", str(tmp_path / "o.mp4"), "--device", "cpu"]
    for extra in ([], ["--audio", str(line), "--line", f"{line}@0"]):
        assert cli.main(base + extra) == 1
        assert "give either --audio (one speech track) or --line" in capsys.readouterr().err
