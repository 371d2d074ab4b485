"""Face-stage throughput on 1080x1920 frames, printed as JSON.

Measures, in the same run and on the same frames:
- ``stage``: FaceStage (batched align with threaded detection, batched restore) per detector and device;
- ``naive``: a frame-by-frame loop: detect one frame, cv2 warp + Lanczos, cv2 restore.
The warp-only figures (anchors given) isolate the tensor work from detection.

    python bench/bench_face.py [--video PATH] [--frames 48] [--batch 16] [--resolution 512]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import av
import numpy as np
import torch

import cv2_recipe  # the published one-frame recipe: the baseline
from common import MEDIA  # first: puts the repository on the path
from latentsync.face.detectors import available_detectors, create_detector
from latentsync.face.stage import FaceStage

DEFAULT_VIDEO = MEDIA / "demo1_video.mp4"


def decode(path: Path, n: int) -> np.ndarray:
    with av.open(str(path)) as c:
        c.streams.video[0].thread_type = "AUTO"
        return np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0))])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_stage(detector, frames, batch, resolution, device) -> dict:
    stage = FaceStage(detector, resolution, device)
    stage.align(frames[:2])  # warm-up (kernels, lazy model load)
    stage.reset()
    t_detect = t_align = t_restore = 0.0
    anchors_all = []
    for i in range(0, len(frames), batch):
        chunk = frames[i:i + batch]
        t0 = time.perf_counter()
        anchors = detector.detect(chunk)
        t1 = time.perf_counter()
        aligned = stage.align(chunk, anchors=anchors)
        sync(device)
        t2 = time.perf_counter()
        stage.restore(chunk, aligned.faces, aligned)
        sync(device)
        t3 = time.perf_counter()
        t_detect, t_align, t_restore = t_detect + t1 - t0, t_align + t2 - t1, t_restore + t3 - t2
        anchors_all += anchors
    n = len(frames)
    total = t_detect + t_align + t_restore
    return {"fps": n / total, "detect_fps": n / t_detect, "align_warp_fps": n / t_align,
            "restore_fps": n / t_restore, "warp_only_fps": n / (t_align + t_restore),
            "faces_found": sum(a is not None for a in anchors_all)}, anchors_all


def bench_naive(detector, frames, anchors, resolution) -> dict:
    stage = FaceStage(None, resolution)
    t_detect = t_warp = 0.0
    for frame in frames:
        t0 = time.perf_counter()
        a = detector.detect(frame[None])[0]
        t1 = time.perf_counter()
        m = stage.affine_from_anchors(a[None])[0].double().numpy()
        face = cv2_recipe.align_one(frame, m, resolution)
        cv2_recipe.restore_one(frame, face.astype(np.float32) / 127.5 - 1, m)
        t2 = time.perf_counter()
        t_detect, t_warp = t_detect + t1 - t0, t_warp + t2 - t1
    n = len(frames)
    return {"fps": n / (t_detect + t_warp), "detect_fps": n / t_detect, "warp_only_fps": n / t_warp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--checkpoints", default=None)
    args = ap.parse_args()

    frames = decode(args.video, args.frames)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    avail = available_detectors(args.checkpoints)
    result = {"input": f"{frames.shape[2]}x{frames.shape[1]}", "frames": len(frames), "batch": args.batch,
              "resolution": args.resolution, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "loadavg_before": os.getloadavg(), "detectors": {k: v[0] for k, v in avail.items()}, "runs": []}
    for name in ("dlib", "insightface"):
        if not avail[name][0]:
            result["runs"].append({"detector": name, "skipped": avail[name][1]})
            continue
        for device in devices if name == "dlib" else devices[-1:]:
            detector = create_detector(name, args.checkpoints, device=device)
            stage, anchors = bench_stage(detector, frames, args.batch, args.resolution, device)
            naive = bench_naive(detector, frames, anchors, args.resolution) if device == "cpu" else None
            run = {"detector": name, "device": device, "stage": stage, "naive_frame_loop_cpu": naive}
            if naive:
                run["speedup_total"] = stage["fps"] / naive["fps"]
                run["speedup_warp_only"] = stage["warp_only_fps"] / naive["warp_only_fps"]
            result["runs"].append(run)
            detector.close()
    result["loadavg_after"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
