"""The first minutes on a GPU: checks, then speed, ours beside the published implementation. JSON out.

    python bench/device_check.py [--published PATH] [--budget 450] [--out bench/results/device_check.json]
    python bench/device_check.py --smoke     # the CPU, tiny models, seconds (what CI runs)

Checks, on the full-size UNet of 1.6 with random weights (``--smoke``: the tiny test UNet on the CPU):
- ``fp16_vs_fp32``: one guided UNet call in float16 against float32 on the same inputs (relative error);
- ``attention``: every backend that runs here against standard in the run's dtype, and the one auto picks;
- ``compiled_vs_eager``: the compiled path (inductor) against eager, with the first call's seconds (not in smoke);
- ``guided_vs_full``: the engine's guided call (the part before the first cross-attention once, the unconditional
  cross-attentions as their bias) against the full call: bit for bit on the CPU, and here?
Speed at 256 and 512 px (LatentSync 1.5 and 1.6 sizes), one 16-frame chunk, guidance 1.5:
- ``unet_call_ms``: one guided UNet call (2 x 16 frames), eager, eager as the denoiser calls it (``eager_guided``) and
  compiled; the published UNet's, when ``--published``
  names a checkout of the published LatentSync (imported in a child process from there, never copied here). Its
  package imports more than its UNet needs (einops, matplotlib, torchvision built for this torch, ...): give
  ``--published-python`` an interpreter with its requirements, or carry their wheels; a missing one is reported as
  the child's last error line;
- ``chunk_s``: one chunk through ``LipSyncDenoiser``, 20 steps, VAE encode and decode included; ``peak_vram_gb``.
VRAM (``vram``), per memory tier: ``torch.cuda.max_memory_allocated`` of one group denoised as the tier runs it,
beside the VRAM model's peak for the same work (``--smoke``: the modelled numbers alone).
End to end (``end_to_end``), ours: ``--e2e-frames`` frames of demo1 (1080x1920) from decode to the encoded H.264 file
through ``LipSyncPipeline`` with full-size random-weight models (``bench_speed.run_config``: auto attention, the memory
plan), 20 steps, guidance 1.5: frames/s, each stage's seconds, peak VRAM. Faces: insightface when ``--checkpoints``
holds buffalo_l, else dlib (carry dlib-bin and face_recognition_models). The published pipeline's end to end is not
run: it fetches its VAE, Whisper and InsightFace models from the Hugging Face hub, which a device cannot reach.
Sections that would end after ``--budget`` seconds are skipped (and say so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import MEDIA, REPO, write_report  # first: puts the repository on the path
from latentsync.attention.core import relative_error
from latentsync.attention.registry import BACKENDS
from latentsync.attention.selection import availability, create_backend
from latentsync.checkpoints import SCHEDULER_CONFIG, get_version
from latentsync.models.loading import load_unet_config
from latentsync.models.unet import UNet3DConditionModel
from latentsync.tools import make_tiny_checkpoints as tiny
from latentsync.vae import SD_VAE_FT_MSE

FRAMES = 16
# the published UNet, built from its own config with random weights and timed like ours (run from its checkout)
PUBLISHED_UNET = """
import json, sys, time, torch, yaml
from latentsync.models.unet import UNet3DConditionModel
config, resolution, device, steps_ms = yaml.safe_load(open(sys.argv[1]))["model"], int(sys.argv[2]), sys.argv[3], []
dtype = torch.float16 if device == "cuda" else torch.float32
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
unet, _ = UNet3DConditionModel.from_pretrained(config, "", device=device)
unet = unet.to(dtype).eval()
lat = resolution // 8
sample = torch.randn(2, 13, 16, lat, lat, device=device, dtype=dtype)
audio = torch.randn(32, 50, config["cross_attention_dim"], device=device, dtype=dtype)
with torch.no_grad():
    for _ in range(4):
        sync(); started = time.perf_counter()
        unet(sample, torch.tensor(500, device=device), encoder_hidden_states=audio)
        sync(); steps_ms.append((time.perf_counter() - started) * 1e3)
print(json.dumps({"unet_call_ms": round(min(steps_ms[1:]), 2)}))
"""


class Clock:
    def __init__(self, budget: float):
        self.started, self.budget = time.perf_counter(), budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)


def unet_for(smoke: bool, device, dtype, version: str = "1.6") -> UNet3DConditionModel:
    torch.manual_seed(0)
    config = tiny.TINY_UNET if smoke else load_unet_config(get_version(version).unet_config)
    return UNet3DConditionModel(**config).eval().requires_grad_(False).to(device, dtype)


def inputs(unet, resolution: int, device, dtype) -> tuple:
    generator = torch.Generator().manual_seed(1)
    latent = resolution // 8
    sample = torch.randn(2, 13, FRAMES, latent, latent, generator=generator)
    audio = torch.randn(2 * FRAMES, 50, unet.config.cross_attention_dim, generator=generator)
    return sample.to(device, dtype), torch.tensor(500, device=device), audio.to(device, dtype)


def call_ms(function, device, reps: int = 3) -> float:
    best = float("inf")
    with torch.no_grad():
        for _ in range(reps + 1):  # the first is a warm-up
            sync(device)
            started = time.perf_counter()
            function()
            sync(device)
            best = min(best, time.perf_counter() - started)
    return round(best * 1e3, 2)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def checks(args, device, dtype, resolution: int) -> dict:
    found = {}
    unet = unet_for(args.smoke, device, torch.float32)
    sample, t, audio = inputs(unet, resolution, device, torch.float32)
    with torch.no_grad():
        full = unet(sample, t, encoder_hidden_states=audio)
        half = unet.to(torch.float16)(sample.half(), t, encoder_hidden_states=audio.half())
    found["fp16_vs_fp32"] = {"rel_err": relative_error(half, full)}
    unet = unet.to(dtype)
    sample, audio = sample.to(dtype), audio.to(dtype)
    rows = {}
    with torch.no_grad():
        unet.set_attention_backend(create_backend("standard", device, dtype))
        reference = unet(sample, t, encoder_hidden_states=audio)
        for name in BACKENDS:
            ok, reason = availability(name, torch.device(device), dtype)
            if not ok:
                rows[name] = {"available": False, "reason": reason}
                continue
            unet.set_attention_backend(create_backend(name, device, dtype, strict=True))
            rows[name] = {"available": True, "rel_err": relative_error(unet(sample, t, encoder_hidden_states=audio),
                                                                       reference)}
    found["attention"] = {"dtype": str(dtype), "auto": create_backend("auto", device, dtype).name, **rows}
    found["guided_vs_full"] = guided_check(unet, sample, t, audio)
    return found


def guided_check(unet, sample, t, audio) -> dict:
    """The engine's guided call (``GuidedAudio``: the shared part once, the unconditional cross-attentions as their
    bias) against the full call with all-zero audio for the first half: bit for bit on the CPU; here?"""
    from latentsync.models.transformer import GuidedAudio

    same = sample[:1].expand(2, -1, -1, -1, -1)
    conditional = audio[FRAMES:]
    with torch.no_grad():
        full = unet(same, t, encoder_hidden_states=torch.cat([torch.zeros_like(conditional), conditional]))
        guided = unet(same, t, encoder_hidden_states=GuidedAudio(conditional))
    return {"same_bits": bool(torch.equal(full, guided)), "max_abs": float((full - guided).abs().max()),
            "rel_err": relative_error(guided, full)}


def compiled_check(unet, sample, t, audio) -> dict:
    from latentsync.compiled import StaticShapes

    with torch.no_grad():
        eager = unet(sample, t, encoder_hidden_states=audio)
        call = StaticShapes(unet, "default", "the UNet")
        started = time.perf_counter()
        got = call(sample, t, encoder_hidden_states=audio)
        sync(sample.device)
        first = time.perf_counter() - started
    return {"rel_err": relative_error(got, eager), "first_call_s": round(first, 2), "call": call}


def chunk_seconds(unet, resolution: int, steps: int, smoke: bool, device, dtype, vae_batch: int = FRAMES,
                  **tier) -> float:
    from diffusers import AutoencoderKL

    from latentsync.denoise import Chunk, DenoiseSettings, LipSyncDenoiser
    from latentsync.mask import load_mouth_mask

    torch.manual_seed(0)
    vae = AutoencoderKL(**(tiny.TINY_VAE if smoke else SD_VAE_FT_MSE)).eval().requires_grad_(False).to(device, dtype)
    settings = DenoiseSettings(steps=steps, guidance_scale=1.5, vae_batch=vae_batch, **tier)
    mask = torch.from_numpy(load_mouth_mask(resolution).copy())
    denoiser = LipSyncDenoiser(unet, vae, json.loads(SCHEDULER_CONFIG.read_text()), mask, settings, device, dtype)
    generator = torch.Generator().manual_seed(2)
    faces = torch.randint(0, 256, (FRAMES, 3, resolution, resolution), generator=generator, dtype=torch.uint8)
    audio = torch.randn(FRAMES, 50, unet.config.cross_attention_dim, generator=generator)
    denoiser.start()
    denoiser.run([Chunk(faces, audio)])  # warm-up
    sync(device)
    started = time.perf_counter()
    denoiser.run([Chunk(faces, audio)])
    sync(device)
    return round(time.perf_counter() - started, 3)


def published_ms(args, resolution: int) -> dict:
    if not args.published:
        return {"skipped": "no --published checkout given"}
    config = Path(args.published) / "configs" / "unet" / ("stage2_512.yaml" if resolution == 512 else "stage2.yaml")
    env = {**os.environ, "PYTHONPATH": str(Path(args.published).resolve())}  # its own latentsync package, not ours
    command = [args.published_python, "-c", PUBLISHED_UNET, str(config), str(resolution), args.device]
    done = subprocess.run(command, env=env,
                          cwd=args.published, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return {"failed": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed(args, clock: Clock, device, dtype, resolution: int) -> dict:
    from latentsync.models.transformer import GuidedAudio

    if clock.left() < 60:
        return {"skipped": "the time budget is spent"}
    version = "1.6" if resolution == 512 else "1.5"
    unet = unet_for(args.smoke, device, dtype, version)
    unet.set_attention_backend(create_backend("auto", device, dtype))
    sample, t, audio = inputs(unet, resolution, device, dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    guided = (sample[:1].expand(2, -1, -1, -1, -1), GuidedAudio(audio[FRAMES:]))  # as the denoiser calls it
    found = {"unet_call_ms": {"eager": call_ms(lambda: unet(sample, t, encoder_hidden_states=audio), device),
                              "eager_guided": call_ms(lambda: unet(guided[0], t, encoder_hidden_states=guided[1]),
                                                      device)}}
    if not args.smoke and clock.left() > 240:
        compiled = compiled_check(unet, sample, t, audio)
        call = compiled.pop("call")
        found["compiled_vs_eager"] = compiled
        found["unet_call_ms"]["compiled"] = call_ms(lambda: call(sample, t, encoder_hidden_states=audio), device)
    elif not args.smoke:
        found["compiled_vs_eager"] = {"skipped": "the time budget is short"}
    found["unet_call_ms"]["published"] = published_ms(args, resolution)
    found["chunk_s"] = chunk_seconds(unet, resolution, args.steps, args.smoke, device, dtype)
    if device.type == "cuda":
        found["peak_vram_gb"] = round(torch.cuda.max_memory_allocated(device) / 1024 ** 3, 2)
    return found


def vram_tiers(args, clock: Clock, device, dtype, resolution: int) -> dict:
    """Per memory tier (its smallest batches): one 16-frame group denoised as the tier runs it (guidance's halves in
    sequence, the VAE off the GPU during the UNet, the UNet's weights streamed), ``torch.cuda.max_memory_allocated``
    beside the VRAM model's peak for the same work (weights and the denoising thread; the face threads do not run
    here). ``--smoke``: the tiny set on the CPU, the modelled numbers only."""
    from latentsync.models.streaming import streamed_weights
    from latentsync.vram import FUSED_KERNELS, TIERS, GpuWork, ModelShapes, VramModel

    if clock.left() < (10 if args.smoke else 120):
        return {"skipped": "the time budget is spent"}
    version = "1.6" if resolution in (512, 128) else "1.5"
    shapes = (ModelShapes(tiny.TINY_UNET, tiny.TINY_VAE, (80, 1500, 64, 4, 2), resolution, FRAMES) if args.smoke
              else ModelShapes.of_version(version))
    model = VramModel(shapes, None)
    unet = unet_for(args.smoke, device, dtype, version)
    kernel = create_backend("auto", device, dtype)
    unet.set_attention_backend(kernel)
    rows = {}
    for tier in TIERS:
        work = GpuWork(1, 1, 4, (1920, 1080), attention=kernel.name if kernel.name in FUSED_KERNELS else "standard",
                       dtype=str(dtype).removeprefix("torch."), tier=tier)
        peak = model.peak(work)
        modelled = peak.allocated - peak.parts["beside the denoising"]
        row = {"modelled_gb": round(modelled / 1024 ** 3, 3), "stage": peak.stage}
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            with (streamed_weights(unet, device) if tier == "streamed" else contextlib.nullcontext()):
                chunk_seconds(unet, resolution, 2, args.smoke, device, dtype, vae_batch=1,
                              guidance_in_sequence=tier != "default", offload_vae=tier in ("offload", "streamed"))
            measured = torch.cuda.max_memory_allocated(device)
            row.update(measured_gb=round(measured / 1024 ** 3, 3), model_off_by=round(measured / modelled - 1, 3))
        rows[tier] = row
    return rows


def end_to_end(args, clock: Clock, resolution: int) -> dict:
    """Ours from decode to the encoded file (``bench_speed.run_config``), or why it was not run."""
    import tempfile

    import soundfile
    from bench_speed import run_config

    if clock.left() < (30 if args.smoke else 150):
        return {"skipped": "the time budget is spent"}
    settings = argparse.Namespace(size="tiny" if args.smoke else "full", version="1.6" if resolution in (512, 128)
                                  else "1.5", device=args.device, detector=args.detector,
                                  checkpoints=args.checkpoints, steps=args.steps)
    with tempfile.TemporaryDirectory(prefix="latentsync-device-check-") as tmp:
        folder = Path(tmp)
        speech, rate = soundfile.read(MEDIA / "demo1_audio.wav", dtype="int16")
        audio = folder / "speech.wav"
        soundfile.write(audio, speech[: int(args.e2e_frames / 25 * rate) + 1], rate, subtype="PCM_16")
        try:
            return run_config("end_to_end", settings, "auto", "balanced", audio, folder)
        except Exception as error:  # a missing detector, its models: the report says which, the rest still runs
            return {"skipped": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the CPU, the tiny UNet, 2 steps: seconds")
    parser.add_argument("--published", default=None, help="a checkout of the published LatentSync, run beside ours")
    parser.add_argument("--published-python", default=sys.executable, help="the interpreter for the published code")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds; later sections are skipped")
    parser.add_argument("--e2e-frames", type=int, default=None, help="frames of demo1 end to end (64; smoke: 16)")
    parser.add_argument("--detector", default="auto", help="end to end: auto, insightface or dlib")
    parser.add_argument("--checkpoints", default=None, help="end to end: a folder with InsightFace's buffalo_l")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "device_check.json"))
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    args.steps, args.device = (2 if args.smoke else 20), device.type
    resolutions = (64, 128) if args.smoke else (256, 512)  # the tiny UNet's sizes stand for 256 and 512
    clock = Clock(args.budget)
    report = {"benchmark": "device check", "smoke": args.smoke, "device": torch.cuda.get_device_name(device)
              if device.type == "cuda" else platform.processor() or "cpu", "torch": torch.__version__,
              "dtype": str(dtype), "steps": args.steps, "guidance": 1.5}
    report["checks"] = checks(args, device, dtype, resolutions[0])
    report["speed"] = {str(r): speed(args, clock, device, dtype, r) for r in resolutions}
    report["vram"] = {str(r): vram_tiers(args, clock, device, dtype, r) for r in resolutions}
    args.e2e_frames = args.e2e_frames or (16 if args.smoke else 64)
    # the tiny models have one size: the smoke runs end to end once
    report["end_to_end"] = {str(r): end_to_end(args, clock, r) for r in resolutions[:1 if args.smoke else 2]}
    report["end_to_end"]["published"] = {"skipped": "the published pipeline fetches its VAE, Whisper and InsightFace "
                                                    "models from the Hugging Face hub at run time"}
    report["seconds"] = round(time.perf_counter() - clock.started, 1)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
