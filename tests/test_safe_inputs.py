"""What a user's mistakes must never cost: an input overwritten, a jobs file half-read, a manifest that stops the
batch, two batches on one manifest, Ray flags that hang. Each is found before any model loads and said in one
sentence naming the flag, the line and the column. The command's own main() runs in this process (no model
loads on these paths, so no subprocess is needed to keep the test honest)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from latentsync.batch import jobs as jobs_file
from latentsync.batch.manifest import Manifest, manifest_path
from latentsync.cli import main
from latentsync.paths import disk_full_sentence
from latentsync.video import MediaError, check_audio_file, variable_frame_rate

DEMO_VIDEO = "demo1_video.mp4"
DEMO_AUDIO = "demo1_audio.wav"


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([*argv])
    err = capsys.readouterr().err.strip()
    return code, err


def one_sentence(code: int, err: str) -> str:
    assert code == 1, err
    assert "Traceback" not in err and err.count("\n") == 0, err
    return err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(media_dir, tmp_path):
    video, audio = tmp_path / "in.mp4", tmp_path / "speech.wav"
    shutil.copy(media_dir / DEMO_VIDEO, video)
    shutil.copy(media_dir / DEMO_AUDIO, audio)
    return video, audio


# -- 1. an output that is an input ------------------------------------------------------------------------------


def test_cli_refuses_an_output_that_is_its_video_or_audio(inputs, tmp_path, capsys):
    video, audio = inputs
    before = digest(video), digest(audio)
    link = tmp_path / "link.mp4"
    link.symlink_to(video)
    for out, name in ((video, "video"), (link, "video"), (tmp_path / "." / "in.mp4", "video")):
        message = one_sentence(*run_cli(capsys, "--video", str(video), "--audio", str(audio), "--out", str(out)))
        assert f"is the {name} file" in message and "choose another output name" in message, message
    hard = tmp_path / "hard.wav"
    os.link(audio, hard)  # another name for the same file
    message = one_sentence(*run_cli(capsys, "--video", str(video), "--audio", str(audio), "--out", str(hard)))
    assert "is the audio file" in message
    assert (digest(video), digest(audio)) == before


def test_library_refuses_an_output_that_is_its_video(inputs):
    """The check lives in the library too: a script calling run() cannot destroy its input either."""
    from latentsync.pipeline import LipSyncPipeline, PipelineOptions

    video, audio = inputs
    before = digest(video)
    with pytest.raises(ValueError, match="is the video file"):
        LipSyncPipeline(None, PipelineOptions()).run(video, audio, video)
    assert digest(video) == before


# -- 2, 8. the jobs file --------------------------------------------------------------------------------------------


def write_jobs(tmp_path: Path, text: str | bytes, name: str = "jobs.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def batch_error(capsys, jobs: Path, *extra: str) -> str:
    message = one_sentence(*run_cli(capsys, "batch", str(jobs), "--quiet", *extra))
    assert not jobs.with_name(jobs.stem + ".manifest.jsonl").exists()  # nothing ran, nothing recorded
    return message


@pytest.mark.parametrize("text, expected", [
    ("video,audio,output\na.mp4,a.wav,out.mp4\nb.mp4,b.wav,out.mp4\n",
     "jobs.csv line 2 and jobs.csv line 3 both write"),
    ("video,audio,output\na.mp4,a.wav,b.mp4\nb.mp4,b.wav,c.mp4\n",
     "jobs.csv line 2 writes"),  # ... which line 3 reads as its video
    ("video,audio,output\na.mp4,a.wav,a.mp4\n", "jobs.csv line 2: output"),
    ("video,audio,output,guidance\na.mp4,a.wav,o.mp4,abc\n", "jobs.csv line 2, column guidance: 'abc' is not a number"),
    ("video,audio,output,steps\na.mp4,a.wav,o.mp4,-1\n",
     "jobs.csv line 2, column steps must be between 1 and 999, got -1"),
    ("video,audio,output,steps\na.mp4,a.wav,o.mp4,2.5\n", "jobs.csv line 2, column steps: '2.5' is not a whole number"),
    ("video,audio,output,guidance\na.mp4,a.wav,o.mp4,nan\n",
     "jobs.csv line 2, column guidance must be a number between 1.0 and 3.0, got nan"),
    ("video,audio,output,guidance\na.mp4,a.wav,o.mp4,5\n",
     "jobs.csv line 2, column guidance must be between 1.0 and 3.0, got 5.0"),
    ("video,audio,output,steps,steps\na.mp4,a.wav,o.mp4,2,3\n", "the header names steps more than once"),
    ("video,audio,output\n", "has no jobs"),
    ("", "has no jobs"),
    ("video,audio,output,attention\na.mp4,a.wav,o.mp4,fast\n", "jobs.csv line 2, column attention must be one of"),
    ("video,audio,output\na.mp4,a.wav,o.webm\n", "codec h264 writes MP4, MOV or Matroska; give a name ending in .mp4"),
])
def test_jobs_file_errors_name_the_line_and_the_column(tmp_path, capsys, text, expected):
    assert expected in batch_error(capsys, write_jobs(tmp_path, text))


@pytest.mark.parametrize("line, expected", [
    ('{"video": "a.mp4", "audio": "a.wav", "output": "o.mp4", "steps": [1, 2]}',
     "jobs.jsonl line 1, column steps: a list is not a value"),
    ('{"video": "a.mp4", "audio": "a.wav", "output": "o.mp4", "face": true}',
     "jobs.jsonl line 1, column face: true is not a value here"),
    ('[1, 2]', "jobs.jsonl line 1 is not an object"),
])
def test_json_jobs_errors(tmp_path, capsys, line, expected):
    assert expected in batch_error(capsys, write_jobs(tmp_path, line + "\n", "jobs.jsonl"))


@pytest.mark.parametrize("encode", [
    lambda text: b"\xef\xbb\xbf" + text.encode(),  # Excel's "CSV UTF-8"
    lambda text: text.encode("utf-16"),  # Excel's "Unicode text"
    lambda text: text.replace("video,audio,output,steps", " video , audio,output , steps ").encode(),
    lambda text: text.replace("o.mp4,2", "o.mp4,2.0").encode(),  # a whole number as a spreadsheet writes it
])
def test_jobs_file_as_spreadsheets_write_it(tmp_path, encode):
    path = write_jobs(tmp_path, encode("video,audio,output,steps\na.mp4,a.wav,o.mp4,2\n"))
    [job] = jobs_file.read_jobs(path, {"steps"})
    assert (job.video.name, job.audio.name, job.output.name) == ("a.mp4", "a.wav", "o.mp4")
    assert job.where == "jobs.csv line 2"
    assert jobs_file.COLUMNS["steps"].parse(job.cells["steps"], job.where) == 2


def test_dubbing_columns_and_records_that_predate_them(tmp_path):
    from latentsync.batch.jobs import settle
    from latentsync.batch.manifest import same_settings
    from latentsync.options import LOAD, RUN

    path = write_jobs(tmp_path, b"video,audio,output,audio_start,when_video_is_longer,when_audio_is_longer,"
                                b"mouth_feather,audio_context\na.mp4,a.wav,o.mkv,1.5,keep,hold,8,seamless\n")
    defaults = {option.field: option.default for option in (*LOAD.values(), *RUN.values())}
    [job] = jobs_file.read_jobs(path)
    job = settle(job, dict(defaults, codec="ffv1"), {"checkpoints": None, "unet_config": None, "device": "cpu"})
    options = job.options
    assert (options.audio_start, options.when_video_is_longer, options.when_audio_is_longer, options.mouth_feather,
            options.audio_context) == (1.5, "keep", "hold", 8, "seamless")
    [bad] = jobs_file.read_jobs(write_jobs(tmp_path, b"video,audio,output,when_audio_is_longer\na,b,c.mp4,bounce\n"))
    with pytest.raises(ValueError, match="column when_audio_is_longer must be one of pingpong, loop, hold"):
        settle(bad, defaults, {"checkpoints": None, "unet_config": None, "device": "cpu"})
    # a record written before these options existed made its output with their defaults: still complete
    settings = job.settings()
    older = {name: value for name, value in settings.items() if name not in (
        "audio_start", "when_video_is_longer", "when_audio_is_longer", "mouth_feather", "audio_context")}
    assert same_settings(settings, settings) and not same_settings(older, settings)
    plain = settle(jobs_file.read_jobs(write_jobs(tmp_path, b"video,audio,output\na.mp4,a.wav,o.mkv\n"))[0],
                   dict(defaults, codec="ffv1"), {"checkpoints": None, "unet_config": None, "device": "cpu"})
    older = {name: value for name, value in plain.settings().items() if name != "audio_context"}
    assert same_settings(older, plain.settings())
    assert not same_settings({**plain.settings(), "retired_option": 1}, plain.settings())


def test_jobs_file_that_is_not_text(tmp_path, capsys):
    message = batch_error(capsys, write_jobs(tmp_path, b"video,audio,output\n\x80abc.mp4,a.wav,o.mp4\n"))
    assert "is not UTF-8 text" in message and "save it as UTF-8" in message


def test_json_array_of_jobs(tmp_path):
    path = write_jobs(tmp_path, json.dumps([{"video": "a.mp4", "audio": "a.wav", "output": f"{i}.mp4"}
                                            for i in range(2)]), "jobs.json")
    assert [job.output.name for job in jobs_file.read_jobs(path, set())] == ["0.mp4", "1.mp4"]


# -- 4, 6. the manifest -----------------------------------------------------------------------------------------


def failing_job(tmp_path: Path, name: str = "o.mp4") -> Path:
    """A job whose video is missing: recorded as failed before any model loads (the manifest path is what's tested)."""
    return write_jobs(tmp_path, f"video,audio,output\nmissing.mp4,a.wav,{name}\n")


def test_manifest_in_a_new_folder_and_one_that_cannot_be_written(tmp_path, capsys):
    jobs = failing_job(tmp_path)
    code, err = run_cli(capsys, "batch", str(jobs), "--quiet", "--manifest", str(tmp_path / "new" / "m.jsonl"))
    assert code == 1 and "Traceback" not in err
    [record] = [json.loads(line) for line in (tmp_path / "new" / "m.jsonl").read_text().splitlines()]
    assert record["status"] == "failed" and "video file not found" in record["error"]
    (tmp_path / "file").write_text("")
    message = one_sentence(*run_cli(capsys, "batch", str(jobs), "--quiet", "--manifest",
                                    str(tmp_path / "file" / "m.jsonl")))
    assert message.startswith("error: cannot write the manifest") and "--manifest" in message


def test_manifest_lines_that_are_not_records_are_skipped_and_counted(tmp_path, capsys):
    jobs = failing_job(tmp_path)
    manifest = tmp_path / "jobs.manifest.jsonl"
    done = {"job": 1, "video": "v", "audio": "a", "output": str(tmp_path / "x.mp4"), "status": "done", "frames": 3}
    manifest.write_bytes(b"null\n[1,2]\n{\"status\":\"done\"}\n\xff\xfe not utf-8\n" + json.dumps(done).encode()
                         + b"\n{\"job\": 1, \"video\": \"cut sho")  # the last record was cut by a kill
    code, err = run_cli(capsys, "batch", str(jobs), "--quiet")
    assert code == 1 and "warning: 5 line(s) of" in err and "Traceback" not in err
    lines = manifest.read_bytes().split(b"\n")
    assert lines[5] == b"{\"job\": 1, \"video\": \"cut sho"  # untouched, and the new record on its own line
    assert json.loads(lines[6])["status"] == "failed" and lines[7] == b""
    again = Manifest(manifest).open()
    assert list(again.done_records()) == [str(tmp_path / "x.mp4")] and again.unreadable == 5
    again.close()


def test_a_record_a_full_disk_refuses_is_kept_for_the_next_append(tmp_path):
    manifest = Manifest(tmp_path / "m.jsonl").open()
    real = manifest._handle
    manifest._handle = open("/dev/full", "a+b", buffering=0)  # every write: ENOSPC
    manifest.append({"output": "a", "status": "done"})
    assert manifest.unwritten == [{"output": "a", "status": "done"}]
    manifest._handle.close()
    manifest._handle = real  # space again: both records go out, in order
    manifest.append({"output": "b", "status": "failed"})
    assert manifest.unwritten == []
    assert [json.loads(line)["output"] for line in (tmp_path / "m.jsonl").read_text().splitlines()] == ["a", "b"]
    manifest.close()


def test_a_second_batch_on_the_same_manifest_stops_at_once(tmp_path, capsys):
    jobs = failing_job(tmp_path)
    with Manifest(manifest_path(jobs)):  # another batch command holds it
        started = time.monotonic()
        message = one_sentence(*run_cli(capsys, "batch", str(jobs), "--quiet"))
        assert "another batch command is running the jobs of the manifest" in message
        assert time.monotonic() - started < 10
    assert manifest_path(jobs).read_text() == ""  # the second one recorded nothing


# -- 7. Ray flags ------------------------------------------------------------------------------------------------


def test_ray_address_that_does_not_answer_is_one_sentence_in_seconds(tmp_path, capsys):
    jobs = failing_job(tmp_path)
    started = time.monotonic()
    message = one_sentence(*run_cli(capsys, "batch", str(jobs), "--quiet", "--ray", "127.0.0.1:1"))
    assert time.monotonic() - started < 15
    assert "--ray 127.0.0.1:1: no Ray cluster answers there" in message and "ray start --head" in message


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_worker_count_must_be_positive(tmp_path, capsys, count):
    with pytest.raises(SystemExit) as exit_:
        main(["batch", str(failing_job(tmp_path)), "--ray", "--workers", count])
    assert exit_.value.code == 2 and "--workers" in capsys.readouterr().err


# -- 9. inputs checked before any work --------------------------------------------------------------------------


def test_audio_without_sound_or_empty_is_refused_up_front(inputs, tmp_path, media_dir, capsys):
    video, _ = inputs
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    message = one_sentence(*run_cli(capsys, "--video", str(video), "--audio", str(empty), "--out",
                                    str(tmp_path / "o.mp4")))
    assert message == f"error: --audio: the audio file {empty} is empty (0 bytes): export the speech again"
    silent = write_timed_clip(tmp_path / "silent.mp4", [4 * i for i in range(30)])  # a video without sound
    with pytest.raises(MediaError, match="has no audio stream"):
        check_audio_file(silent)
    message = one_sentence(*run_cli(capsys, "--video", str(video), "--audio", str(silent), "--out",
                                    str(tmp_path / "o.mp4")))
    assert "has no audio stream" in message
    assert not (tmp_path / "o.mp4").exists()


def write_timed_clip(path: Path, stamps: list[int]) -> Path:
    """An H.264 clip whose frames are shown at ``stamps`` (in 1/100 s)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 100)
        stream.codec_context.time_base = stream.time_base
        for index, stamp in enumerate(stamps):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), index * 8 % 255, np.uint8), format="rgb24")
            frame.pts = stamp
            frame.time_base = stream.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_variable_frame_rate_is_said(inputs, tmp_path, capsys):
    steady = write_timed_clip(tmp_path / "steady.mp4", [4 * i for i in range(30)])
    assert variable_frame_rate(steady) is None
    stamps = [0, 4, 8, 20, 24, 28, 30, 32, 34, 36, 48, 52, 56, 60, 64, 68, 70, 72, 84, 88]  # a phone's pauses
    vfr = write_timed_clip(tmp_path / "vfr.mp4", stamps)
    shortest, longest = variable_frame_rate(vfr)
    assert (round(shortest, 3), round(longest, 3)) == (0.02, 0.12)
    _, audio = inputs
    main(["--video", str(vfr), "--audio", str(audio), "--out", str(tmp_path / "o.mp4"), "--checkpoints",
          str(tmp_path), "--quiet"])  # fails later (no weights there): the warning comes first
    err = capsys.readouterr().err
    assert "vfr.mp4 has a variable frame rate (frames last 20 to 120 ms)" in err and "-fps_mode cfr" in err


def test_output_suffix_ffmpeg_cannot_write_is_refused_up_front(inputs, tmp_path, capsys):
    video, audio = inputs
    for name, codec, expected in (("o.webm", "h264", "give a name ending in .mp4 or .mov or .m4v or .mkv"),
                                  ("o", "h264", "give a name ending in .mp4"),
                                  ("o.mp4", "ffv1", "give a name ending in .mkv")):
        message = one_sentence(*run_cli(capsys, "--video", str(video), "--audio", str(audio), "--out",
                                        str(tmp_path / name), "--codec", codec))
        assert expected in message


def test_a_full_disk_names_the_folder_and_the_fix(tmp_path):
    out, temp = tmp_path / "out", tmp_path / "temp"
    out.mkdir()
    temp.mkdir()
    sentence = disk_full_sentence(OSError(errno.ENOSPC, "No space left on device"), [out], temp)
    assert sentence.startswith("no space left on the disk of ") and "free some space there" in sentence
    ffmpeg = MediaError("ffmpeg exited with status 1 while encoding for o.mp4: [out#0] Error: No space left on device")
    assert disk_full_sentence(ffmpeg, [out], temp) is not None
    assert disk_full_sentence(OSError(errno.EACCES, "Permission denied"), [out], temp) is None


# -- 5. leftovers of killed runs --------------------------------------------------------------------------------


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    """Entries named after a process that no longer runs are removed (a partial encode, a split's parts folder, a
    disk cache); those of a running process, of this one, and other files are kept."""
    import subprocess
    import sys

    from latentsync.tempfiles import TEMP_PREFIX, owned_name, output_prefix, owned_temp_dir, remove_stale

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "o.mp4"
        dead = [tmp_path / f".o.mp4.{ended.pid}-0123abcd.partial.mp4", tmp_path / f".o.mp4.{ended.pid}-89abcdef.parts"]
        dead[0].write_bytes(b"half")
        (dead[1] / "0000.mp4").parent.mkdir()
        (dead[1] / "0000.mp4").write_bytes(b"part")
        alive = tmp_path / f".o.mp4.{running.pid}-0123abcd.partial.mp4"
        alive.write_bytes(b"being written")
        mine = tmp_path / owned_name(output_prefix(out), ".mux.mp4")
        mine.write_bytes(b"mine")
        others = [tmp_path / "o.mp4", tmp_path / ".o.mp4.notes",
                  tmp_path / f".other.mp4.{ended.pid}-0123abcd.partial.mp4"]
        for path in others:
            path.write_bytes(b"keep")
        assert sorted(remove_stale(tmp_path, output_prefix(out))) == sorted(dead)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [alive, mine, *others])
        cache = owned_temp_dir("cache", tmp_path)
        assert cache.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-") and remove_stale(tmp_path, TEMP_PREFIX) == []
        assert remove_stale(tmp_path, output_prefix(out), ours=True) == [mine]
    finally:
        running.kill()
        running.wait()
    assert remove_stale(tmp_path, output_prefix(out)) == [alive]  # its writer is gone now


# -- what a hostile user found: data loss first, then the wrong or missing sentences -----------------------------


def test_a_manifest_that_is_an_input_the_jobs_file_or_not_a_manifest_is_refused_untouched(inputs, tmp_path, capsys):
    video, audio = inputs
    jobs = write_jobs(tmp_path, f"video,audio,output\n{video.name},{audio.name},out.mp4\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nmore notes\n")
    for manifest, expected in ((video, "is the video of jobs.csv line 2"), (jobs, "is the jobs file"),
                               (tmp_path / "out.mp4", None), (notes, "is not a batch manifest")):
        if expected is None:  # the job's output (not there yet): refused as well
            expected = "is the output of jobs.csv line 2"
        before = {path: digest(path) for path in (video, jobs, notes)}
        message = one_sentence(*run_cli(capsys, "batch", str(jobs), "--quiet", "--manifest", str(manifest)))
        assert expected in message and "records would be appended" in message, message
        assert {path: digest(path) for path in before} == before
    assert not (tmp_path / "out.mp4").exists()


def test_a_jobs_file_with_an_unclosed_quote_runs_no_job(tmp_path, capsys):
    jobs = write_jobs(tmp_path, 'video,audio,output\nv.mp4,a.wav,"o1.mp4\nv2.mp4,a2.wav,o2.mp4\nv3.mp4,a3.wav,o3.mp4\n')
    message = batch_error(capsys, jobs)
    assert message == ("error: jobs.csv line 2: a quote is opened and never closed; close it, or remove the stray "
                       "quote")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.csv"]  # no folder named after a broken path
    jsonl = write_jobs(tmp_path, json.dumps({"video": "v.mp4", "audio": "a.wav", "output": "o1.mp4\nv2.mp4"}) + "\n",
                       "jobs.jsonl")
    assert "the output path holds a line break" in batch_error(capsys, jsonl)


@pytest.mark.parametrize("text, expected", [
    ("video;audio;output\na.mp4;a.wav;o.mp4\n", "the header is one cell separated by ';'"),
    ("Video,Audio,Output\na.mp4,a.wav,o.mp4\n", "column names are lower case: write video, audio, output for Video, "
                                                "Audio, Output"),
])
def test_a_jobs_file_with_another_separator_or_capitals_is_named(tmp_path, capsys, text, expected):
    assert expected in batch_error(capsys, write_jobs(tmp_path, text))


def test_resume_redoes_an_output_cut_short(tmp_path):
    """A done record keeps the output's size: a file cut short since (its header still says how many frames) is
    redone; the same file whole is complete."""
    import av

    from latentsync.batch.jobs import Job
    from latentsync.batch.manifest import is_complete, job_record

    out = tmp_path / "o.mp4"
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(3):
            noise = np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")))
        container.mux(stream.encode())
    job = Job(1, tmp_path / "v.mp4", tmp_path / "a.wav", out, where="jobs.csv line 2")
    job.settings = lambda: {}
    record = job_record(job, status="done", frames=3, settings={})
    assert record["bytes"] == out.stat().st_size and is_complete(job, record)
    with open(out, "r+b") as handle:
        handle.truncate(out.stat().st_size - 100)
    assert not is_complete(job, record)
    out.unlink()
    assert not is_complete(job, record)


def test_failed_jobs_are_listed_after_the_batch(tmp_path, capsys):
    jobs = write_jobs(tmp_path, "video,audio,output\nmissing1.mp4,a.wav,o1.mp4\nmissing2.mp4,a.wav,o2.mp4\n")
    code, err = run_cli(capsys, "batch", str(jobs), "--quiet")
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("failed: jobs.csv line 2 (missing1.mp4 -> o1.mp4): FileNotFoundError: video file not "
                               "found"), err
    assert lines[1].startswith("failed: jobs.csv line 3 (missing2.mp4 -> o2.mp4)")


@pytest.mark.parametrize("device, expected", [
    ("banana", "--device banana: give cpu, cuda, cuda:N (the N-th GPU) or mps"),
    ("cuda", "--device cuda: this torch"),
])
def test_a_device_this_machine_lacks_is_one_sentence(inputs, tmp_path, capsys, device, expected):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is fine here (CI has none)")
    video, audio = inputs
    message = one_sentence(*run_cli(capsys, "--video", str(video), "--audio", str(audio), "--out",
                                    str(tmp_path / "o.mp4"), "--device", device))
    assert expected in message


def test_an_output_inside_a_file_or_with_a_name_too_long(inputs, tmp_path, capsys):
    video, audio = inputs
    (tmp_path / "afile.txt").write_text("")
    message = one_sentence(*run_cli(capsys, "--video", str(video), "--audio", str(audio), "--out",
                                    str(tmp_path / "afile.txt" / "x.mp4")))
    assert "afile.txt is a file, not a folder" in message
    message = one_sentence(*run_cli(capsys, "--video", str(video), "--audio", str(audio), "--out",
                                    str(tmp_path / ("n" * 300 + ".mp4"))))
    assert "is 304 bytes long and this disk takes at most 255" in message


def test_temporary_names_of_a_long_output_stay_short(tmp_path):
    """A legal 244-byte output name: its hidden partial files' names still fit the disk's 255 bytes."""
    from latentsync.tempfiles import output_prefix, owned_name

    name = "n" * 240 + ".mp4"
    temp = owned_name(output_prefix(tmp_path / name), ".partial.mp4")
    assert len(temp) < 150
    (tmp_path / temp).write_bytes(b"")  # the disk takes it
    assert output_prefix(tmp_path / name) != output_prefix(tmp_path / ("n" * 239 + "m.mp4"))  # told apart


def test_an_audio_start_past_the_video_says_the_last_that_works():
    from fractions import Fraction as F

    from latentsync.command import in_flags
    from latentsync.options import PipelineOptions
    from latentsync.timeline import plan_timeline

    with pytest.raises(ValueError) as error:
        plan_timeline(PipelineOptions(audio_start=0.99), 25, F(25), 50)
    assert str(error.value) == ("audio_start 0.99 s falls on frame 26 of a 25-frame video (it lasts 1.00 s): the "
                                "latest start is 0.96 s, its last frame")
    assert in_flags(str(error.value)).startswith("--audio-start 0.99 s falls on frame 26")
    assert plan_timeline(PipelineOptions(audio_start=0.96), 25, F(25), 50).lead == 24


def test_a_ray_address_that_is_not_a_ray_head_is_one_sentence_in_seconds(tmp_path, capsys):
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer_like_a_web_server():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            connection.close()

    threading.Thread(target=answer_like_a_web_server, daemon=True).start()
    started = time.monotonic()
    message = one_sentence(*run_cli(capsys, "batch", str(failing_job(tmp_path)), "--quiet", "--ray",
                                    f"127.0.0.1:{server.getsockname()[1]}"))
    server.close()
    assert "is not a Ray cluster's head" in message and time.monotonic() - started < 10


def test_a_stage_only_announced_leaves_no_bar_at_zero(capsys):
    from latentsync.command import TqdmProgress

    progress = TqdmProgress(True)
    progress("detect faces", 0, 50)
    progress("lip-sync", 25, 50)
    progress("lip-sync", 50, 50)
    progress.close()
    err = capsys.readouterr().err
    assert "detect faces" not in err and "lip-sync" in err and list(progress.bars) == ["lip-sync"]


def test_a_failed_copy_into_a_full_folder_is_a_full_disk(tmp_path, monkeypatch):
    """ffmpeg's words for a copy into a full folder may be about what it read back ("moov atom not found"): with less
    room there than the video takes, the failure is a full disk, named as such."""
    from latentsync.video import writer

    video = tmp_path / "video.mp4"
    video.write_bytes(b"not a video" * 1000)
    out = tmp_path / "o.mp4"
    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda folder: free._replace(free=1000))
    with pytest.raises(OSError) as error:
        writer._copy_video(writer.find_ffmpeg(), ["-i", str(video)], out, 1.0, None, None)
    assert error.value.errno == errno.ENOSPC and disk_full_sentence(error.value, [tmp_path], tmp_path)
    monkeypatch.undo()
    with pytest.raises(MediaError, match="check that the inputs are readable"):  # room enough: the input's fault
        writer._copy_video(writer.find_ffmpeg(), ["-i", str(video)], out, 1.0, None, None)


def test_a_killed_batchs_local_cluster_is_ended_by_the_next_batch(tmp_path, monkeypatch):
    """A driver killed with SIGKILL never shuts its local Ray cluster down: the processes it recorded (a stand-in
    here: one that outlives its parent, as Ray's agents do) are ended by the next batch, its session folder removed;
    a live driver's cluster is left alone."""
    import signal
    import subprocess
    import sys

    import psutil

    from latentsync.batch import local_cluster

    monkeypatch.setenv("LATENTSYNC_CACHE", str(tmp_path / "cache"))
    session = tmp_path / "session"
    session.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, time
from latentsync.batch import local_cluster
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
local_cluster.remember({str(session)!r})
print("ready", flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert driver.stdout.readline().strip() == "ready"
    [agent] = psutil.Process(driver.pid).children()
    own = local_cluster.remember(None)  # this process's own cluster: its driver runs
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=10)
    assert agent.is_running()  # outlived its driver
    assert local_cluster.reap() == 1
    assert not agent.is_running() or agent.status() == psutil.STATUS_ZOMBIE
    assert not session.exists() and [p.name for p in local_cluster.records_folder().iterdir()] == [own.name]
    local_cluster.forget(own)
