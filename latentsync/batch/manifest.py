"""The manifest of a batch: one JSON Lines record per finished job, held by one batch at a time."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ManifestError
from .jobs import Job

RECORD_START = b'{"job": '  # how every record's line begins (``job_record``)


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
        self.records = 0  # lines that are
        self.foreign = 0  # unreadable lines that are not even the start of a record
        self.unwritten: list[dict] = []
        self.failures: list[dict] = []  # the failed records this batch appended
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
        self.done_records()
        if self.foreign and not self.records:  # (a record cut short by a kill is not foreign)
            self.close()
            raise ManifestError(f"{self.path} is not a batch manifest (none of its lines is a job record), and records "
                                "would be appended to it: give --manifest a new file name, or the manifest a batch "
                                "wrote")
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
        done, self.unreadable, self.records, self.foreign = {}, 0, 0, 0
        self._handle.seek(0)
        for line in self._handle.read().split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if not _is_record(record):
                self.unreadable += 1
                self.foreign += not line.startswith(RECORD_START)
                continue
            self.records += 1
            if record["status"] == "done":
                done[record["output"]] = record
        return done

    def append(self, record: dict) -> None:
        """Write ``record`` (and any earlier one a full disk held back), flushed to the disk."""
        if record.get("status") == "failed":
            self.failures.append(record)
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


def _is_record(record) -> bool:
    return isinstance(record, dict) and isinstance(record.get("output"), str) and record.get("status") in (
        "done", "failed")


def check_manifest_path(path: str | Path, jobs_file: str | Path, jobs: list[Job]) -> None:
    """Refuse a manifest that is the jobs file or a job's input or output (records would be appended to it): the
    same path after links, or the same file."""
    from ..paths import same_file

    if same_file(path, jobs_file):
        raise ManifestError(f"--manifest {path} is the jobs file: records would be appended to it; give the manifest "
                            "its own name (the default is beside the jobs file)")
    for job in jobs:
        for name, used in {**job.inputs, "output": job.output}.items():
            if same_file(path, used):
                raise ManifestError(f"--manifest {path} is the {name} of {job.where}: records would be appended to "
                                    "it; give the manifest its own name")


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


def is_complete(job: Job, record: dict | None) -> bool:
    """A done record for the same inputs and settings, and the output file there with that many frames."""
    from ..video import MediaError, count_frames

    if record is None or record.get("video") != str(job.video) or record.get("audio") != str(job.audio):
        return False
    if not same_settings(record.get("settings"), job.settings()):  # the row was edited: redo it
        return False
    try:
        if record.get("bytes") not in (None, job.output.stat().st_size):  # cut short (or replaced) since
            return False
        return count_frames(job.output) == record.get("frames")  # the container's header, not a decode
    except (OSError, MediaError):  # not there, or no longer a video
        return False


def same_settings(recorded: dict | None, settings: dict) -> bool:
    """Whether a record's settings are ``settings``; an option the record predates counts as its default (which is
    what made that output), so a new option does not redo finished work."""
    from ..options import LOAD, RUN

    if recorded is None or set(recorded) - set(settings):
        return False
    defaults = {option.field: option.default for option in (*LOAD.values(), *RUN.values())}
    unknown = object()  # a setting neither recorded nor an option: never the same
    return all(recorded.get(name, defaults.get(name, unknown)) == value for name, value in settings.items())


def job_record(job: Job, **fields) -> dict:
    """A manifest record: which job (its row, inputs and output) and what became of it; a done one also keeps its
    output's size, which a later run checks before it counts the job complete (a file cut short is redone)."""
    if fields.get("status") == "done":
        fields["bytes"] = job.output.stat().st_size
    return {"job": job.index, "video": str(job.video), "audio": str(job.audio), "output": str(job.output),
            "where": job.where, **fields}
