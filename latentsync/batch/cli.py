"""``python -m latentsync batch JOBS``: many lip-sync jobs, models loaded once, resumable; here or on Ray (``--ray``).

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

import argparse
import json
import logging
import sys
from pathlib import Path

from ..command import TqdmProgress, add_run_options, check_device, read_choices, sigterm_as_interrupt
from .jobs import read_jobs, settle
from .local import JobRunner, run_jobs
from .manifest import Manifest, check_manifest_path, manifest_path

SHOWN_FAILURES = 20  # failed jobs listed after a batch (the manifest has them all)


def main(argv: list[str]) -> int:
    """``python -m latentsync batch JOBS [run options]``: see this module's docstring."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.split and args.ray is None:
        parser.error("--split cuts a job across Ray workers: add --ray [ADDRESS]")
    if args.workers is not None and args.ray is None:
        parser.error("--workers counts Ray workers: add --ray [ADDRESS]")
    for name in ("checkpoints", "unet_config"):  # workers may run elsewhere: absolute paths
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        defaults = read_choices(args)
        check_device(args.device, here=args.ray is None)
        paths = {"checkpoints": args.checkpoints, "unet_config": args.unet_config, "device": args.device}
        jobs = [settle(job, defaults, paths) for job in read_jobs(args.jobs)]  # all checked up front
        manifest = Manifest(args.manifest or manifest_path(args.jobs))
        check_manifest_path(manifest.path, args.jobs, jobs)
        if args.ray not in (None, "local"):
            from .ray_runner import check_ray_address

            check_ray_address(args.ray)
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    progress = TqdmProgress(not args.quiet and args.ray is None)

    def announce(job, position, total):
        if not args.quiet:
            speech = job.audio.name if job.audio else f"{len(job.lines)} lines"
            print(f"job {position}/{total}: {job.video.name} + {speech} -> {job.output}", file=sys.stderr)

    try:
        with sigterm_as_interrupt(), manifest:
            if args.ray is None:
                counts = run_jobs(jobs, manifest, JobRunner(progress), announce)
            else:
                from .ray_runner import run_jobs_on_ray

                counts = run_jobs_on_ray(jobs, manifest, None if args.ray == "local" else args.ray, args.workers,
                                         announce, split=args.split, quiet=args.quiet)
    except KeyboardInterrupt:
        progress.close()
        print("\ninterrupted: the jobs in flight wrote nothing; run the same command again to resume", file=sys.stderr)
        return 130
    except RuntimeError as error:  # the manifest unusable, Ray missing or its cluster unreachable
        progress.close()
        print(f"error: {error}", file=sys.stderr)
        return 1
    progress.close()
    return _summary(manifest, counts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m latentsync batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", help="a CSV or JSON Lines file: video, audio, output and per-job options")
    parser.add_argument("--manifest", default=None, help="JSON Lines record of the jobs (default: beside JOBS)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run the jobs on a Ray cluster at ADDRESS (a local one without): one worker per GPU, or "
                             "per CPU slot; needs pip install -r requirements-ray.txt and paths every node sees")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="Ray workers (default: one per GPU or CPU slot)")
    parser.add_argument("--split", action="store_true",
                        help="with --ray: one job at a time, cut into one segment per worker; the joined output "
                             "equals a run on one worker frame for frame (for long videos)")
    add_run_options(parser)
    return parser


def _summary(manifest, counts: dict) -> int:
    if manifest.unreadable:
        print(f"warning: {manifest.unreadable} line(s) of {manifest.path} are not job records (cut short by a kill, or "
              "edited) and were skipped", file=sys.stderr)
    if manifest.unwritten:
        print(f"error: {len(manifest.unwritten)} record(s) could not be written to {manifest.path} (disk full?); "
              "their jobs will be redone by the next run: " + " ".join(json.dumps(r) for r in manifest.unwritten),
              file=sys.stderr)
    for record in manifest.failures[:SHOWN_FAILURES]:
        print(f"failed: {record.get('where') or 'job ' + str(record['job'])} ({Path(record['video']).name} -> "
              f"{Path(record['output']).name}): {record.get('error')}", file=sys.stderr)
    if len(manifest.failures) > SHOWN_FAILURES:
        print(f"... and {len(manifest.failures) - SHOWN_FAILURES} more failed jobs: their sentences are in "
              f"{manifest.path}", file=sys.stderr)
    print(f"{counts['done']} done, {counts['skipped']} already complete, {counts['failed']} failed; "
          f"manifest: {manifest.path}")
    return 1 if counts["failed"] or manifest.unwritten else 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value
