"""``python -m latentsync batch JOBS --ray [ADDRESS] [--split]``: the batch's jobs on a Ray cluster.

``RayWorkers`` holds every Ray call: the cluster started and shut down, one ``JobRunner`` actor per GPU (or CPU
slot), calls gathered with lost workers dropped. Whole jobs go to the next free worker (``run_whole_jobs``); a
split job is cut into one segment per worker (``run_split_job``). The driver writes the manifest.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from ..tempfiles import output_prefix, owned_name, remove_stale
from . import local_cluster
from .jobs import Job
from .local import JobRunner, sentence, start_jobs
from .manifest import Manifest, job_record


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """A cluster address that answers: RuntimeError in one sentence within ``timeout`` seconds otherwise (Ray itself
    retries an unreachable address for minutes)."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RuntimeError(f"--ray {address}: give the cluster's head as HOST:PORT (as `ray start --head` prints it), "
                           "or no address for a local cluster")
    try:
        connection = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RuntimeError(f"--ray {address}: no Ray cluster answers there ({reason}): start one with `ray start "
                           "--head` on that machine and give the address it prints, or run --ray without an "
                           "address for a local cluster") from None
    with connection:
        if not _speaks_grpc(connection):  # Ray itself would retry for half a minute, then raise
            raise RuntimeError(f"--ray {address}: what answers there is not a Ray cluster's head (it does not speak "
                               "gRPC): give the address `ray start --head` printed (its GCS port, 6379 by default), "
                               "or run --ray without an address for a local cluster")


def _speaks_grpc(connection: socket.socket) -> bool:
    """Whether the server answers HTTP/2's client preface with a SETTINGS frame, as Ray's gRPC servers do."""
    try:
        connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        header = b""
        while len(header) < 9:
            chunk = connection.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:
        return False
    return header[3] == 4  # frame type SETTINGS


def runtime_env() -> dict:
    """What the workers get: the whole library (the ``latentsync`` package's folder; workers need not have this
    checkout on their path) and the driver's LATENTSYNC_ and HF_ variables."""
    return {"py_modules": [str(Path(__file__).resolve().parents[1])],
            "env_vars": {k: v for k, v in os.environ.items() if k.startswith(("LATENTSYNC_", "HF_"))}}


class RayWorkers:
    """A Ray cluster (a local one when ``address`` is None) and its JobRunner actors, for a ``with`` block: one per
    GPU, or per CPU slot when there is none (``count`` overrides). Leaving the block shuts Ray down."""

    def __init__(self, address: str | None, count: int | None, quiet: bool = False):
        try:
            import ray
        except ImportError:
            raise RuntimeError("Ray is not installed: pip install -r requirements-ray.txt (or run without "
                               "--ray)") from None
        check_ray_address(address)
        self.ray, self.address, self.count, self.quiet = ray, address, count, quiet
        self.free: list = []  # the workers alive and idle
        self.record = None  # a local cluster's record (``local_cluster``), while it runs

    def __enter__(self) -> "RayWorkers":
        init = {"runtime_env": runtime_env(), "include_dashboard": False, "log_to_driver": False,
                "logging_level": logging.WARNING if self.quiet else logging.INFO}
        handlers = _signal_handlers()
        ray = self.ray
        if not self.address:
            local_cluster.reap()  # what a killed batch's local cluster left running
        try:
            try:
                ray.init(address=self.address, **init) if self.address else ray.init(num_cpus=self.count, **init)
            except ConnectionError as error:  # something answers there, but not a Ray head
                raise RuntimeError(f"--ray {self.address}: what answers there is not a Ray cluster's head "
                                   f"({type(error).__name__}): give the address `ray start --head` printed (its GCS "
                                   "port, 6379 by default), or run --ray without an address for a local "
                                   "cluster") from None
            _restore_signal_handlers(handlers)  # Ray's own SIGTERM handler would end the driver before it cleans up
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(JobRunner)
            self.free = [actor.remote() for _ in range(self.count or gpus or int(resources.get("CPU", 1)))]
            if not self.address:
                ray.get([worker.__ray_ready__.remote() for worker in self.free])  # their processes started
                self.record = local_cluster.remember(_session_folder(ray))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.ray.shutdown()
        if self.record is not None:
            local_cluster.forget(self.record)
            self.record = None

    def gather(self, calls: list[tuple]) -> list:
        """The results of (worker, call) pairs in order, after every call has ended (so none still writes when this
        returns); a lost worker is dropped; the first failure is raised then."""
        from ray.exceptions import RayActorError

        results, failure = [], None
        for worker, call in calls:
            try:
                results.append(self.ray.get(call))
            except RayActorError as error:  # killed, or its node lost
                self._drop(worker)
                failure = failure or RuntimeError(f"a Ray worker of the job was lost ({type(error).__name__}); run "
                                                  "again to redo it")
            except Exception as error:
                failure = failure or error
        if failure is not None:
            raise failure
        return results

    def first_done(self, running: dict) -> tuple:
        """The (job, worker, record) of the first of ``running`` (call -> (job, worker)) to end, removed from it;
        a lost worker's job is failed and the worker dropped, a live one is free again."""
        from ray.exceptions import RayActorError

        ready, _ = self.ray.wait(list(running), num_returns=1)
        job, worker = running.pop(ready[0])
        try:
            record = self.ray.get(ready[0])
            self.free.append(worker)
        except RayActorError as error:  # the worker died (killed, its node lost): its job failed
            record = job_record(job, status="failed", error=f"the Ray worker running it was lost "
                                                             f"({type(error).__name__}); run again to redo it")
        return job, worker, record

    def _drop(self, worker) -> None:
        if worker in self.free:
            self.free.remove(worker)


def run_jobs_on_ray(jobs: list[Job], manifest: Manifest, address: str | None, workers: int | None,
                    announce=None, split: bool = False, quiet: bool = False) -> dict[str, int]:
    """Every job not complete yet, on Ray workers that load the models once and take the next job as they free. A
    lost worker costs the job it was running (recorded as failed). Interrupted, the workers are shut down and the
    partial files of the jobs they ran removed. ``split``: one job at a time over every worker."""
    cluster = RayWorkers(address, workers, quiet)
    todo, counts = start_jobs(jobs, manifest)
    if not todo:
        return counts
    in_flight: list[Job] = []

    def begin(job: Job, position: int) -> None:
        in_flight.append(job)
        if announce is not None:
            announce(job, position, len(todo))

    def finish(job: Job, record: dict) -> None:
        in_flight.remove(job)
        manifest.append(record)
        counts[record["status"]] += 1

    try:
        with cluster:
            left = run_split_jobs(cluster, todo, begin, finish) if split else run_whole_jobs(cluster, todo, begin,
                                                                                            finish)
        for job in left:  # every worker was lost: the rest waits for the next run
            manifest.append(job_record(job, status="failed", error="no Ray worker left"))
            counts["failed"] += 1
    finally:
        for job in in_flight:  # interrupted: the workers are gone now, and so may be what they were writing
            remove_stale(job.output.parent, output_prefix(job.output), wait=10.0, ours=True)
    return counts


def run_whole_jobs(cluster: RayWorkers, todo: list[Job], begin, finish) -> list[Job]:
    """Each job to the next free worker; the jobs left when every worker is lost."""
    queue, running = list(todo), {}
    while queue or running:
        while cluster.free and queue:
            job = queue.pop(0)
            begin(job, len(todo) - len(queue))
            worker = cluster.free.pop()
            running[worker.record.remote(job)] = (job, worker)
        if not running:
            break
        job, _, record = cluster.first_done(running)
        finish(job, record)
    return queue


def run_split_jobs(cluster: RayWorkers, todo: list[Job], begin, finish) -> list[Job]:
    """One job at a time over every worker; the jobs left when every worker is lost."""
    queue = list(todo)
    while queue and cluster.free:
        job = queue.pop(0)
        begin(job, len(todo) - len(queue))
        finish(job, run_split_job(cluster, job))
    return queue


def run_split_job(cluster: RayWorkers, job: Job) -> dict:
    """One job over every worker, equal frame for frame to a run on one. First the face track of the whole clip
    (small): with the default face choice every worker detects a part of the frames and one smooths them all in
    order; otherwise one worker detects in order. Then each worker makes one segment (cut at a multiple of the
    run's batch of frames, its generator replayed to the segment's start) and encodes it; the driver joins the
    segments without re-encoding and muxes the audio once. The segments live in a hidden folder beside the output,
    removed whatever happens."""
    from ..video import join_videos

    if job.lines or job.options.sync_only_speech:  # a scene runs whole: its stretches are runs of their own
        worker = cluster.free[0]
        return cluster.gather([(worker, worker.record.remote(job))])[0]
    started = time.perf_counter()
    parts = None
    try:
        plan = _split_plan(cluster, job)
        segments = plan.segments(len(cluster.free))
        job.output.parent.mkdir(parents=True, exist_ok=True)
        parts = job.output.parent / owned_name(output_prefix(job.output), ".parts")  # a killed driver's: stale
        parts.mkdir()
        paths = [parts / f"{k:04d}{job.output.suffix or '.mp4'}" for k in range(len(segments))]
        results = cluster.gather([(worker, worker.segment.remote(job, segment, path))
                                  for worker, segment, path in zip(list(cluster.free), segments, paths)])
        join_videos(paths, job.output, float(plan.output_frames / plan.fps), audio=job.audio,
                    audio_delay=plan.audio_delay)
    except Exception as error:
        return job_record(job, status="failed", seconds=round(time.perf_counter() - started, 3),
                          error=sentence(error))
    finally:
        if parts is not None:
            shutil.rmtree(parts, ignore_errors=True)
    return job_record(job, status="done", frames=sum(r[0] for r in results), segments=len(segments),
                      seconds=round(time.perf_counter() - started, 3),
                      frames_without_face=sum(r[1] for r in results), settings=job.settings())


def _split_plan(cluster: RayWorkers, job: Job):
    """The job's SplitPlan, its face detection shared among the workers where the face choice allows it."""
    import numpy as np

    workers = list(cluster.free)
    anchors = None
    if job.options.face == 0 and len(workers) > 1:
        count = cluster.gather([(workers[0], workers[0].frames_to_track.remote(job))])[0]
        cuts = [round(k * count / len(workers)) for k in range(len(workers) + 1)]
        anchors = np.concatenate(cluster.gather([(worker, worker.detect_faces.remote(job, a, b))
                                                 for worker, a, b in zip(workers, cuts, cuts[1:]) if b > a]))
    first = cluster.free[0]
    return cluster.gather([(first, first.plan_split.remote(job, anchors))])[0]


def _session_folder(ray) -> str | None:
    """The local cluster's session folder (logs, sockets), which a reaped cluster's record removes."""
    try:
        return ray._private.worker._global_node.get_session_dir_path()
    except Exception:  # Ray's internals moved: the processes are still reaped
        return None


def _signal_handlers() -> dict:
    """The process's SIGTERM and SIGINT handlers (none off the main thread, where they cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(handlers: dict) -> None:
    for number, handler in handlers.items():
        if handler is not None:
            signal.signal(number, handler)
