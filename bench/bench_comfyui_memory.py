"""Peak RAM of a real ComfyUI server lip-syncing a clip: the IMAGE route against the VIDEO route, same clip.

    COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=...] python bench/bench_comfyui_memory.py [--seconds 10]

IMAGE route (the baseline, what most graphs do): LoadVideo -> GetVideoComponents -> images -> LatentSync Lip Sync
-> SaveVideo: ComfyUI decodes the whole clip to float32 first. VIDEO route: LoadVideo -> video -> LatentSync Lip
Sync -> SaveVideo: the node streams the file. Each route runs in a fresh server (tiny checkpoint set, CPU, dlib) on
the first ``--seconds`` of demo1 (1080x1920, 25 fps) with as much of its speech; the peak resident memory of the
server's process tree (ffmpeg included) is sampled every 50 ms. JSON out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

from common import REPO, PeakRSS, demo_clip, looped_speech, write_report  # first: the repository on the path
from comfyui_server import comfyui_server

GB = 1024 ** 3


def prompt(route: str, video: str, audio: str, steps: int) -> dict:
    graph = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": video}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": audio}},
        "3": {"class_type": "LatentSyncModelLoader", "inputs": {"version": "1.6 (512 px)", "precision": "fp32",
                                                                "device": "cpu"}},
        "4": {"class_type": "LatentSyncLipSync", "inputs": {
            "model": ["3", 0], "audio": ["2", 0], "seed": 1247, "lips_expression": 1.5, "inference_steps": steps,
            "attention_mode": "flash", "optimization_level": "balanced", "vram_fraction": 0.0,
            "memory_mode": "balanced", "output_mode": "auto", "enable_disk_cache": False, "face_detector": "dlib",
            "lip_focus": 1.0, "deepcache": False, "fps": 25.0}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": "bench/LatentSync",
                                                    "format": "auto", "codec": "auto"}},
    }
    if route == "image":
        graph["6"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}}
        graph["4"]["inputs"].update(images=["6", 0], fps=["6", 2])
    else:
        graph["4"]["inputs"]["video"] = ["1", 0]
    return graph


def run_route(route: str, comfyui_dir: str, checkpoints: Path, config: Path, seconds: float, steps: int,
              folder: Path) -> dict:
    base = folder / f"base-{route}"
    (base / "input").mkdir(parents=True)
    video = demo_clip(base / "input", seconds).name
    audio = looped_speech(base / "input", seconds).name
    env = {"LATENTSYNC_CHECKPOINTS": str(checkpoints), "LATENTSYNC_UNET_CONFIG": str(config), "HF_HUB_OFFLINE": "1"}
    with comfyui_server(comfyui_dir, base, env, os.environ.get("COMFYUI_PYTHON")) as server:
        idle = psutil.Process(server.process.pid).memory_info().rss
        started = time.perf_counter()
        with PeakRSS(server.process.pid) as sampler:
            entry = server.wait(server.queue(prompt(route, video, audio, steps)), seconds=3600)
        wall = time.perf_counter() - started
        if entry["status"]["status_str"] != "success":
            raise RuntimeError(f"{route} route failed: {entry['status']}\n{server.log()}")
    return {"route": route, "peak_rss_gb": round(sampler.peak / GB, 3), "server_idle_rss_gb": round(idle / GB, 3),
            "seconds": round(wall, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"), help="ComfyUI checkout (COMFYUI_DIR)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "comfyui_memory.json"))
    args = parser.parse_args()
    if not args.comfyui:
        parser.error("set COMFYUI_DIR (or --comfyui) to a ComfyUI checkout")
    from latentsync.tools.make_tiny_checkpoints import make_tiny_checkpoints

    folder = Path(tempfile.mkdtemp(prefix="latentsync-comfyui-memory-"))
    try:
        config = make_tiny_checkpoints(folder / "tiny")
        image = run_route("image", args.comfyui, folder / "tiny", config, args.seconds, args.steps, folder)
        video = run_route("video", args.comfyui, folder / "tiny", config, args.seconds, args.steps, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = {"benchmark": f"peak RSS of a real ComfyUI server (process tree), {args.seconds:g} s of demo1 "
                           f"(1080x1920, 25 fps), tiny checkpoints, {args.steps} step(s), CPU",
              "baseline (IMAGE route: GetVideoComponents -> images)": image,
              "VIDEO route (streamed from the file)": video,
              "ratio_video_to_image": round(video["peak_rss_gb"] / image["peak_rss_gb"], 3)}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
