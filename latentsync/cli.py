"""``python -m latentsync --video V --audio A --out O``: lip-sync a video file from the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .checkpoints import VERSIONS

from .options import LOAD, LOSSLESS_SUFFIXES, OUTPUT, RUN, check_all

RESOLUTION_TO_VERSION = {str(v.resolution): name for name, v in VERSIONS.items()}
DISK_CACHE_CHOICES = {"auto": None, "on": True, "off": False}


def _option(parser, flag: str, name: str, kind=None, **extra) -> None:
    """A flag whose default, choices and help come from the options schema."""
    param = RUN[name]
    help_text = f"{param.help} (default {param.default})"
    if param.min is not None:
        help_text += f"; {param.min}-{param.max}"
    parser.add_argument(flag, dest=name, default=param.default, help=help_text,
                        type=kind or type(param.default), choices=param.choices, **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m latentsync", description=__doc__,
                                     epilog="Many videos: python -m latentsync batch JOBS (see --help there).")
    parser.add_argument("--video", required=True, help="input video file (any format ffmpeg reads)")
    parser.add_argument("--audio", required=True, help="speech track (wav, mp3, m4a, ... or a video with audio)")
    parser.add_argument("--out", required=True, help="output .mp4 (.mkv with --codec ffv1), written atomically when "
                                                      "complete")
    add_run_options(parser)
    return parser


# the options a batch job may set per job (by these names, as columns or keys): everything of one run
JOB_OPTIONS = ("resolution", "codec", "steps", "seed", "guidance", "attention", "lip_focus", "deepcache",
               "optimization_level", "memory_mode", "vram_fraction", "disk_cache", "face", "detector")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a run, shared by a single run and a batch (where they are every job's defaults)."""
    parser.add_argument("--resolution", choices=sorted(RESOLUTION_TO_VERSION), default="512",
                        help="face size in pixels, and with it the version: 512 = LatentSync 1.6, 256 = LatentSync "
                             "1.5 (default 512)")
    parser.add_argument("--codec", choices=OUTPUT["codec"].choices, default=OUTPUT["codec"].default,
                        help=f"{OUTPUT['codec'].help} (default {OUTPUT['codec'].default})")
    _option(parser, "--steps", "steps")
    _option(parser, "--seed", "seed")
    _option(parser, "--guidance", "guidance_scale")
    _option(parser, "--attention", "attention")
    _option(parser, "--lip-focus", "lip_focus")
    _option(parser, "--deepcache", "deepcache_interval", metavar="N")
    _option(parser, "--optimization-level", "optimization_level")
    _option(parser, "--memory-mode", "memory_mode")
    _option(parser, "--vram-fraction", "vram_fraction")
    parser.add_argument("--disk-cache", choices=list(DISK_CACHE_CHOICES), default="auto", help=RUN["disk_cache"].help)
    _option(parser, "--face", "face", metavar="N")
    _option(parser, "--detector", "detector")
    parser.add_argument("--precision", choices=LOAD["precision"].choices, default=LOAD["precision"].default,
                        help=LOAD["precision"].help)
    parser.add_argument("--checkpoints", default=None, help="checkpoints folder (default: ./checkpoints)")
    parser.add_argument("--unet-config", default=None, help="UNet yaml (default: the one of the version)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: best available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


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
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="frame" if total > 10 else "step")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self):
        for bar in self.bars.values():
            bar.close()


def check_arguments(args) -> None:
    """Every path and value, checked before anything heavy: one sentence naming the flag and the fix."""
    import os

    from .checkpoints import download_command

    for flag in ("video", "audio"):
        if not Path(getattr(args, flag)).is_file():
            raise FileNotFoundError(f"--{flag}: no such file: {getattr(args, flag)}")
    if args.unet_config and not Path(args.unet_config).is_file():
        raise FileNotFoundError(f"--unet-config: no such file: {args.unet_config}")
    if args.checkpoints and not Path(args.checkpoints).is_dir():
        command = download_command(RESOLUTION_TO_VERSION[args.resolution], Path(args.checkpoints))
        raise FileNotFoundError(f"--checkpoints: no such folder: {args.checkpoints}; check the path, or download the "
                                f"weights there with: {command}")
    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder: give a file name, such as {out / 'synced.mp4'}")
    folder = next(p for p in [out.resolve().parent, *out.resolve().parents] if p.exists())
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"--out: the folder {folder} is not writable: choose another output path or make it "
                              "writable")
    check_all(RUN, {name: getattr(args, name) for name in RUN if name != "disk_cache"})
    check_output(out, args.codec, "--out")


def check_output(out: Path, codec: str, what: str) -> None:
    """FFV1 goes in Matroska only: one sentence before any work when the output name says otherwise."""
    if codec == "ffv1" and out.suffix.lower() not in LOSSLESS_SUFFIXES:
        raise ValueError(f"{what} {out}: codec ffv1 writes Matroska; give a name ending in .mkv")


def pipeline_options(args):
    from .pipeline import PipelineOptions

    return PipelineOptions(**{name: getattr(args, name) for name in RUN if name != "disk_cache"},
                           disk_cache=DISK_CACHE_CHOICES[args.disk_cache])


def load_models(args, progress):
    from .pipeline import LipSyncModels

    return LipSyncModels.load(RESOLUTION_TO_VERSION[args.resolution], args.checkpoints, unet_config=args.unet_config,
                              device=args.device, precision=args.precision, resolution=int(args.resolution),
                              progress=progress)


def batch_main(argv: list[str]) -> int:
    """``python -m latentsync batch JOBS [run options]``: see latentsync/batch.py."""
    from . import batch

    parser = argparse.ArgumentParser(prog="python -m latentsync batch", description=batch.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", help="a CSV or JSON Lines file: video, audio, output and per-job options")
    parser.add_argument("--manifest", default=None, help="JSON Lines record of the jobs (default: beside JOBS)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run the jobs on a Ray cluster at ADDRESS (a local one without): one worker per GPU, or "
                             "per CPU slot; needs pip install -r requirements-ray.txt and paths every node sees")
    parser.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per GPU or CPU slot)")
    parser.add_argument("--split", action="store_true",
                        help="with --ray: one job at a time, cut into one segment per worker; the joined output "
                             "equals a run on one worker frame for frame (for long videos)")
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.split and args.ray is None:
        parser.error("--split cuts a job across Ray workers: add --ray [ADDRESS]")
    for name in ("checkpoints", "unet_config"):  # workers may run elsewhere: absolute paths
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    flags = {action.option_strings[0].lstrip("-").replace("-", "_"): action for action in parser._actions
             if action.option_strings}  # --lip-focus -> lip_focus: the name a job column uses
    by_name = {name: action for name, action in flags.items() if name in JOB_OPTIONS}
    try:
        jobs = batch.read_jobs(args.jobs, set(by_name))
        settings = {job.index: _job_arguments(args, job, by_name) for job in jobs}  # all checked up front
        for job in jobs:
            job_args = settings[job.index]
            check_all(RUN, {name: getattr(job_args, name) for name in RUN if name != "disk_cache"})
            check_output(job.output, job_args.codec, f"job {job.index}: output")
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    manifest = Path(args.manifest) if args.manifest else batch.manifest_path(args.jobs)
    progress = TqdmProgress(not args.quiet and args.ray is None)

    def announce(job, position, total):
        if not args.quiet:
            print(f"job {position}/{total}: {job.video.name} + {job.audio.name} -> {job.output}", file=sys.stderr)

    try:
        if args.ray is None:
            runner = batch.JobRunner(load_models, pipeline_options, progress)
            counts = batch.run_jobs(jobs, settings, manifest, runner, announce)
        else:
            counts = batch.run_jobs_on_ray(jobs, settings, manifest, (load_models, pipeline_options),
                                           None if args.ray == "local" else args.ray, args.workers, announce,
                                           split=args.split)
    except KeyboardInterrupt:
        progress.close()
        print("\ninterrupted: the jobs in flight wrote nothing; run the same command again to resume", file=sys.stderr)
        return 130
    except RuntimeError as error:  # Ray missing or its cluster unreachable
        progress.close()
        print(f"error: {error}", file=sys.stderr)
        return 1
    progress.close()
    print(f"{counts['done']} done, {counts['skipped']} already complete, {counts['failed']} failed; "
          f"manifest: {manifest}")
    return 1 if counts["failed"] else 0


def _job_arguments(defaults, job, by_name: dict) -> argparse.Namespace:
    """The command line's values with the job's own on top, each parsed as its flag parses it."""
    values = vars(defaults).copy()
    for name, raw in job.options.items():
        action = by_name[name]
        if action.type is not None:
            value = action.type(raw) if isinstance(raw, str) else raw
        else:
            value = str(raw)  # choices given as text (resolution 256, disk_cache on)
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"job {job.index}: {name} must be one of {', '.join(map(str, action.choices))}; "
                             f"got {raw!r}")
        values[action.dest] = value
    return argparse.Namespace(**values)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["batch"]:
        return batch_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    progress = TqdmProgress(not args.quiet)
    try:
        check_arguments(args)  # before torch is imported or a weight is read: a typo fails at once
        from .pipeline import LipSyncPipeline
        from .video import video_encoder

        options = pipeline_options(args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        models = load_models(args, progress)
        result = LipSyncPipeline(models, options).run(args.video, args.audio, args.out, progress=progress,
                                                      encoder=video_encoder(args.codec))
    except KeyboardInterrupt:
        progress.close()
        print("\ninterrupted: no output was written and temporary files were removed", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as error:
        progress.close()
        print(f"error: {error}", file=sys.stderr)
        return 1
    progress.close()
    print(f"wrote {result.output_path} ({result.num_frames} frames at {float(result.fps):.3f} fps"
          + (f", {result.frames_without_face} frames without a face passed through" if result.frames_without_face
             else "") + ")")
    return 0
