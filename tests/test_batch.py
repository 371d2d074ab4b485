"""``python -m latentsync batch``: several jobs in one process, a manifest, a failing job that stops nothing, and
resuming after a finished or a killed run. Real tiny checkpoints, real clips, the real command: in this process
(``main``) where the test is about the batch, in a child process where it is about the process (kills, signals,
Ray workers and their thread counts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentsync.cli import main
from latentsync.video import count_frames
from helpers import decode, make_audio, sound_of, write_clip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, media_dir, tiny_set):
    folder = tmp_path_factory.mktemp("batch")
    write_clip(media_dir, folder, "clip_25.00.mp4", 1.0, scale=2)  # half size: the batch logic, not the pixels
    make_audio(media_dir, folder, 0.64)
    make_audio(media_dir, folder, 0.9)
    return {"folder": folder, "checkpoints": tiny_set.checkpoints, "config": tiny_set.config}


def arguments(workspace, jobs: Path, *extra: str) -> list[str]:
    return ["batch", str(jobs), "--checkpoints", str(workspace["checkpoints"]), "--unet-config",
            str(workspace["config"]), "--detector", "dlib", "--device", "cpu", "--steps", "1", "--resolution", "256",
            "--quiet", *extra]


def batch_here(workspace, jobs: Path, capsys, *extra: str) -> subprocess.CompletedProcess:
    """The command run by ``main`` in this process: its exit code and what it printed."""
    try:
        code = main(arguments(workspace, jobs, *extra))
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([], code, out, err)


def batch(workspace, jobs: Path, *extra: str, wait: bool = True, env: dict | None = None):
    """The command in a child process (``wait`` False: started, not waited for)."""
    command = [sys.executable, "-m", "latentsync", *arguments(workspace, jobs, *extra)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **(env or {}))
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def records(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def test_three_jobs_one_bad_then_resume(workspace, tmp_path, capsys):
    folder = workspace["folder"]
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("video,audio,output,seed\n"
                    f"{folder / 'clip_25.00.mp4'},{folder / 'speech_0.64.wav'},out/a.mp4,\n"
                    f"{folder / 'missing.mp4'},{folder / 'speech_0.64.wav'},out/b.mp4,\n"
                    f"{folder / 'clip_25.00.mp4'},{folder / 'speech_0.90.wav'},out/c.mp4,7\n")
    first = batch_here(workspace, jobs, capsys)
    assert first.returncode == 1, first.stderr  # one job failed
    assert "2 done, 0 already complete, 1 failed" in first.stdout
    manifest = tmp_path / "jobs.manifest.jsonl"
    by_output = {Path(r["output"]).name: r for r in records(manifest)}
    assert by_output["a.mp4"]["status"] == "done" and by_output["a.mp4"]["frames"] == 16
    assert by_output["c.mp4"]["status"] == "done" and by_output["c.mp4"]["frames"] == 22
    assert by_output["b.mp4"]["status"] == "failed" and "missing.mp4" in by_output["b.mp4"]["error"]
    assert count_frames(tmp_path / "out" / "a.mp4") == 16 and count_frames(tmp_path / "out" / "c.mp4") == 22
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mp4", "c.mp4"]  # nothing half-written
    written = {name: (tmp_path / "out" / name).stat().st_mtime_ns for name in ("a.mp4", "c.mp4")}

    again = batch_here(workspace, jobs, capsys)  # the same command: the complete ones skipped, the failed redone
    assert "0 done, 2 already complete, 1 failed" in again.stdout
    assert {name: (tmp_path / "out" / name).stat().st_mtime_ns for name in written} == written
    (tmp_path / "out" / "c.mp4").write_bytes(b"damaged")  # no longer complete: redone
    third = batch_here(workspace, jobs, capsys)
    assert "1 done, 1 already complete, 1 failed" in third.stdout
    assert count_frames(tmp_path / "out" / "c.mp4") == 22

    # an edited row (another seed) is redone: the record keeps what made the output
    assert records(tmp_path / "jobs.manifest.jsonl")[-1]["settings"]["seed"] == 7
    jobs.write_text(jobs.read_text().replace("out/c.mp4,7", "out/c.mp4,8"))
    before = (tmp_path / "out" / "c.mp4").read_bytes()
    edited = batch_here(workspace, jobs, capsys)
    assert "1 done, 1 already complete, 1 failed" in edited.stdout
    assert records(tmp_path / "jobs.manifest.jsonl")[-1]["settings"]["seed"] == 8
    assert (tmp_path / "out" / "c.mp4").read_bytes() != before
    assert "0 done, 2 already complete, 1 failed" in batch_here(workspace, jobs, capsys).stdout


def test_killed_run_loses_only_the_job_in_flight(workspace, tmp_path, capsys):
    folder = workspace["folder"]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps({"video": str(folder / "clip_25.00.mp4"),
                                          "audio": str(folder / "speech_0.64.wav"), "output": f"out/{i}.mp4",
                                          "seed": i, "face": 0}) for i in range(3)) + "\n")
    manifest = tmp_path / "jobs.manifest.jsonl"
    process = batch(workspace, jobs, wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and not (manifest.exists() and manifest.read_text().strip()):
        time.sleep(0.2)  # the first job is recorded: the second is in flight
    process.send_signal(signal.SIGKILL)  # a killed worker: no chance to clean up
    process.wait(timeout=60)
    done_first = [r["output"] for r in records(manifest) if r["status"] == "done"]
    assert len(done_first) >= 1
    resumed = batch_here(workspace, jobs, capsys)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done_first)} already complete" in resumed.stdout
    assert [count_frames(tmp_path / "out" / f"{i}.mp4") for i in range(3)] == [16, 16, 16]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == \
        ["0.mp4", "1.mp4", "2.mp4"]


def test_terminated_ray_batch_leaves_no_partial_file(workspace, tmp_path, media_dir):
    """SIGTERM (docker stop) to a --ray batch while a worker encodes: the driver shuts the workers down (Ray's own
    SIGTERM handler would end it at once) and removes the partial file the worker was writing."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt")
    folder = workspace["folder"]
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"video,audio,output\n{folder / 'clip_25.00.mp4'},{make_audio(media_dir, folder, 4.0)},out/a.mp4\n")
    process = batch(workspace, jobs, "--ray", "--workers", "1", wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not any(".partial" in p.name for p in (tmp_path / "out").glob(".*")):
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted: the jobs in flight wrote nothing" in err, err
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_jobs_file_is_one_sentence_before_any_work(workspace, tmp_path, capsys):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("video,audio,output,stepz\na.mp4,a.wav,o.mp4,3\n")
    done = batch_here(workspace, jobs, capsys)
    assert done.returncode == 1 and "unknown columns stepz" in done.stderr and "Traceback" not in done.stderr
    jobs.write_text("video,audio,output,steps\na.mp4,a.wav,o.mp4,0\n")
    done = batch_here(workspace, jobs, capsys)
    assert done.returncode == 1 and "jobs.csv line 2, column steps must be between 1 and 999, got 0" in done.stderr
    assert not (tmp_path / "jobs.manifest.jsonl").exists()


def test_ray_workers_are_sent_the_whole_library(monkeypatch):
    """Workers on other machines import the library Ray ships them (``py_modules``): the ``latentsync`` package's
    folder, not the batch subpackage the runner lives in; and the driver's LATENTSYNC_/HF_ settings, nothing else."""
    import latentsync
    from latentsync.batch.ray_runner import runtime_env

    monkeypatch.setenv("LATENTSYNC_CACHE", "/somewhere")
    monkeypatch.setenv("HF_HOME", "/hf")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    env = runtime_env()
    assert env["py_modules"] == [str(Path(latentsync.__file__).resolve().parent)]
    assert Path(env["py_modules"][0]).name == "latentsync"
    assert env["env_vars"]["LATENTSYNC_CACHE"] == "/somewhere" and env["env_vars"]["HF_HOME"] == "/hf"
    assert "UNRELATED_SECRET" not in env["env_vars"]


def test_ray_with_two_workers_gives_the_local_outputs(workspace, tmp_path):
    """A local Ray cluster with two workers (each loads the models once) runs the jobs; the decoded frames equal
    those of the local batch, job for job. Both run torch on one thread, as Ray gives a one-CPU worker: the thread
    count changes the order of float sums (1e-6), which the encoder can turn into visibly different files."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt")
    import numpy as np

    folder = workspace["folder"]
    rows = "".join(f"{folder / 'clip_25.00.mp4'},{folder / 'speech_0.64.wav'},out/{seed}.mp4,{seed}\n"
                   for seed in (1, 2, 3))
    for name in ("local", "ray"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "jobs.csv").write_text("video,audio,output,seed\n" + rows)
    one_thread = {"OMP_NUM_THREADS": "1"}
    local = batch(workspace, tmp_path / "local" / "jobs.csv", env=one_thread)
    assert local.returncode == 0, local.stderr
    on_ray = batch(workspace, tmp_path / "ray" / "jobs.csv", "--ray", "--workers", "2", env=one_thread)
    assert on_ray.returncode == 0, on_ray.stderr
    assert "3 done, 0 already complete, 0 failed" in on_ray.stdout
    assert {r["status"] for r in records(tmp_path / "ray" / "jobs.manifest.jsonl")} == {"done"}
    for seed in (1, 2, 3):
        frames = [decode(tmp_path / name / "out" / f"{seed}.mp4") for name in ("local", "ray")]
        assert np.array_equal(*frames)


def test_split_over_two_ray_workers_equals_the_single_run(workspace, tmp_path, media_dir):
    """--split: each job cut at a 16-frame boundary into one segment per Ray worker (2), joined without
    re-encoding. Lossless FFV1 shows the joined frames are the single run's exactly, with the video played
    backward across the cut (ping-pong); the H.264 job, its speech starting 0.2 s in (audio_start), has every frame
    and the audio placed after 0.2 s of silence; a job with a missing input fails with its sentence; no part is
    left behind."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-ray.txt")
    import av
    import numpy as np

    folder = workspace["folder"]
    audio = make_audio(media_dir, folder, 1.2)  # 30 frames from a 25-frame clip: forward, then backward
    jobs = {}
    for name in ("single", "split"):
        (tmp_path / name).mkdir()
        jobs[name] = tmp_path / name / "jobs.csv"
        jobs[name].write_text("video,audio,output,codec,audio_start\n"
                              f"{folder / 'clip_25.00.mp4'},{audio},out/lossless.mkv,ffv1,0\n")
    jobs["split"].write_text(jobs["split"].read_text()
                             + f"{folder / 'clip_25.00.mp4'},{audio},out/small.mp4,h264,0.2\n"
                             f"{folder / 'missing.mp4'},{audio},out/never.mp4,h264,0\n")
    one_thread = {"OMP_NUM_THREADS": "1"}
    single = batch(workspace, jobs["single"], env=one_thread)
    assert single.returncode == 0, single.stderr
    split = batch(workspace, jobs["split"], "--ray", "--workers", "2", "--split", env=one_thread)
    assert split.returncode == 1 and "2 done, 0 already complete, 1 failed" in split.stdout, split.stderr
    # the job with a missing input is recorded first: it fails before any model loads
    failed, *manifest = records(tmp_path / "split" / "jobs.manifest.jsonl")
    assert [(r["status"], r["frames"], r["segments"]) for r in manifest] == [("done", 30, 2), ("done", 35, 2)]
    assert failed["status"] == "failed" and failed["error"].startswith("FileNotFoundError: video file not found")
    lossless = [decode(tmp_path / name / "out" / "lossless.mkv") for name in ("single", "split")]
    assert lossless[0].shape[0] == 30 and np.array_equal(*lossless)
    small = tmp_path / "split" / "out" / "small.mp4"
    assert count_frames(small) == 35
    with av.open(str(small)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        assert abs(float(container.streams.audio[0].duration * container.streams.audio[0].time_base) - 35 / 25) < 0.05
    sound, rate = sound_of(small)
    assert np.abs(sound[:int(0.18 * rate)]).max() < 1e-3 and np.abs(sound[int(0.2 * rate):]).max() > 0.05
    source = decode(folder / "clip_25.00.mp4")
    h264 = decode(small).astype(int)
    assert np.abs(h264[:5] - source[:5].astype(int)).mean() < 2.0  # before the speech: the video's own frames
    assert sorted(p.name for p in (tmp_path / "split" / "out").iterdir()) == ["lossless.mkv", "small.mp4"]


def test_split_needs_ray_and_ffv1_needs_mkv(workspace, tmp_path, capsys):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("video,audio,output,codec\na.mp4,a.wav,o.mp4,ffv1\n")
    done = batch_here(workspace, jobs, capsys, "--split")
    assert done.returncode == 2 and "--split cuts a job across Ray workers: add --ray" in done.stderr
    done = batch_here(workspace, jobs, capsys)
    assert done.returncode == 1 and "codec ffv1 writes Matroska; give a name ending in .mkv" in done.stderr
    assert not (tmp_path / "jobs.manifest.jsonl").exists()
