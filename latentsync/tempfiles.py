"""Temporary files and folders named after the process that owns them, so that a later run can remove what a killed
one left behind (kill -9, a lost machine) without ever touching the files of a run that is still going.

Names are ``<prefix><pid>-<8 hex><rest>``: beside an output ``out.mp4`` the prefix is ``.out.mp4.`` (hidden
partial encodes, mux files, the parts folder of a split job); in the temp folder it is ``latentsync-`` (disk
caches, spilled audio and video). An entry is stale when no process with its pid runs on this machine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import psutil

log = logging.getLogger("latentsync.tempfiles")

TEMP_PREFIX = "latentsync-"  # in the system's (or the caller's) temp folder
SHORT_NAME = 80  # output names longer than this (in bytes) are shortened in their temporary entries' names
_OWNER = re.compile(r"(\d+)-[0-9a-f]{8}(?![0-9a-f])")


def owned_name(prefix: str, suffix: str = "") -> str:
    """A fresh name ``<prefix><this pid>-<random><suffix>``."""
    return f"{prefix}{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def output_prefix(output: str | Path) -> str:
    """The prefix of the temporary entries that belong to ``output`` (they lie in its folder): ``.<name>.``, a long
    name cut and told apart by its hash, so a temporary name stays far below the disk's 255 bytes."""
    name = Path(output).name
    if len(name.encode()) > SHORT_NAME:
        name = f"{name[:SHORT_NAME // 2]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return f".{name}."


def owned_temp_dir(kind: str, folder: str | Path | None = None) -> Path:
    """A new private folder ``latentsync-<pid>-<random>.<kind>`` in ``folder`` (default: the system's temp)."""
    parent = Path(folder or tempfile.gettempdir())
    while True:
        path = parent / owned_name(TEMP_PREFIX, f".{kind}")
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue


def remove_stale(folder: str | Path, prefix: str, wait: float = 0.0, ours: bool = False) -> list[Path]:
    """Remove the entries of ``folder`` named ``prefix`` + an owner whose process no longer runs; the removed
    paths. ``wait``: seconds to give owners that are ending (a shut-down worker) before they count as running.
    ``ours``: this process's own entries too (a caller that knows none of them is in use any more)."""
    folder = Path(folder)
    try:
        entries = [entry for entry in folder.iterdir() if entry.name.startswith(prefix)]
    except OSError:  # no such folder, or not readable: nothing of ours there
        return []
    owned = [(entry, int(match.group(1))) for entry in entries
             if (match := _OWNER.match(entry.name, len(prefix))) is not None]
    deadline = time.monotonic() + wait
    removed = []
    for entry, pid in owned:
        if not (ours and pid == os.getpid()) and _runs_until(pid, deadline):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("could not remove %s, left by an earlier run: %s", entry, error)
            continue
        removed.append(entry)
    if removed:
        log.info("removed %d temporary file(s) left by an earlier run in %s", len(removed), folder)
    return removed


def _runs_until(pid: int, deadline: float) -> bool:
    """Whether process ``pid`` still runs at ``deadline`` (checked at once when it has passed)."""
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _running(pid)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # AccessDenied: it runs, as another user
        return True
