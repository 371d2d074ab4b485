"""End-to-end time against the stages' own times: the stages one after another (baseline) and overlapped.

    python bench/bench_overlap.py [--seconds 4] [--steps 2] [--device cpu] [--size tiny|full]

Both runs lip-sync the first ``--seconds`` of demo1 (1080x1920, 25 fps) to as much speech, decode to encoded mp4,
in the same process with the same models: ``overlap=False`` runs decode, detect/align, denoise, restore and encode
one after another in one thread; the default engine runs them at the same time. Overlap should bring the wall time
from the sum of the stage times towards the slowest stage, which may be ffmpeg's encoder (a separate process,
working beside either; its CPU time is reported). The two outputs are compared frame by frame. JSON out.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch


from bench_speed import build_models
from common import MEDIA, REPO, write_report  # first: puts the repository on the path
from latentsync.pipeline import LipSyncPipeline, PipelineOptions
from latentsync.video import iter_frame_batches

STAGES = ("audio", "decode", "align", "denoise", "restore", "encode")


def timed_run(models, overlap: bool, audio: Path, out: Path, steps: int, detector: str) -> dict:
    pipeline = LipSyncPipeline(models, PipelineOptions(steps=steps, detector=detector), overlap=overlap)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = pipeline.run(MEDIA / "demo1_video.mp4", audio, out)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stages = {name: round(result.seconds.get(name, 0.0), 3) for name in STAGES}
    # the encoder works in ffmpeg, a child process: its CPU time, next to the pipe writes that "encode" times here
    encoder = round(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, 3)
    every = {**stages, "ffmpeg_encoder_cpu": encoder}
    return {"overlap": overlap, "frames": result.output_frames, "wall_seconds": round(wall, 3),
            "stage_seconds": stages, "ffmpeg_encoder_cpu_seconds": encoder,
            "sum_of_stages": round(sum(stages.values()), 3), "slowest_stage": max(every, key=every.get),
            "frames_per_second": round(result.output_frames / wall, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--version", default="1.6", choices=["1.6", "1.5"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--detector", default="dlib")
    parser.add_argument("--checkpoints", default=None, help="where buffalo_l is, for the insightface detector")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch's intra-op threads for this benchmark process (0 = torch's default): with 1, the "
                             "UNet leaves a core to the other stages")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "overlap.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="latentsync-overlap-") as tmp:
        folder = Path(tmp)
        speech, rate = soundfile.read(MEDIA / "demo1_audio.wav", dtype="int16")
        audio = folder / "speech.wav"
        soundfile.write(audio, speech[: int(args.seconds * rate)], rate, subtype="PCM_16")
        models = build_models(args, folder)
        timed_run(models, True, audio, folder / "warmup.mp4", 1, args.detector)  # first-call costs out of both
        serial = timed_run(models, False, audio, folder / "serial.mp4", args.steps, args.detector)
        overlapped = timed_run(models, True, audio, folder / "overlapped.mp4", args.steps, args.detector)
        same = all(np.array_equal(a, b) for a, b in zip(iter_frame_batches(folder / "serial.mp4", 16),
                                                        iter_frame_batches(folder / "overlapped.mp4", 16)))
    report = {"benchmark": f"serial vs overlapped stages, {args.size}-size models, {args.seconds:g} s of demo1 "
                           f"(1080x1920), {args.steps} steps, detector {args.detector}",
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda")
              else f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "baseline (stages one after another)": serial, "overlapped": overlapped,
              "speedup_end_to_end": round(serial["wall_seconds"] / overlapped["wall_seconds"], 3),
              "identical_encoded_output": same}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
