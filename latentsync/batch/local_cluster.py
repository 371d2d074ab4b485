"""What a batch's local Ray cluster started, written down so that the next batch ends it when its driver was killed.

``ray.shutdown()`` ends a local cluster, but a driver killed with SIGKILL never calls it, and some of the cluster's
processes (its dashboard and runtime-env agents) outlive it. A driver records its cluster's processes (pid and start
time, so a reused pid is never taken for one of them) and session folder in the user's cache folder; it removes the
record when it shuts the cluster down. The next batch ends the processes of every record whose driver is gone and
removes their session folders.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import psutil

from ..paths import user_cache

log = logging.getLogger("latentsync.batch")


def records_folder() -> Path:
    return user_cache() / "ray-clusters"


def remember(session: str | None) -> Path:
    """Record the processes this driver started (its descendants now) and the cluster's session folder."""
    me = psutil.Process()
    processes = [(child.pid, child.create_time()) for child in me.children(recursive=True)]
    record = {"driver": [me.pid, me.create_time()], "processes": processes, "session": session}
    path = records_folder() / f"{me.pid}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    except OSError as error:  # a read-only home: nothing to reap next time, the run goes on
        log.warning("could not record the local Ray cluster's processes in %s: %s", path, error)
    return path


def forget(path: Path) -> None:
    path.unlink(missing_ok=True)


def reap() -> int:
    """End the processes of local clusters whose driver is gone and remove their session folders; how many ended."""
    ended = 0
    for path in sorted(records_folder().glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if _alive(*record["driver"]):
            continue
        alive = [process for pid, started in record["processes"] if (process := _alive(pid, started))]
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)
        ended += len(alive)
        if record.get("session"):
            shutil.rmtree(record["session"], ignore_errors=True)
        path.unlink(missing_ok=True)
    if ended:
        log.info("ended %d process(es) of a local Ray cluster whose batch was killed", ended)
    return ended


def _alive(pid: int, started: float) -> psutil.Process | None:
    """The process ``pid`` if it is the one that started at ``started`` and has not ended."""
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > 0.01 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.Error:
        return None
