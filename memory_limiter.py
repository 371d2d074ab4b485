"""The memory limiter: what this machine's GPU and RAM allow. The logic lives in latentsync/memory_limiter.py.

    python memory_limiter.py [--resolution 512] [--frames 250] [--width 1080 --height 1920] [--revisits]
                             [--optimization-level balanced] [--memory-mode balanced] [--vram-budget GB] [--device cuda]

prints the plan a run would use here: the memory tier, batch sizes and modelled peak VRAM (on a GPU), dtype, VRAM cap,
memory or disk mode, and why.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__:  # imported as part of the ComfyUI package
    from .latentsync.memory_limiter import (MEMORY_MODES, OPTIMIZATION_LEVELS, MemoryPlan,  # noqa: F401
                                            PipelineOptions, Workload, detect_hardware, plan_memory, smaller_batches)
    from .latentsync.vram import VramModel
else:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from latentsync.memory_limiter import (MEMORY_MODES, OPTIMIZATION_LEVELS, MemoryPlan,  # noqa: F401
                                           PipelineOptions, Workload, detect_hardware, plan_memory, smaller_batches)
    from latentsync.vram import VramModel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--frames", type=int, default=250, help="source video frames")
    parser.add_argument("--width", type=int, default=1080)
    parser.add_argument("--height", type=int, default=1920)
    parser.add_argument("--revisits", action="store_true", help="the audio outlasts the video (ping-pong)")
    parser.add_argument("--optimization-level", default="balanced", choices=OPTIMIZATION_LEVELS)
    parser.add_argument("--memory-mode", default="balanced", choices=MEMORY_MODES)
    parser.add_argument("--vram-budget", type=float, default=0.0, help="GB the run may use (0: what is free)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    hardware = detect_hardware(args.device)
    work = Workload(args.resolution, args.frames, (args.height, args.width), args.revisits)
    vram = VramModel.of_version("1.6" if args.resolution == 512 else "1.5") if hardware.device == "cuda" else None
    plan = plan_memory(hardware, work, PipelineOptions(optimization_level=args.optimization_level,
                                                       memory_mode=args.memory_mode, vram_budget=args.vram_budget),
                       vram)
    print(f"hardware: {hardware}")
    for field in ("profile", "device", "dtype", "tier", "chunks_per_call", "vae_batch", "face_batch",
                  "modelled_peak", "vram_fraction", "disk_cache"):
        print(f"  {field:<16} {getattr(plan, field)}")
    for reason in plan.reasons:
        print(f"  - {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
