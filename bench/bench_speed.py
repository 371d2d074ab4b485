"""Speed of the full pipeline and of the UNet denoiser, with full-size random-weight models (the real configs).

    python bench/bench_speed.py [--version 1.6] [--frames 64] [--device cuda] [--size full|tiny]
                                [--out bench/results/speed.json]

Runs the demo clip through the real pipeline twice in one process: a baseline configuration like the published
one (standard attention, one 16-frame chunk per UNet call, conservative batches) and the default configuration
(auto attention, the memory plan's batches). Reports per-stage seconds, UNet denoise frames/s, end-to-end
frames/s and peak VRAM for each, and the speed-ups. Weights are random (speed does not depend on them); the
models are built in memory from latentsync/configs/unet/*.yaml, the sd-vae-ft-mse config and Whisper tiny's dimensions.
``--size tiny`` uses the tiny test models instead (a smoke run for machines without a GPU).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import soundfile
import torch

from common import MEDIA, REPO, write_report  # first: puts the repository on the path
from latentsync.audio import WhisperEncoder
from latentsync.tools.make_tiny_checkpoints import make_tiny_whisper_checkpoint
from latentsync.checkpoints import CheckpointSet, get_version
from latentsync.memory_limiter import Workload, detect_hardware, plan_memory
from latentsync.models.loading import load_unet_config
from latentsync.models.unet import UNet3DConditionModel
from latentsync.pipeline import LipSyncModels, LipSyncPipeline, PipelineOptions
from latentsync.tools import make_tiny_checkpoints as tiny

SD_VAE_FT_MSE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
                 "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
                 "layers_per_block": 2, "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32,
                 "sample_size": 256, "scaling_factor": 0.18215}
WHISPER_TINY = {"n_audio_state": 384, "n_audio_layer": 4, "n_audio_head": 6}


def build_models(args, folder: Path) -> LipSyncModels:
    from diffusers import AutoencoderKL

    device = torch.device(args.device)
    hardware = detect_hardware(args.device)
    dtype = plan_memory(hardware, Workload(512)).dtype
    if args.size == "full":
        spec = get_version(args.version)
        unet_config, resolution, vae_config, whisper_dims = (load_unet_config(spec.unet_config), spec.resolution,
                                                             SD_VAE_FT_MSE, WHISPER_TINY)
    else:
        unet_config, resolution, vae_config = tiny.TINY_UNET, 64, tiny.TINY_VAE
        whisper_dims = {"n_audio_state": tiny.TINY_AUDIO_DIM, "n_audio_layer": tiny.TINY_WHISPER_LAYERS}
    torch.manual_seed(0)
    with device:
        unet = UNet3DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
    unet = unet.to(dtype).eval().requires_grad_(False)
    vae = vae.to(dtype).eval().requires_grad_(False)
    whisper_path = folder / "whisper.pt"
    if not whisper_path.exists():
        make_tiny_whisper_checkpoint(whisper_path, seed=0, **whisper_dims)
    encoder = WhisperEncoder.from_checkpoint(whisper_path, device=device, dtype=dtype)
    # only the folder matters here: the insightface detector finds buffalo_l under it
    found = CheckpointSet(Path(args.checkpoints), get_version(args.version), None, None, None, None) \
        if args.checkpoints else None
    return LipSyncModels(found, unet, vae, encoder, device, dtype, resolution, 16)


def run_config(name: str, args, attention: str, optimization_level: str, audio: Path, folder: Path) -> dict:
    models = build_models(args, folder)
    options = PipelineOptions(steps=args.steps, detector=args.detector, attention=attention,
                              optimization_level=optimization_level)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = LipSyncPipeline(models, options).run(MEDIA / "demo1_video.mp4", audio, folder / f"{name}.mp4")
    seconds = time.perf_counter() - started
    stages = {k: round(v, 3) for k, v in result.seconds.items()}
    report = {"attention": models.use_attention(attention), "optimization_level": optimization_level, "dtype": str(models.dtype),
              "chunks_per_call": result.plan.chunks_per_call, "vae_batch": result.plan.vae_batch,
              "frames": result.output_frames, "stage_seconds": stages,
              "denoise_frames_per_second": round(result.output_frames / result.seconds["denoise"], 3),
              "end_to_end_frames_per_second": round(result.output_frames / seconds, 3)}
    if torch.cuda.is_available():
        report["peak_vram_gb"] = round(torch.cuda.max_memory_allocated() / 1024 ** 3, 2)
    del models
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="1.6", choices=["1.6", "1.5"])
    parser.add_argument("--size", default="full", choices=["full", "tiny"])
    parser.add_argument("--frames", type=int, default=64, help="output frames (audio length)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--detector", default="auto")
    parser.add_argument("--checkpoints", default=None, help="where buffalo_l is, for the insightface detector")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "speed.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="latentsync-speed-") as tmp:
        folder = Path(tmp)
        speech, rate = soundfile.read(MEDIA / "demo1_audio.wav", dtype="int16")
        audio = folder / "speech.wav"
        soundfile.write(audio, speech[: int(args.frames / 25 * rate) + 1], rate, subtype="PCM_16")
        baseline = run_config("baseline", args, "standard", "conservative", audio, folder)
        default = run_config("default", args, "auto", "balanced", audio, folder)
    report = {"benchmark": f"LatentSync {args.version} pipeline speed, {args.size}-size random weights, "
                           f"demo1 1080x1920, {args.steps} steps",
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
              or "cpu", "torch": torch.__version__, "baseline (standard attention, 1 chunk per call)": baseline,
              "default (auto attention, memory plan)": default,
              "speedup_denoise": round(default["denoise_frames_per_second"]
                                       / baseline["denoise_frames_per_second"], 3),
              "speedup_end_to_end": round(default["end_to_end_frames_per_second"]
                                          / baseline["end_to_end_frames_per_second"], 3)}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
