"""What the H.264 software encoder sustains on this machine at 1080x1920: libx264 per preset and thread count.

    python bench/bench_encoder.py [--frames 50] [--presets ultrafast,superfast,veryfast,faster,fast,medium]
                                  [--threads 1,2] [--out bench/results/encoder.json]

The first ``--frames`` frames of demo1 (1080x1920, 25 fps) are decoded once into RAM and piped, as the pipeline
pipes its frames, to ``ffmpeg -c:v libx264 -crf 18 -pix_fmt yuv420p`` (the default encoder's settings when there is
no NVENC) with each preset and ``-threads N``. Reported per run: frames/s, frames/s per thread, the file's size and
its PSNR against the frames given (what the preset costs in quality at the same CRF). A GPU host without NVENC
(H100, H200) has to encode at the pipeline's pace on its CPU cores: ``frames/s per thread x cores`` says which
preset keeps up. JSON out.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import MEDIA, REPO, write_report  # first: puts the repository on the path
from latentsync.video import find_ffmpeg, iter_frame_batches

CRF = 18


def encode(ffmpeg: str, frames: np.ndarray, preset: str, threads: int, out: Path) -> float:
    """Seconds to encode ``frames`` (uint8 RGB) from a pipe, as VideoWriter feeds its encoder."""
    n, h, w, _ = frames.shape
    command = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-r", "25", "-i", "-", "-c:v", "libx264", "-preset", preset, "-crf", str(CRF), "-pix_fmt", "yuv420p",
               "-threads", str(threads), str(out)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.PIPE)
    process.stdin.write(frames.tobytes())
    process.stdin.close()
    if process.wait() != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(command)}")
    return time.perf_counter() - started


def psnr(ffmpeg: str, frames: np.ndarray, encoded: Path) -> float:
    """PSNR (dB, all planes) of the encoded file against the RGB frames it was made from."""
    n, h, w, _ = frames.shape
    command = [ffmpeg, "-loglevel", "info", "-i", str(encoded), "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
               f"{w}x{h}", "-r", "25", "-i", "-", "-lavfi", "[0:v]format=rgb24[a];[1:v]format=rgb24[b];[a][b]psnr",
               "-f", "null", "-"]
    done = subprocess.run(command, input=frames.tobytes(), capture_output=True, check=True)
    match = re.search(r"average:([0-9.]+|inf)", done.stderr.decode(errors="replace"))
    return float(match.group(1)) if match else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--presets", default="ultrafast,superfast,veryfast,faster,fast,medium")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "encoder.json"))
    args = parser.parse_args(argv)
    ffmpeg = find_ffmpeg()
    frames = np.concatenate([batch.copy() for batch in iter_frame_batches(MEDIA / "demo1_video.mp4", 25)])
    frames = frames[:args.frames]
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                out = Path(folder) / f"{preset}-{threads}.mp4"
                seconds = encode(ffmpeg, frames, preset, threads, out)
                fps = len(frames) / seconds
                runs.append({"preset": preset, "threads": threads, "seconds": round(seconds, 2),
                             "fps": round(fps, 2), "fps_per_thread": round(fps / threads, 2),
                             "megabytes": round(out.stat().st_size / 1e6, 2), "psnr_db": round(psnr(ffmpeg, frames,
                                                                                                      out), 2)})
                print(runs[-1], file=sys.stderr)
    write_report({"benchmark": "libx264 at 1080x1920, crf 18, frames piped as rgb24", "frames": len(frames),
                  "size": f"{frames.shape[2]}x{frames.shape[1]}", "machine": platform.processor() or
                  platform.machine(), "cpus": __import__("os").cpu_count(), "runs": runs}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
