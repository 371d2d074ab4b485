"""``python -m latentsync batch JOBS``: many lip-sync jobs in this process, models loaded once, resumable.

JOBS is a CSV file (a header row) or JSON Lines (one object per line) with ``video``, ``audio`` and ``output`` per
job, plus any run option of the command line by its long name (``steps``, ``seed``, ``guidance``, ``face``, ...;
the command line's own values are the defaults). Relative paths are taken from the jobs file's folder.

Every finished job appends one record to the manifest (JSON Lines; default: beside the jobs file): status (done or
failed), frames, seconds, frames without a face, and the error sentence of a failed job. A failing job never stops
the others. Running the same command again skips every job whose output is complete (a done record and the file with
that many frames) and redoes the rest, so an interrupted batch loses at most the job in flight.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

JOB_FIELDS = ("video", "audio", "output")


class JobsFileError(ValueError):
    """The jobs file cannot be read as jobs."""

    __module__ = "latentsync"  # its name in error reports


@dataclass
class Job:
    index: int  # its row in the jobs file, from 1
    video: Path
    audio: Path
    output: Path
    options: dict = field(default_factory=dict)  # per-job values, by the command line's option names


def read_jobs(path: str | Path, option_names: set[str]) -> list[Job]:
    """The jobs of a CSV or JSON Lines file; one sentence naming the row when a row is unusable."""
    path = Path(path)
    if not path.is_file():
        raise JobsFileError(f"jobs file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise JobsFileError(f"{path} line {number} is not JSON ({error.msg})") from None
    else:
        rows = list(csv.DictReader(text.splitlines()))
    jobs = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise JobsFileError(f"{path} job {number} is not an object with video, audio and output")
        missing = [name for name in JOB_FIELDS if not str(row.get(name) or "").strip()]
        if missing:
            raise JobsFileError(f"{path} job {number} has no {', '.join(missing)}")
        unknown = sorted(set(row) - set(JOB_FIELDS) - option_names)
        if unknown:
            raise JobsFileError(f"{path} job {number} has unknown columns {', '.join(unknown)}: use the command "
                                f"line's option names ({', '.join(sorted(option_names))})")
        paths = [(path.parent / str(row[name]).strip()).resolve() for name in JOB_FIELDS]  # workers run elsewhere
        options = {name: value for name, value in row.items() if name not in JOB_FIELDS and value not in ("", None)}
        jobs.append(Job(number, *paths, options=options))
    return jobs


def manifest_path(jobs_file: str | Path) -> Path:
    jobs_file = Path(jobs_file)
    return jobs_file.with_name(jobs_file.stem + ".manifest.jsonl")


def completed(manifest: Path) -> dict[str, dict]:
    """Output path -> its last done record, from a manifest a run wrote before (none if there is no manifest)."""
    done = {}
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: that job was in flight
            if record.get("status") == "done":
                done[record["output"]] = record
    return done


def is_complete(job: Job, record: dict | None) -> bool:
    """A done record for the same inputs, and the output file there with that many frames."""
    from .video import MediaError, count_frames

    if record is None or record.get("video") != str(job.video) or record.get("audio") != str(job.audio):
        return False
    try:
        return job.output.is_file() and count_frames(job.output) == record.get("frames")
    except MediaError:
        return False


def job_record(job: Job, **fields) -> dict:
    """A manifest record: which job (its row, inputs and output) and what became of it."""
    return {"job": job.index, "video": str(job.video), "audio": str(job.audio), "output": str(job.output), **fields}


def append_record(manifest: Path, record: dict) -> None:
    """One line, flushed to disk before the next job starts (a killed run keeps every finished record)."""
    with open(manifest, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class JobRunner:
    """Runs jobs with the models loaded once per version: in this process, or as a Ray actor on a worker.

    ``load_models(args)`` and ``pipeline_options(args)`` come from the command line (one place for both)."""

    def __init__(self, load_models, pipeline_options, progress=None):
        self.load_models, self.pipeline_options, self.progress = load_models, pipeline_options, progress
        self.models: dict = {}

    def record(self, job: Job, args) -> dict:
        """The job run to its manifest record: done with its figures, or failed with its one sentence."""
        from .video import video_encoder

        started = time.perf_counter()
        try:
            pipeline = self._pipeline(job, args)
            job.output.parent.mkdir(parents=True, exist_ok=True)
            result = pipeline.run(job.video, job.audio, job.output, progress=self.progress,
                                  encoder=video_encoder(args.codec))
        except Exception as error:  # one job's failure is its record, never the batch's end
            return job_record(job, status="failed", seconds=round(time.perf_counter() - started, 3),
                              error=sentence(error))
        return job_record(job, status="done", frames=result.num_frames,
                          seconds=round(time.perf_counter() - started, 3),
                          frames_without_face=result.frames_without_face)

    def frames_to_track(self, job: Job, args) -> int:
        """How many frames the job's face track covers (``--split`` shares their detection among workers)."""
        return self._pipeline(job, args).frames_to_track(job.video, job.audio)

    def detect_faces(self, job: Job, args, start: int, stop: int):
        """The detections of frames start .. stop - 1 of the job's video."""
        return self._pipeline(job, args).detect_faces(job.video, start, stop)

    def plan_split(self, job: Job, args, anchors=None):
        """The job's whole-clip face track and batch sizes, to cut it into segments (``--split``)."""
        return self._pipeline(job, args).plan_split(job.video, job.audio, progress=self.progress, anchors=anchors)

    def segment(self, job: Job, args, segment, path: Path) -> tuple[int, int]:
        """One segment of the job written to ``path`` (video only, the job's codec): (frames, without a face)."""
        from .video import video_encoder

        result = self._pipeline(job, args).run(job.video, job.audio, path, segment=segment, progress=self.progress,
                                               encoder=video_encoder(args.codec))
        return result.num_frames, result.frames_without_face

    def _pipeline(self, job: Job, args):
        from .pipeline import LipSyncPipeline

        for name in ("video", "audio"):
            if not getattr(job, name).is_file():
                raise FileNotFoundError(f"{name} file not found: {getattr(job, name)}")
        if args.resolution not in self.models:
            self.models[args.resolution] = self.load_models(args, self.progress)
        return LipSyncPipeline(self.models[args.resolution], self.pipeline_options(args))


def sentence(error: BaseException) -> str:
    """An error as the manifest records it: its type and its own sentence (a Ray task error's cause, without the
    remote traceback)."""
    error = getattr(error, "cause", None) or error
    return f"{type(error).__name__}: {error}"


def pending_jobs(jobs: list[Job], manifest: Path) -> list[Job]:
    """The jobs whose output is not complete yet (a rerun redoes exactly these)."""
    done_before = completed(manifest)
    return [job for job in jobs if not is_complete(job, done_before.get(str(job.output)))]


def run_jobs(jobs: list[Job], settings: dict, manifest: Path, runner: JobRunner, announce=None) -> dict[str, int]:
    """Run every job not complete yet, one after another, in this process; counts by status."""
    todo = pending_jobs(jobs, manifest)
    counts = {"done": 0, "skipped": len(jobs) - len(todo), "failed": 0}
    for position, job in enumerate(todo, 1):
        if announce is not None:
            announce(job, position, len(todo))
        record = runner.record(job, settings[job.index])
        append_record(manifest, record)
        counts[record["status"]] += 1
    return counts


def run_jobs_on_ray(jobs: list[Job], settings: dict, manifest: Path, runner_args: tuple, address: str | None,
                    workers: int | None, announce=None, split: bool = False) -> dict[str, int]:
    """The same on a Ray cluster (a local one when ``address`` is None): one actor per GPU, or per CPU slot when
    there is none (``workers`` overrides the count), each loading the models once and taking the next job as it
    frees. The driver writes the manifest; a lost worker costs the job it was running (recorded as failed).

    ``split``: one job at a time, each cut into one segment per worker (``run_split_job``)."""
    try:
        import ray
        from ray.exceptions import RayActorError
    except ImportError:
        raise RuntimeError("Ray is not installed: pip install -r requirements-ray.txt (or run without --ray)") from None

    todo = pending_jobs(jobs, manifest)
    counts = {"done": 0, "skipped": len(jobs) - len(todo), "failed": 0}
    if not todo:
        return counts
    # the library travels with the jobs: workers need not have this checkout on their path
    init = {"runtime_env": {"py_modules": [str(Path(__file__).resolve().parent)],
                            "env_vars": {k: v for k, v in os.environ.items() if k.startswith(("LATENTSYNC_", "HF_"))}},
            "include_dashboard": False, "log_to_driver": False}
    ray.init(address=address, **init) if address else ray.init(num_cpus=workers, **init)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = workers or gpus or int(resources.get("CPU", 1))
        actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(JobRunner)
        free = [actor.remote(*runner_args) for _ in range(count)]
        queue, running = list(todo), {}

        def begin(job: Job) -> None:
            if announce is not None:
                announce(job, len(todo) - len(queue), len(todo))

        def finish(record: dict) -> None:
            append_record(manifest, record)
            counts[record["status"]] += 1

        while split and queue and free:  # one job at a time over every worker
            job = queue.pop(0)
            begin(job)
            finish(run_split_job(ray, job, settings[job.index], free))
        while not split and (queue or running):  # whole jobs, each to the next free worker
            while free and queue:
                job = queue.pop(0)
                begin(job)
                worker = free.pop()
                running[worker.record.remote(job, settings[job.index])] = (job, worker)
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1)
            job, worker = running.pop(ready[0])
            try:
                record = ray.get(ready[0])
                free.append(worker)
            except RayActorError as error:  # the worker died (killed, its node lost): its job failed
                record = job_record(job, status="failed", error=f"the Ray worker running it was lost "
                                                                 f"({type(error).__name__}); run again to redo it")
            finish(record)
        for job in queue:  # every worker was lost: the rest waits for the next run
            finish(job_record(job, status="failed", error="no Ray worker left"))
    finally:
        ray.shutdown()
    return counts


def run_split_job(ray, job: Job, args, workers: list) -> dict:
    """One job over several Ray workers, equal frame for frame to a run on one. First the face track of the whole
    clip (small): with the default face choice every worker detects a part of the frames and one smooths them all
    in order; otherwise one worker detects in order. Then each worker makes one segment (cut at a multiple of the
    run's batch of frames, its generator replayed to the segment's start) and encodes it; the driver joins the
    segments without re-encoding and muxes the audio once. The segments live in a hidden folder beside the output,
    removed whatever happens; workers lost on the way are dropped from ``workers``."""
    import numpy as np

    from .video import join_videos

    started = time.perf_counter()
    parts = None
    try:
        anchors = None
        if args.face == 0 and len(workers) > 1:
            count = _gather(ray, [(workers[0], workers[0].frames_to_track.remote(job, args))], workers)[0]
            cuts = [round(k * count / len(workers)) for k in range(len(workers) + 1)]
            anchors = np.concatenate(_gather(ray, [(worker, worker.detect_faces.remote(job, args, a, b))
                                                   for worker, a, b in zip(workers, cuts, cuts[1:]) if b > a], workers))
        plan = _gather(ray, [(workers[0], workers[0].plan_split.remote(job, args, anchors))], workers)[0]
        segments = plan.segments(len(workers))
        job.output.parent.mkdir(parents=True, exist_ok=True)
        parts = Path(tempfile.mkdtemp(prefix=f".{job.output.name}.parts-", dir=job.output.parent))
        paths = [parts / f"{k:04d}{job.output.suffix or '.mp4'}" for k in range(len(segments))]
        results = _gather(ray, [(worker, worker.segment.remote(job, args, segment, path))
                                for worker, segment, path in zip(workers, segments, paths)], workers)
        join_videos(paths, job.output, float(plan.num_frames / plan.fps), audio=job.audio)
    except Exception as error:
        return job_record(job, status="failed", seconds=round(time.perf_counter() - started, 3),
                          error=sentence(error))
    finally:
        if parts is not None:
            shutil.rmtree(parts, ignore_errors=True)
    return job_record(job, status="done", frames=sum(r[0] for r in results), segments=len(segments),
                      seconds=round(time.perf_counter() - started, 3),
                      frames_without_face=sum(r[1] for r in results))


def _gather(ray, calls: list[tuple], workers: list) -> list:
    """The results of (worker, call) pairs in order, after every call has ended (so none still writes when this
    returns); a lost worker is dropped from ``workers``; the first failure is raised then."""
    from ray.exceptions import RayActorError

    results, failure = [], None
    for worker, call in calls:
        try:
            results.append(ray.get(call))
        except RayActorError as error:  # killed, or its node lost
            if worker in workers:
                workers.remove(worker)
            failure = failure or RuntimeError(f"a Ray worker of the job was lost ({type(error).__name__}); run "
                                              "again to redo it")
        except Exception as error:
            failure = failure or error
    if failure is not None:
        raise failure
    return results
