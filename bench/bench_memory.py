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

``--slope-seconds S``: one run of S seconds of speech on demo1 looped and scaled to 540x960 (where the frame count
matters, not the frame size), its process's RSS sampled every second: the slope in KB per output frame fitted to
the medians of the 6th to 9th tenth of the run (frames at the run's average rate; target < 1 KB a frame), and each
tenth's median RSS. The last tenth is left out: the encoder's flush and the process's teardown free hundreds of MB.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile
from report import PeakRSS, write_report

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
sys.path.insert(0, str(REPO))


def peak_rss_of(command: list[str], env: dict) -> tuple[float, float, int]:
    """(peak RSS in MB sampled every 50 ms over the process tree, seconds, exit code)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with PeakRSS(process.pid) as sampler:
        stderr = process.communicate()[1].decode(errors="replace")
    if process.returncode:
        print(stderr[-3000:], file=sys.stderr)
    return sampler.peak / 1e6, time.perf_counter() - started, process.returncode


def looped_speech(seconds: float, folder: Path) -> Path:
    """The first ``seconds`` of long_speech_39s.wav, played again as often as needed."""
    speech, rate = soundfile.read(MEDIA / "long_speech_39s.wav", dtype="int16")
    reps = int(np.ceil(seconds * rate / len(speech)))
    path = folder / f"speech_{seconds:g}s.wav"
    soundfile.write(path, np.tile(speech, reps)[: int(seconds * rate)], rate, subtype="PCM_16")
    return path


def looped_video(seconds: float, folder: Path) -> Path:
    """demo1 played again and again to about ``seconds``, the stream copied (no re-encode)."""
    from latentsync.video.ffmpeg import find_ffmpeg

    path = folder / f"video_{int(seconds)}s.mp4"
    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-stream_loop",
                    str(int(np.ceil(seconds / 10.0)) - 1), "-i", str(MEDIA / "demo1_video.mp4"), "-an", "-c", "copy",
                    str(path)], check=True)
    return path


def scene_lines(folder: Path, seconds: float, count: int) -> list[str]:
    """``--line`` flags: ``count`` lines of 1.5 s of speech, one at the start of each ``count``-th of the take."""
    line = looped_speech(1.5, folder)
    return [flag for k in range(count) for flag in ("--line", f"{line}@{k * seconds / count + 0.5:.2f}")]


def rss_slope(seconds: float, folder: Path, env: dict, checkpoints: Path, config: Path) -> dict:
    """One long run's RSS through time: the slope in KB per frame over its second half."""
    from latentsync.video.ffmpeg import find_ffmpeg

    video = folder / f"video_{int(seconds)}s_540.mp4"
    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-stream_loop",
                    str(int(np.ceil(seconds / 10.0))), "-i", str(MEDIA / "demo1_video.mp4"), "-an", "-vf",
                    "scale=540:960", "-t", str(seconds), str(video)], check=True)
    out = folder / "slope.mp4"
    command = [sys.executable, "-m", "latentsync", "--video", str(video), "--audio", str(looped_speech(seconds, folder)),
               "--out", str(out), "--checkpoints", str(checkpoints), "--unet-config", str(config), "--detector",
               "dlib", "--steps", "1", "--quiet", "--device", "cpu"]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watched, samples = psutil.Process(process.pid), []
    while process.poll() is None:
        try:
            samples.append((time.perf_counter() - started, watched.memory_info().rss))
        except psutil.Error:
            break
        time.sleep(1.0)
    stderr = process.communicate()[1].decode(errors="replace")
    if process.returncode:
        print(stderr[-3000:], file=sys.stderr)
    frames = _count_frames(out) if out.exists() else 0
    elapsed = time.perf_counter() - started
    times, rss = np.array([t for t, _ in samples]), np.array([r for _, r in samples], dtype=np.float64)
    # the second half of the frames' making: the models' loading before and the encoder's last flush and the
    # process's teardown after (RSS falls by hundreds of MB there) are left out, and each tenth of the run is
    # its median (RSS swings by ~150 MB within a few groups as buffers are filled and the heap trimmed)
    tenths = [rss[(times >= k * times[-1] / 10) & (times < (k + 1) * times[-1] / 10)] for k in range(10)]
    medians = np.array([np.median(part) if len(part) else np.nan for part in tenths])
    middle = np.arange(5, 9)  # 50-90 % of the run
    known = middle[np.isfinite(medians[middle])]
    per_second, error = np.nan, np.nan
    if len(known) > 3:  # the fit's standard error: what this run can resolve
        fit, cov = np.polyfit((known + 0.5) * times[-1] / 10, medians[known], 1, cov=True)
        per_second, error = fit[0], float(np.sqrt(cov[0, 0]))
    per_frame = 1024 * frames / elapsed
    return {"seconds_of_speech": seconds, "frames": frames, "seconds": round(elapsed, 1), "exit_code":
            process.returncode, "slope_kb_per_frame": round(per_second / per_frame, 2),
            "slope_standard_error_kb_per_frame": round(error / per_frame, 2),
            "fitted": "medians of the 6th to 9th tenth of the run",
            "rss_mb_median_each_tenth": [None if np.isnan(m) else round(m / 1e6) for m in medians],
            "target_kb_per_frame": "< 1"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long-seconds", type=float, default=125.0)
    parser.add_argument("--kept-seconds", type=float, default=60.0, help="the long video of the dubbing runs")
    parser.add_argument("--pair", choices=["both", "speech", "kept", "scene"], default="both",
                        help="speech: the short and the long speech; kept: the two dubbing runs; scene: a 10 s take "
                             "with 2 lines against --scene-seconds with 20, sync_only_speech")
    parser.add_argument("--scene-seconds", type=float, default=600.0, help="the long take of the scene pair")
    parser.add_argument("--slope-seconds", type=float, default=None, help="instead: one run's RSS slope per frame")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "memory.json"))
    args = parser.parse_args()

    from latentsync.tools.make_tiny_checkpoints import make_tiny_checkpoints

    with tempfile.TemporaryDirectory(prefix="latentsync-bench-") as tmp:
        folder = Path(tmp)
        config = make_tiny_checkpoints(folder / "checkpoints", resolution=64)  # small model: measure buffering
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        if args.slope_seconds:
            result = rss_slope(args.slope_seconds, folder, env, folder / "checkpoints", config)
            write_report({"benchmark": "RSS slope through one long run (tiny checkpoints, 540x960)", **result},
                          args.out)
            return 0 if result["exit_code"] == 0 else 1
        demo, dub = MEDIA / "demo1_video.mp4", ["--audio-start", "2", "--when-video-is-longer", "keep"]
        runs = {}
        if args.pair in ("both", "speech"):
            runs.update(short=(demo, MEDIA / "demo1_audio.wav", []),
                        long=(demo, looped_speech(args.long_seconds, folder), []))
        if args.pair in ("both", "kept"):
            runs.update(kept_short=(demo, looped_speech(1.0, folder), dub),
                        kept_long=(looped_video(args.kept_seconds, folder), looped_speech(1.0, folder), dub))
        if args.pair == "scene":
            scene = ["--sync-only-speech", "on", "--when-video-is-longer", "keep"]
            runs.update(scene_short=(demo, None, scene + scene_lines(folder, 10.0, 2)),
                        scene_long=(looped_video(args.scene_seconds, folder), None,
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
