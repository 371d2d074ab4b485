"""``python -m latentsync --video V --audio A --out O``: lip-sync a video file from the command line."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
from pathlib import Path

from .command import TqdmProgress, add_run_options, check_device, in_flags, read_choices, sigterm_as_interrupt
from .errors import LatentSyncError, sentence_of
from .paths import check_name_length, check_not_an_input, check_output_name, writable_folder

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


def entry() -> None:
    """The command's process (``python -m latentsync``, the ``latentsync`` script): ``own_process``, then ``main``."""
    own_process()
    code = main()
    from .engine.threads import stages_running

    if code == 130 and stages_running():  # interrupted, its cleanup done, a stage still inside native code (a
        sys.stdout.flush()  # compile): the interpreter's teardown would run C++ destructors under it and abort
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def own_process() -> None:
    """What only the process's owner may set, before torch loads: torch.compile's code cache in the user's cache
    folder (``compile``) rather than in TMPDIR, which a run leaves as it found it, unless the user chose one; and
    two C heap arenas for all threads (glibc), so what a group frees is found again by the next instead of piling up
    in one arena per thread (RSS then stays flat with the frame count; the engine also trims the heap after each
    group)."""
    from .paths import user_cache

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(user_cache() / "inductor"))
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, HEAP_ARENAS)
    except (OSError, AttributeError):  # not glibc: its allocator is left as it is
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["batch"]:
        from .batch.cli import main as batch_main

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
    print(f"wrote {result.output_path} ({result.output_frames} frames at {float(result.fps):.3f} fps"
          + (f", {result.frames_without_face} frames without a face passed through" if result.frames_without_face
             else "") + ")")
    return 0
