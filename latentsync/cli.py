"""``python -m latentsync --video V --audio A --out O``: lip-sync a video file from the command line."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

from .errors import LatentSyncError, sentence_of
from .options import LOAD, RUN, Option
from .paths import check_name_length, check_not_an_input, check_output_name, writable_folder

CHOICES = (*LOAD.values(), *RUN.values())  # what a run lets the user choose: every one of them has a flag
SHOWN_FAILURES = 20  # failed jobs listed after a batch (the manifest has them all)
M_ARENA_MAX, HEAP_ARENAS = -8, 2  # glibc's mallopt parameter, and the arenas the command's process uses


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m latentsync", description=__doc__,
                                     epilog="Many videos: python -m latentsync batch JOBS (see --help there).")
    parser.add_argument("--video", required=True, help="input video file (any format ffmpeg reads)")
    parser.add_argument("--audio", help="speech track (wav, mp3, m4a, ... or a video with audio)")
    parser.add_argument("--line", action="append", metavar="AUDIO@START[@FACE]",
                        help="instead of --audio, a scene's edit list, one --line per line of speech: its audio file, "
                             "the second it starts in the video, and which face speaks it (the --face numbers), e.g. "
                             "--line hello.wav@2.5@1 --line reply.wav@6@2; lines must not overlap")
    parser.add_argument("--out", required=True, help="output .mp4 (.mkv with --codec ffv1), written atomically when "
                                                      "complete")
    add_run_options(parser)
    return parser


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a run, shared by a single run and a batch (where they are every job's defaults): one flag per
    schema entry, kept as typed (``read_choices`` reads them), and the paths of the weights."""
    for option in CHOICES:
        words = list(option.words or option.choices or ()) or None
        parser.add_argument(option.flag, dest=option.field, default=option.typed_default, choices=words,
                            metavar=None if words else option.kind.__name__.upper(), help=_help(option))
    parser.add_argument("--checkpoints", default=None, help="checkpoints folder (default: ./checkpoints)")
    parser.add_argument("--unet-config", default=None, help="UNet yaml (default: the one of the version)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: best available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _help(option: Option) -> str:
    limits = f"; {option.min}-{option.max}" if option.min is not None else ""
    return f"{option.help} (default {option.typed_default}{limits})"


def read_choices(args) -> dict:
    """Option field -> its checked value, from the flags as typed; a sentence naming the flag otherwise."""
    return {option.field: option.parse(getattr(args, option.field), option.flag) for option in CHOICES}


class TqdmProgress:
    """One tqdm bar per stage."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            if done <= 0:  # a stage only announced (the node shows its name): a bar frozen at 0 % would stay
                return
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="frame" if total > 10 else "step")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self):
        for bar in self.bars.values():
            bar.close()


DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")


def check_device(device: str | None, here: bool = True) -> None:
    """``--device``: a device name, and (``here``; Ray's workers may have other GPUs) one this torch has; one
    sentence naming the flag otherwise (torch is imported only to ask it about a GPU)."""
    if device is None or device == "cpu":
        return
    if not DEVICE.fullmatch(device):
        raise ValueError(f"--device {device}: give cpu, cuda, cuda:N (the N-th GPU) or mps")
    if not here:
        return
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: this torch ({torch.__version__}) has no CUDA, or sees no GPU: "
                               "install the CUDA build of torch for your GPU (pytorch.org), or use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0")
    elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("--device mps: this machine or torch has no Apple GPU (MPS); use --device cpu")


def check_arguments(args) -> dict:
    """Every path and value, checked before anything heavy: one sentence naming the flag and the fix. A variable
    frame rate is a printed warning. Returns the checked option values (``read_choices``)."""
    from .checkpoints import download_command
    from .video import MediaError, check_audio_file

    if (args.audio is None) == (args.line is None):
        raise ValueError("give either --audio (one speech track) or --line (a scene's edit list, one flag per line)")
    for flag in ("video", "audio"):
        if getattr(args, flag) is not None and not Path(getattr(args, flag)).is_file():
            raise FileNotFoundError(f"--{flag}: no such file: {getattr(args, flag)}")
    if args.unet_config and not Path(args.unet_config).is_file():
        raise FileNotFoundError(f"--unet-config: no such file: {args.unet_config}")
    values = read_choices(args)
    check_device(args.device)
    if args.checkpoints and not Path(args.checkpoints).is_dir():
        command = download_command(values["version"], Path(args.checkpoints))
        raise FileNotFoundError(f"--checkpoints: no such folder: {args.checkpoints}; check the path, or download the "
                                f"weights there with: {command}")
    out = Path(args.out)
    check_name_length(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder: give a file name, such as {out / 'synced.mp4'}")
    args.speech = args.audio if args.line is None else edit_list(args.line, Path(args.video))
    sources = {"audio": args.audio} if args.line is None else {f"--line {n}": line.audio
                                                                for n, line in enumerate(args.speech, 1)}
    check_not_an_input(out, {"video": args.video, **sources}, "--out")
    check_output_name(out, values["codec"], "--out")
    try:
        writable_folder(out)
    except PermissionError as error:
        raise PermissionError(f"--out: {error}") from None
    try:
        if args.audio is not None:
            check_audio_file(args.audio)
    except MediaError as error:
        raise MediaError(f"--audio: {error}") from None
    warning = variable_rate_warning(Path(args.video))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return values


def edit_list(texts: list[str], video: Path) -> list:
    """The ``--line`` flags as scene lines, checked whole against the video (one sentence naming the line)."""
    from .scene import check_lines, parse_line
    from .video import probe_video

    lines = [parse_line(text, f"--line {number}") for number, text in enumerate(texts, 1)]
    info = probe_video(video)
    check_lines(lines, int(info.num_frames), info.fps)
    return lines


def variable_rate_warning(video: Path) -> str | None:
    """A sentence when the video's frames are unevenly spaced (their timing will be evened out), else None."""
    from .video import MediaError, probe_video, variable_frame_rate

    try:
        spread = variable_frame_rate(video)
        if spread is None:
            return None
        fps = float(probe_video(video).fps)
    except MediaError:
        return None  # the run itself says what is wrong with the file
    return (f"{video.name} has a variable frame rate (frames last {spread[0] * 1000:.0f} to {spread[1] * 1000:.0f} "
            f"ms): it is read frame after frame at its average {fps:.3f} fps, so its timing is evened out and the "
            f"speech may drift from it; to keep its timing, convert it first: ffmpeg -i {video.name} -fps_mode cfr "
            f"-r {round(fps)} constant.mp4")


def batch_main(argv: list[str]) -> int:
    """``python -m latentsync batch JOBS [run options]``: see latentsync/batch.py."""
    from . import batch
    from .manifest import check_manifest_path

    parser = _batch_parser()
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
        jobs = [batch.settle(job, defaults, paths) for job in batch.read_jobs(args.jobs)]  # all checked up front
        manifest = batch.Manifest(args.manifest or batch.manifest_path(args.jobs))
        check_manifest_path(manifest.path, args.jobs, jobs)
        if args.ray not in (None, "local"):
            from .ray_batch import check_ray_address

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
                counts = batch.run_jobs(jobs, manifest, batch.JobRunner(progress), announce)
            else:
                from .ray_batch import run_jobs_on_ray

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
    return _batch_summary(manifest, counts)


def in_flags(message: str) -> str:
    """A library sentence that starts with an option's name as the node calls it, with the flag instead."""
    for option in CHOICES:
        if option.node and option.flag and re.match(rf"{option.node}\b", message):
            return option.flag + message[len(option.node):]
    return message


def _batch_parser() -> argparse.ArgumentParser:
    from . import batch

    parser = argparse.ArgumentParser(prog="python -m latentsync batch", description=batch.__doc__,
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


def _batch_summary(manifest, counts: dict) -> int:
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


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (docker stop, schedulers, kill) ends a run as Ctrl-C does: partial files and caches removed,
    nothing half-written. Only the first SIGTERM or Ctrl-C interrupts: one more while the run cleans up (a second
    docker stop, an impatient Ctrl-C) is ignored, so the cleanup is never cut short. The handlers that were there
    before are put back afterwards."""
    interrupted = False

    def interrupt(signum, frame):
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    try:
        previous = {name: signal.signal(name, interrupt) for name in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: the host handles its signals
        yield
        return
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)


def entry() -> None:
    """The command's process (``python -m latentsync``, the ``latentsync`` script), set up as only the process's
    owner may: torch.compile's code cache in the user's cache folder (``compile``) rather than in TMPDIR, which a run
    leaves as it found it, unless the user chose one; and two C heap arenas for all threads (glibc), so what a group
    frees is found again by the next instead of piling up in one arena per thread (RSS then stays flat with the
    frame count; the engine also trims the heap after each group). Then ``main``."""
    from .paths import user_cache

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(user_cache() / "inductor"))
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, HEAP_ARENAS)
    except (OSError, AttributeError):  # not glibc: its allocator is left as it is
        pass
    code = main()
    from .engine.threads import stages_running

    if code == 130 and stages_running():  # interrupted, its cleanup done, a stage still inside native code (a
        sys.stdout.flush()  # compile): the interpreter's teardown would run C++ destructors under it and abort
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["batch"]:
        return batch_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    progress = TqdmProgress(not args.quiet)
    try:
        with sigterm_as_interrupt():
            values = check_arguments(args)  # before torch is imported or a weight is read: a typo fails at once
            from .model_set import ModelChoice
            from .options import pipeline_options
            from .pipeline import LipSyncPipeline

            options = pipeline_options(values)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            models = ModelChoice.of(values, args.checkpoints, args.unet_config, args.device).load(progress)
            result = LipSyncPipeline(models, options).run(args.video, args.speech, args.out, progress=progress)
    except KeyboardInterrupt:
        progress.close()
        print("\ninterrupted: no output was written and temporary files were removed", file=sys.stderr)
        return 130
    except (LatentSyncError, ValueError, OSError, RuntimeError) as error:
        progress.close()
        print(f"error: {in_flags(sentence_of(error))}", file=sys.stderr)
        return 1
    progress.close()
    print(f"wrote {result.output_path} ({result.num_frames} frames at {float(result.fps):.3f} fps"
          + (f", {result.frames_without_face} frames without a face passed through" if result.frames_without_face
             else "") + ")")
    return 0
