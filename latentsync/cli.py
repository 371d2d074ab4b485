"""``python -m latentsync --video V --audio A --out O``: lip-sync a video file from the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .checkpoints import VERSIONS

RESOLUTION_TO_VERSION = {str(v.resolution): name for name, v in VERSIONS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m latentsync", description=__doc__)
    parser.add_argument("--video", required=True, help="input video file (any format ffmpeg reads)")
    parser.add_argument("--audio", required=True, help="speech track (wav, mp3, m4a, ... or a video with audio)")
    parser.add_argument("--out", required=True, help="output .mp4 (written atomically when complete)")
    parser.add_argument("--resolution", choices=sorted(RESOLUTION_TO_VERSION), default="512",
                        help="512 = LatentSync 1.6, 256 = LatentSync 1.5 (default 512)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--seed", type=int, default=1247)
    parser.add_argument("--guidance", type=float, default=1.5, help="lips expression / CFG scale, 1.0-3.0")
    parser.add_argument("--attention", default="auto", choices=["auto", "flash", "xformers", "flex", "standard"])
    parser.add_argument("--lip-focus", type=float, default=1.0,
                        help="> 1 weights mouth keys in attention (flex backend; changes outputs, opt-in)")
    parser.add_argument("--deepcache", type=int, default=0, metavar="N",
                        help="opt-in DeepCache: full UNet every N steps (3 as published; faster, changes outputs)")
    parser.add_argument("--optimization-level", default="balanced", choices=["conservative", "balanced", "aggressive"])
    parser.add_argument("--memory-mode", default="balanced", choices=["aggressive", "balanced", "conservative"])
    parser.add_argument("--vram-fraction", type=float, default=0.0, help="0 = auto, else cap in (0, 0.95]")
    parser.add_argument("--disk-cache", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--checkpoints", default=None, help="checkpoints folder (default: ./checkpoints)")
    parser.add_argument("--unet-config", default=None, help="UNet yaml (default: the one of the version)")
    parser.add_argument("--detector", default="auto", choices=["auto", "insightface", "dlib"])
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: best available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    progress = TqdmProgress(not args.quiet)
    try:
        from .pipeline import LipSyncModels, LipSyncPipeline, PipelineOptions

        for name in ("video", "audio"):
            if not Path(getattr(args, name)).is_file():
                raise FileNotFoundError(f"{name} file not found: {getattr(args, name)}")
        options = PipelineOptions(
            version=RESOLUTION_TO_VERSION[args.resolution], steps=args.steps, guidance_scale=args.guidance,
            seed=args.seed, attention=args.attention, lip_focus=args.lip_focus, deepcache_interval=args.deepcache,
            optimization_level=args.optimization_level, memory_mode=args.memory_mode,
            vram_fraction=args.vram_fraction, disk_cache={"auto": None, "on": True, "off": False}[args.disk_cache],
            detector=args.detector, device=args.device, checkpoints_dir=args.checkpoints,
            unet_config=args.unet_config)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        models = LipSyncModels.load(options, progress)
        result = LipSyncPipeline(models, options).run(args.video, args.audio, args.out, progress=progress)
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
