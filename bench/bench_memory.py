"""Peak host RAM of the whole pipeline for a short and a long output at the real 1080x1920 frame size.

    python bench/bench_memory.py [--long-seconds 125] [--kept-seconds 60] [--pair both|speech|kept]
    python bench/bench_memory.py --slope-seconds 180

Runs the command line in fresh processes with tiny real-format checkpoints (so the numbers measure the
pipeline's own buffering, not model weights): the 10 s demo clip with its 10 s speech (250 frames), and the
same clip with a speech track looped to ``--long-seconds`` (3,000+ frames: the video ping-pongs, revisited
frames go to the disk cache). Then dubbing: 1 s of speech placed 2 s into the video with the rest kept
(``--audio-start 2 --when-video-is-longer keep``), in the 10 s clip and in the clip looped to ``--kept-seconds``
(stream-copied by ffmpeg): the kept frames pass through. Prints JSON with peak RSS of each and the long-to-short
ratios; the target is <= 1.10. ``--pair scene``: the 10 s clip with 2 lines against the clip looped to
``--scene-seconds`` (600) with 20, both ``--sync-only-speech on --when-video-is-longer keep``.

``--slope-seconds S [--one-thread]``: one run of S seconds of speech on demo1 looped and scaled to 540x960 (where
the frame count matters, not the frame size), the command line's job in ``heap_probe.py``'s process: after every
synced group its RSS, its C heap in use (glibc's count: what malloc handed out, torch's tensors included, neither
free pages nor fragmentation) and Python's heap (tracemalloc). Each slope in KB per frame is fitted over the
50-90 % of the frames (target < 1 KB a frame), with its standard error; and the Python lines that grew most.
``--one-thread`` runs the stages one after another, so every sample is taken at the same point of the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

from common import MEDIA, REPO, PeakRSS, looped_speech, looped_video, write_report


def peak_rss_of(command: list[str], env: dict) -> tuple[float, float, int]:
    """(peak RSS in MB sampled every 50 ms over the process tree, seconds, exit code)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with PeakRSS(process.pid) as sampler:
        stderr = process.communicate()[1].decode(errors="replace")
    if process.returncode:
        print(stderr[-3000:], file=sys.stderr)
    return sampler.peak / 1e6, time.perf_counter() - started, process.returncode


def scene_lines(folder: Path, seconds: float, count: int) -> list[str]:
    """``--line`` flags: ``count`` lines of 1.5 s of speech, one at the start of each ``count``-th of the take."""
    line = looped_speech(folder, 1.5)
    return [flag for k in range(count) for flag in ("--line", f"{line}@{k * seconds / count + 0.5:.2f}")]


def heap_slope(seconds: float, folder: Path, env: dict, checkpoints: Path, config: Path, one_thread: bool) -> dict:
    """One long run's memory after every synced group (``heap_probe.py``): slopes in KB per frame, fitted by least
    squares over the frames of the 50-90 % of the run, with their standard errors; and the growth from the first to
    the last sample of that span."""
    video, audio = looped_video(folder, seconds, size="540:960"), looped_speech(folder, seconds)
    samples_file = folder / "samples.json"
    command = [sys.executable, str(Path(__file__).with_name("heap_probe.py")), str(samples_file),
               *(["--one-thread"] if one_thread else []), "--", "--video", str(video), "--audio", str(audio),
               "--out", str(folder / "slope.mp4"), "--checkpoints", str(checkpoints), "--unet-config", str(config),
               "--detector", "dlib", "--steps", "1", "--resolution", "256", "--quiet", "--device", "cpu"]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
        return {"exit_code": done.returncode}
    probe = json.loads(samples_file.read_text())
    frames = np.array([sample["frames"] for sample in probe["samples"]], dtype=np.float64)
    total = probe["frames"]
    fitted = (frames > probe["first_snapshot_after"]) & (frames < 0.9 * total)  # 50-90 %, the snapshot's cost aside
    if fitted.sum() < 4:
        print(f"{total} frames leave {fitted.sum()} samples to fit: give --slope-seconds 30 or more", file=sys.stderr)
        return {"exit_code": 2}
    slopes = {}
    for name in ("rss", "c_heap", "python_heap"):
        values = np.array([sample[name] for sample in probe["samples"]], dtype=np.float64)
        (slope, _), cov = np.polyfit(frames[fitted], values[fitted], 1, cov=True)
        first, last = values[fitted][0], values[fitted][-1]
        slopes[name] = {"kb_per_frame": round(slope / 1024, 3), "standard_error": round(np.sqrt(cov[0, 0]) / 1024, 3),
                        "mb_first_and_last_fitted": [round(first / 2**20, 1), round(last / 2**20, 1)],
                        "mb_at_each_tenth": [round(float(np.median(values[(frames >= k * total / 10) &
                                                                          (frames < (k + 1) * total / 10)])) / 2**20)
                                             for k in range(10)]}
    return {"seconds_of_speech": seconds, "frames": total, "seconds": round(time.perf_counter() - started, 1),
            "exit_code": 0, "stages": "one thread" if one_thread else "overlapped (as the command line runs)",
            "fitted": "least squares over the samples of the 50-90 % of the frames (one after every group), after "
                      "the first tracemalloc snapshot",
            "slopes": slopes, "python_lines_grown_most_from_50_to_100_percent": probe["growth"][:8],
            "target_kb_per_frame": "< 1"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long-seconds", type=float, default=125.0)
    parser.add_argument("--kept-seconds", type=float, default=60.0, help="the long video of the dubbing runs")
    parser.add_argument("--pair", choices=["both", "speech", "kept", "scene"], default="both",
                        help="speech: the short and the long speech; kept: the two dubbing runs; scene: a 10 s take "
                             "with 2 lines against --scene-seconds with 20, sync_only_speech")
    parser.add_argument("--scene-seconds", type=float, default=600.0, help="the long take of the scene pair")
    parser.add_argument("--slope-seconds", type=float, default=None, help="instead: one run's memory slope per frame")
    parser.add_argument("--one-thread", action="store_true", help="with --slope-seconds: the stages in one thread")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "memory.json"))
    args = parser.parse_args()

    from latentsync.tools.make_tiny_checkpoints import make_tiny_checkpoints

    with tempfile.TemporaryDirectory(prefix="latentsync-bench-") as tmp:
        folder = Path(tmp)
        config = make_tiny_checkpoints(folder / "checkpoints", resolution=64)  # small model: measure buffering
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        if args.slope_seconds:
            result = heap_slope(args.slope_seconds, folder, env, folder / "checkpoints", config, args.one_thread)
            write_report({"benchmark": "memory slope through one long run (tiny checkpoints, 540x960)", **result},
                         args.out)
            return 0 if result["exit_code"] == 0 else 1
        demo, dub = MEDIA / "demo1_video.mp4", ["--audio-start", "2", "--when-video-is-longer", "keep"]
        runs = {}
        if args.pair in ("both", "speech"):
            runs.update(short=(demo, MEDIA / "demo1_audio.wav", []),
                        long=(demo, looped_speech(folder, args.long_seconds), []))
        if args.pair in ("both", "kept"):
            runs.update(kept_short=(demo, looped_speech(folder, 1.0), dub),
                        kept_long=(looped_video(folder, args.kept_seconds), looped_speech(folder, 1.0), dub))
        if args.pair == "scene":
            scene = ["--sync-only-speech", "on", "--when-video-is-longer", "keep"]
            runs.update(scene_short=(demo, None, scene + scene_lines(folder, 10.0, 2)),
                        scene_long=(looped_video(folder, args.scene_seconds), None,
                                    scene + scene_lines(folder, args.scene_seconds, 20)))
        results = {}
        for name, (video, audio, extra) in runs.items():
            out = folder / f"{name}.mp4"
            sound = ["--audio", str(audio)] if audio is not None else []
            command = [sys.executable, "-m", "latentsync", "--video", str(video),
                       *sound, "--out", str(out), "--checkpoints", str(folder / "checkpoints"),
                       "--unet-config", str(config), "--detector", "dlib", "--steps", "1", "--quiet",
                       "--memory-mode", "aggressive", "--device", "cpu", *extra]
            peak, seconds, code = peak_rss_of(command, env)
            frames = _count_frames(out) if out.exists() else 0
            seconds_of_audio = soundfile.info(str(audio)).duration if audio is not None else None
            results[name] = {"audio_seconds": seconds_of_audio, "options": extra[:4], "frames": frames,
                             "peak_rss_mb": round(peak, 1), "seconds": round(seconds, 1), "exit_code": code,
                             "frames_per_second": round(frames / seconds, 2) if seconds else None}
    report = {"benchmark": "memory scaling (peak RSS of the process tree, tiny checkpoints, 1080x1920 frames)",
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "runs": results,
              **{f"ratio_{long}_to_{short}": round(results[long]["peak_rss_mb"] / results[short]["peak_rss_mb"], 3)
                 for long, short in (("long", "short"), ("kept_long", "kept_short"), ("scene_long", "scene_short"))
                 if long in results},
              "target": "<= 1.10"}
    write_report(report, args.out)
    return 0 if all(r["exit_code"] == 0 for r in results.values()) else 1


def _count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


if __name__ == "__main__":
    sys.exit(main())
