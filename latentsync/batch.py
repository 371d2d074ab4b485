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
        paths = [path.parent / str(row[name]).strip() for name in JOB_FIELDS]
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


def append_record(manifest: Path, record: dict) -> None:
    """One line, flushed to disk before the next job starts (a killed run keeps every finished record)."""
    with open(manifest, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def run_jobs(jobs: list[Job], manifest: Path, run_one, progress=None) -> dict[str, int]:
    """Run every job not complete yet with ``run_one(job) -> RunResult``; returns counts by status."""
    done_before = completed(manifest)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for position, job in enumerate(jobs, 1):
        if progress is not None:
            progress(job, position, len(jobs))
        if is_complete(job, done_before.get(str(job.output))):
            counts["skipped"] += 1
            continue
        record = {"job": job.index, "video": str(job.video), "audio": str(job.audio), "output": str(job.output)}
        started = time.perf_counter()
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
            result = run_one(job)
        except Exception as error:  # one job's failure is its record, never the batch's end
            record.update(status="failed", seconds=round(time.perf_counter() - started, 3),
                          error=f"{type(error).__name__}: {error}")
            counts["failed"] += 1
        else:
            record.update(status="done", frames=result.num_frames, seconds=round(time.perf_counter() - started, 3),
                          frames_without_face=result.frames_without_face)
            counts["done"] += 1
        append_record(manifest, record)
    return counts
