"""``python -m latentsync batch JOBS``: many lip-sync jobs in this process, models loaded once, resumable.

JOBS is a CSV file (a header row; UTF-8, with or without Excel's byte-order mark, or UTF-16) or JSON Lines (one
object per line; a .json file may also hold one array of objects) with ``video``, ``audio`` and ``output`` per job,
plus any run option of the command line by its long name (``steps``, ``seed``, ``guidance``, ``face``, ...; the
command line's own values are the defaults). Relative paths are taken from the jobs file's folder. The whole file is
checked before any work: a wrong value, two jobs writing one output, or an output that is some job's input is one
sentence naming the line and the column.

Every finished job appends one record to the manifest (JSON Lines; default: beside the jobs file): status (done or
failed), frames, seconds, frames without a face, the error sentence of a failed job, and the settings that made the
output. A failing job never stops the others. Running the same command again skips every job whose output is
complete (a done record with the job's current settings and the file with that many frames) and redoes the rest,
so an interrupted batch loses at most the job in flight, and an edited row is redone. One batch at a time holds a
manifest: a second command on the same jobs stops at once and says so.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .paths import check_not_an_input
from .tempfiles import output_prefix, owned_name, remove_stale

JOB_FIELDS = ("video", "audio", "output")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
# the run options that decide an output's pixels and file (with the model version): a done record made with other
# values is stale. attention, optimization_level, memory_mode, vram_fraction and disk_cache change only speed and
# memory (the same result within float tolerance), so changing them redoes nothing.
OUTPUT_SETTINGS = ("resolution", "codec", "steps", "seed", "guidance_scale", "lip_focus", "deepcache_interval", "face",
                   "detector", "precision", "checkpoints", "unet_config")


class JobsFileError(ValueError):
    """The jobs file cannot be read as jobs."""

    __module__ = "latentsync"  # its name in error reports


class ManifestError(RuntimeError):
    """The manifest cannot be written, or another batch holds it."""

    __module__ = "latentsync"


@dataclass
class Job:
    index: int  # its place among the jobs, from 1 (the manifest's "job")
    video: Path
    audio: Path
    output: Path
    options: dict = field(default_factory=dict)  # per-job values, by the command line's option names
    where: str = ""  # where it is written, for error sentences: "jobs.csv line 3"


def read_jobs(path: str | Path, option_names: set[str]) -> list[Job]:
    """The jobs of a CSV or JSON Lines file; one sentence naming the line (and the column) when a row is unusable,
    when two jobs write one output, or when a job's output is a job's input."""
    path = Path(path)
    if not path.is_file():
        raise JobsFileError(f"jobs file not found: {path}")
    text = _decoded(path)
    rows = _json_rows(path, text) if path.suffix.lower() in JSON_SUFFIXES else _csv_rows(path, text)
    if not rows:
        raise JobsFileError(f"{path} has no jobs: give a header row (video,audio,output,...) and one row per job")
    jobs = []
    for index, (where, row) in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise JobsFileError(f"{where} is not an object with video, audio and output")
        row = {str(name).strip(): value for name, value in row.items()}
        for name, value in row.items():
            if isinstance(value, (list, dict)):
                raise JobsFileError(f"{where}, column {name}: a {type(value).__name__} is not a value; give one "
                                    "number or word")
        missing = [name for name in JOB_FIELDS if not str(row.get(name) or "").strip()]
        if missing:
            raise JobsFileError(f"{where} has no {', '.join(missing)}")
        unknown = sorted(set(row) - set(JOB_FIELDS) - option_names)
        if unknown:
            raise JobsFileError(f"{where} has unknown columns {', '.join(unknown)}: use the command line's option "
                                f"names ({', '.join(sorted(option_names))})")
        paths = [(path.parent / str(row[name]).strip()).resolve() for name in JOB_FIELDS]  # workers run elsewhere
        options = {name: value for name, value in row.items()
                   if name not in JOB_FIELDS and value is not None and str(value).strip() != ""}
        jobs.append(Job(index, *paths, options=options, where=where))
    _check_outputs(jobs)
    return jobs


def _decoded(path: Path) -> str:
    """The file's text: UTF-16 by its byte-order mark, else UTF-8 (Excel's mark dropped)."""
    data = path.read_bytes()
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise JobsFileError(f"{path} is not {encoding.upper().replace('-SIG', '')} text (byte {error.start}): save it "
                            "as UTF-8 (Excel: CSV UTF-8)") from None


def _json_rows(path: Path, text: str) -> list[tuple[str, object]]:
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):  # one JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise JobsFileError(f"{path.name} line {error.lineno} is not JSON ({error.msg})") from None
        return [(f"{path.name} job {number}", item) for number, item in enumerate(items, 1)]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"{path.name} line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise JobsFileError(f"{path.name} line {number} is not JSON ({error.msg})") from None
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    rows = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue  # a blank line (or a row of empty cells, as spreadsheets write)
        if header is None:
            header = [cell.strip() for cell in cells]
            named = [name for name in header if name]
            twice = sorted({name for name in named if named.count(name) > 1})
            if twice:
                raise JobsFileError(f"{path.name} line {reader.line_num}: the header names {', '.join(twice)} more "
                                    "than once; keep one column of each")
            continue
        where = f"{path.name} line {reader.line_num}"
        if len(cells) > len(header) and any(cell.strip() for cell in cells[len(header):]):
            raise JobsFileError(f"{where} has {len(cells)} cells and the header {len(header)}: quote values that "
                                "hold a comma")
        row = {name: cell for name, cell in zip(header, cells) if name}
        unnamed = [cell for name, cell in zip(header, cells) if not name and cell.strip()]
        if unnamed:
            raise JobsFileError(f"{where} has a value under a header cell with no name: name that column")
        rows.append((where, row))
    return rows


def _check_outputs(jobs: list[Job]) -> None:
    """No two jobs write one file, and no job writes a file that a job reads (paths are resolved already; files
    that exist are also compared as inodes: hard links, case-insensitive folders)."""
    writers: dict = {}
    for job in jobs:
        check_not_an_input(job.output, {"video": job.video, "audio": job.audio}, f"{job.where}: output")
        earlier = writers.setdefault(_file_key(job.output), job)
        if earlier is not job:
            raise JobsFileError(f"{earlier.where} and {job.where} both write {job.output}: the second would replace "
                                "the first; give each job its own output")
    for reader in jobs:
        for name in ("video", "audio"):
            writer = writers.get(_file_key(getattr(reader, name)))
            if writer is not None:
                raise JobsFileError(f"{writer.where} writes {writer.output}, which {reader.where} reads as its {name}: "
                                    "give the output another name")


def _file_key(path: Path):
    try:
        stat = path.stat()
    except OSError:  # not there yet: its resolved path names it
        return path
    return stat.st_dev, stat.st_ino


def output_settings(args) -> dict:
    """What makes a job's output (``OUTPUT_SETTINGS``), as its manifest record keeps it."""
    from .cli import RESOLUTION_TO_VERSION

    settings = {name: getattr(args, name) for name in OUTPUT_SETTINGS}
    settings["version"] = RESOLUTION_TO_VERSION[str(args.resolution)]
    return settings


def manifest_path(jobs_file: str | Path) -> Path:
    jobs_file = Path(jobs_file)
    return jobs_file.with_name(jobs_file.stem + ".manifest.jsonl")


class Manifest:
    """The JSON Lines record of a batch's jobs, held by one batch at a time (an exclusive lock on the file).

    ``open()`` proves the file writable before any work. Reading skips (and counts) every line that is not a
    record: a line cut short by a kill, text that is not UTF-8, JSON that is not a job's record. Each record starts
    on a fresh line and is on disk before the next job starts; a record that cannot be written (a full disk) is
    kept and written with the next one, and ``unwritten`` says what is still missing at the end."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.unreadable = 0  # lines of the file that are not records (see ``done_records``)
        self.unwritten: list[dict] = []
        self._handle = None

    def open(self) -> "Manifest":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a+b", buffering=0)  # a failed write leaves nothing pending
        except OSError as error:
            raise ManifestError(f"cannot write the manifest {self.path} ({error.strerror}): choose another with "
                                "--manifest, or make its folder writable") from None
        if not _try_lock(self._handle):
            self.close()
            raise ManifestError(f"another batch command is running the jobs of the manifest {self.path}: wait for it "
                                "to finish (its progress is in that file), or give this one another --manifest")
        return self

    def __enter__(self) -> "Manifest":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # the lock goes with it
            self._handle = None

    def done_records(self) -> dict[str, dict]:
        """Output path -> its last done record."""
        done, self.unreadable = {}, 0
        self._handle.seek(0)
        for line in self._handle.read().split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if not (isinstance(record, dict) and isinstance(record.get("output"), str)
                    and record.get("status") in ("done", "failed")):
                self.unreadable += 1
                continue
            if record["status"] == "done":
                done[record["output"]] = record
        return done

    def append(self, record: dict) -> None:
        """Write ``record`` (and any earlier one a full disk held back), flushed to the disk."""
        pending = [*self.unwritten, record]
        handle = self._handle
        try:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # the last record was cut short: this one starts on its own line
                    handle.write(b"\n")
            handle.write(b"".join(json.dumps(item).encode("utf-8") + b"\n" for item in pending))
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            self.unwritten = pending
            return
        self.unwritten = []


def _try_lock(handle) -> bool:
    """An exclusive lock on the open file, without waiting; True when this process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def is_complete(job: Job, record: dict | None, settings: dict) -> bool:
    """A done record for the same inputs and settings, and the output file there with that many frames."""
    from .video import MediaError, count_frames

    if record is None or record.get("video") != str(job.video) or record.get("audio") != str(job.audio):
        return False
    if record.get("settings") != settings:  # the row was edited (or the record predates settings): redo it
        return False
    try:
        return job.output.is_file() and count_frames(job.output) == record.get("frames")
    except MediaError:
        return False


def job_record(job: Job, **fields) -> dict:
    """A manifest record: which job (its row, inputs and output) and what became of it."""
    return {"job": job.index, "video": str(job.video), "audio": str(job.audio), "output": str(job.output), **fields}


def check_job(job: Job, args) -> None:
    """What can be known about a job before any model loads: its inputs readable (the audio with sound), its
    output's folder writable. Raises the sentence its record keeps."""
    from .paths import writable_folder
    from .video import check_audio_file, probe_video

    _require_inputs(job)
    probe_video(job.video)
    check_audio_file(job.audio)
    writable_folder(job.output)


def _require_inputs(job: Job) -> None:
    for name in ("video", "audio"):
        if not getattr(job, name).is_file():
            raise FileNotFoundError(f"{name} file not found: {getattr(job, name)}")


def remove_leftovers(job: Job, wait: float = 0.0) -> None:
    """Remove what killed runs left beside the job's output (hidden partial files, a split's parts folder)."""
    remove_stale(job.output.parent, output_prefix(job.output), wait=wait)


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
                          frames_without_face=result.frames_without_face, settings=output_settings(args))

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

        _require_inputs(job)  # again on the worker: it may see other files than the driver
        if args.resolution not in self.models:
            self.models[args.resolution] = self.load_models(args, self.progress)
        return LipSyncPipeline(self.models[args.resolution], self.pipeline_options(args))


def sentence(error: BaseException) -> str:
    """An error as the manifest records it: its type and its own sentence (a Ray task error's cause, without the
    remote traceback)."""
    error = getattr(error, "cause", None) or error
    return f"{type(error).__name__}: {error}"


def start_jobs(jobs: list[Job], settings: dict, manifest: Manifest) -> tuple[list[Job], dict[str, int]]:
    """The jobs to run now and the counts so far: complete jobs are skipped (a rerun redoes exactly the rest), jobs
    whose inputs or output folder are unusable are recorded as failed before any model loads, and what killed runs
    left beside the outputs is removed."""
    done_before = manifest.done_records()
    todo = [job for job in jobs
            if not is_complete(job, done_before.get(str(job.output)), output_settings(settings[job.index]))]
    counts = {"done": 0, "skipped": len(jobs) - len(todo), "failed": 0}
    ready = []
    for job in todo:
        try:
            check_job(job, settings[job.index])
        except (OSError, ValueError) as error:  # MediaError is a ValueError
            manifest.append(job_record(job, status="failed", seconds=0.0, error=sentence(error)))
            counts["failed"] += 1
            continue
        remove_leftovers(job)
        ready.append(job)
    return ready, counts


def run_jobs(jobs: list[Job], settings: dict, manifest: Manifest, runner: JobRunner,
             announce=None) -> dict[str, int]:
    """Run every job not complete yet, one after another, in this process; counts by status."""
    todo, counts = start_jobs(jobs, settings, manifest)
    for position, job in enumerate(todo, 1):
        if announce is not None:
            announce(job, position, len(todo))
        record = runner.record(job, settings[job.index])
        manifest.append(record)
        counts[record["status"]] += 1
    return counts


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """A cluster address that answers: RuntimeError in one sentence within ``timeout`` seconds otherwise (Ray itself
    retries an unreachable address for minutes)."""
    import socket

    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RuntimeError(f"--ray {address}: give the cluster's head as HOST:PORT (as `ray start --head` prints it), "
                           "or no address for a local cluster")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RuntimeError(f"--ray {address}: no Ray cluster answers there ({reason}): start one with `ray start "
                           "--head` on that machine and give the address it prints, or run --ray without an "
                           "address for a local cluster") from None


def run_jobs_on_ray(jobs: list[Job], settings: dict, manifest: Manifest, runner_args: tuple, address: str | None,
                    workers: int | None, announce=None, split: bool = False) -> dict[str, int]:
    """The same on a Ray cluster (a local one when ``address`` is None): one actor per GPU, or per CPU slot when
    there is none (``workers`` overrides the count), each loading the models once and taking the next job as it
    frees. The driver writes the manifest; a lost worker costs the job it was running (recorded as failed).
    Interrupted, the workers are shut down and the partial files of the jobs they ran removed.

    ``split``: one job at a time, each cut into one segment per worker (``run_split_job``)."""
    try:
        import ray
        from ray.exceptions import RayActorError
    except ImportError:
        raise RuntimeError("Ray is not installed: pip install -r requirements-ray.txt (or run without --ray)") from None

    check_ray_address(address)
    todo, counts = start_jobs(jobs, settings, manifest)
    if not todo:
        return counts
    # the library travels with the jobs: workers need not have this checkout on their path
    init = {"runtime_env": {"py_modules": [str(Path(__file__).resolve().parent)],
                            "env_vars": {k: v for k, v in os.environ.items() if k.startswith(("LATENTSYNC_", "HF_"))}},
            "include_dashboard": False, "log_to_driver": False}
    in_flight: list[Job] = []
    handlers = _signal_handlers()
    try:
        ray.init(address=address, **init) if address else ray.init(num_cpus=workers, **init)
        _restore_signal_handlers(handlers)  # Ray's own SIGTERM handler would end the driver before it cleans up
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = workers or gpus or int(resources.get("CPU", 1))
        actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(JobRunner)
        free = [actor.remote(*runner_args) for _ in range(count)]
        queue, running = list(todo), {}

        def begin(job: Job) -> None:
            in_flight.append(job)
            if announce is not None:
                announce(job, len(todo) - len(queue), len(todo))

        def finish(job: Job, record: dict) -> None:
            in_flight.remove(job)
            manifest.append(record)
            counts[record["status"]] += 1

        while split and queue and free:  # one job at a time over every worker
            job = queue.pop(0)
            begin(job)
            finish(job, run_split_job(ray, job, settings[job.index], free))
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
            finish(job, record)
        for job in queue:  # every worker was lost: the rest waits for the next run
            manifest.append(job_record(job, status="failed", error="no Ray worker left"))
            counts["failed"] += 1
    finally:
        ray.shutdown()
        for job in in_flight:  # interrupted: the workers are gone now, and so may be what they were writing
            remove_stale(job.output.parent, output_prefix(job.output), wait=10.0, ours=True)
    return counts


def _signal_handlers() -> dict:
    """The process's SIGTERM and SIGINT handlers (none off the main thread, where they cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(handlers: dict) -> None:
    for number, handler in handlers.items():
        if handler is not None:
            signal.signal(number, handler)


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
        parts = job.output.parent / owned_name(output_prefix(job.output), ".parts")  # a killed driver's: stale
        parts.mkdir()
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
                      frames_without_face=sum(r[1] for r in results), settings=output_settings(args))


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
