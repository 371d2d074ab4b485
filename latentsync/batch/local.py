"""The jobs of a batch run one after another in this process: each checked, run and recorded."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import sentence_of
from ..tempfiles import output_prefix, remove_stale
from .jobs import Job
from .manifest import Manifest, is_complete, job_record


def check_job(job: Job) -> None:
    """What can be known about a job before any model loads: its inputs readable (the audio with sound), its
    output's folder writable. Raises the sentence its record keeps."""
    from ..paths import writable_folder
    from ..video import check_audio_file, probe_video

    _require_inputs(job)
    info = probe_video(job.video)
    if job.lines:
        from ..scene import check_lines

        check_lines(list(job.lines), int(info.num_frames), info.fps)
    else:
        check_audio_file(job.audio)
    writable_folder(job.output)


def _require_inputs(job: Job) -> None:
    for name, source in job.inputs.items():
        if not source.is_file():
            raise FileNotFoundError(f"{name} file not found: {source}")


def remove_leftovers(job: Job, wait: float = 0.0) -> None:
    """Remove what killed runs left beside the job's output (hidden partial files, a split's parts folder)."""
    remove_stale(job.output.parent, output_prefix(job.output), wait=wait)


class JobRunner:
    """Runs jobs with the models loaded once per model choice: in this process, or as a Ray actor on a worker."""

    def __init__(self, progress=None):
        self.progress = progress
        self.models: dict = {}

    def record(self, job: Job) -> dict:
        """The job run to its manifest record: done with its figures, or failed with its one sentence."""
        started = time.perf_counter()
        try:
            pipeline = self._pipeline(job)
            job.output.parent.mkdir(parents=True, exist_ok=True)
            result = pipeline.run(job.video, job.speech, job.output, progress=self.progress)
        except Exception as error:  # one job's failure is its record, never the batch's end
            return job_record(job, status="failed", seconds=_since(started), error=sentence(error))
        return job_record(job, status="done", frames=result.output_frames, seconds=_since(started),
                          frames_without_face=result.frames_without_face, settings=job.settings())

    def frames_to_track(self, job: Job) -> int:
        """How many frames the job's face track covers (``--split`` shares their detection among workers)."""
        from ..split import frames_to_track

        _require_inputs(job)
        return frames_to_track(job.options, job.video, job.audio)

    def detect_faces(self, job: Job, start: int, stop: int):
        """The detections of frames start .. stop - 1 of the job's video."""
        return self._pipeline(job).detect_faces(job.video, start, stop)

    def plan_split(self, job: Job, anchors=None):
        """The job's whole-clip face track and batch sizes, to cut it into segments (``--split``)."""
        return self._pipeline(job).plan_split(job.video, job.audio, progress=self.progress, anchors=anchors)

    def segment(self, job: Job, segment, path: Path) -> tuple[int, int]:
        """One segment of the job written to ``path`` (video only, the job's codec): (frames, without a face)."""
        result = self._pipeline(job).run(job.video, job.audio, path, segment=segment, progress=self.progress)
        return result.output_frames, result.frames_without_face

    def _pipeline(self, job: Job):
        from ..pipeline import LipSyncPipeline

        _require_inputs(job)  # again on the worker: it may see other files than the driver
        if job.models not in self.models:
            self.models[job.models] = job.models.load(self.progress)
        return LipSyncPipeline(self.models[job.models], job.options)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def sentence(error: BaseException) -> str:
    """An error as the manifest records it: its type and its own sentence (a Ray task error's cause, without the
    remote traceback)."""
    error = getattr(error, "cause", None) or error
    return f"{type(error).__name__}: {sentence_of(error)}"


def start_jobs(jobs: list[Job], manifest: Manifest) -> tuple[list[Job], dict[str, int]]:
    """The jobs to run now and the counts so far: complete jobs are skipped (a rerun redoes exactly the rest), jobs
    whose inputs or output folder are unusable are recorded as failed before any model loads, and what killed runs
    left beside the outputs is removed."""
    done_before = manifest.done_records()
    todo = [job for job in jobs if not is_complete(job, done_before.get(str(job.output)))]
    counts = {"done": 0, "skipped": len(jobs) - len(todo), "failed": 0}
    ready = []
    for job in todo:
        try:
            check_job(job)
        except (OSError, ValueError) as error:  # MediaError is a ValueError
            manifest.append(job_record(job, status="failed", seconds=0.0, error=sentence(error)))
            counts["failed"] += 1
            continue
        remove_leftovers(job)
        ready.append(job)
    return ready, counts


def run_jobs(jobs: list[Job], manifest: Manifest, runner: JobRunner, announce=None) -> dict[str, int]:
    """Run every job not complete yet, one after another, in this process; counts by status."""
    todo, counts = start_jobs(jobs, manifest)
    for position, job in enumerate(todo, 1):
        if announce is not None:
            announce(job, position, len(todo))
        record = runner.record(job)
        manifest.append(record)
        counts[record["status"]] += 1
    return counts
