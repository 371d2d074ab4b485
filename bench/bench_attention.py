"""Attention backends on LatentSync-shaped problems; prints JSON.

Problems (LatentSync 1.6, 512 px -> 64x64 latents, 8 heads; level L has a (64/2^L)^2 token grid and
channels 320/640/1280/1280, head_dim = channels/8):
  spatial_self  (frames, 8, hw, hd) x (frames, 8, hw, hd)
  audio_cross   (frames, 8, hw, hd) x (frames, 8, 50, hd)      (50 audio tokens per frame)
  temporal_self (pixels, 8, 16, hd)                              (one chunk of 16 frames per pixel)
``frames`` = video frames attended in one call (16 per chunk, x2 with classifier-free guidance).
Defaults: CPU: float32, level 0, 1 frame; CUDA: float16 + bfloat16, levels 0-3, 32 frames (16 x CFG).
Each backend is timed in the same run as ``standard`` (the baseline): ``speedup`` = standard time / time.
``flex+lip2`` is flex with lip_focus=2 (the mouth bias on spatial_self) to show the cost of the score_mod.
With CUDA and latentsync.models.unet present, also a full-size UNet forward (random weights,
latentsync/configs/unet/stage2_512.yaml) per backend (skip with --no-unet).

    python bench/bench_attention.py [--levels 0,1] [--frames 16] [--reps 5] [--dtypes float16]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch

from common import REPO  # first: puts the repository on the path
from latentsync.attention.core import StandardAttention, relative_error
from latentsync.attention.registry import BACKENDS
from latentsync.attention.selection import availability, backend_report, create_backend

CHANNELS = (320, 640, 1280, 1280)
HEADS = 8


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, reps):
    fn()  # warm-up (and compile for flex on CUDA)
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def problems(levels, frames, latent=64):
    out = []
    for lvl in levels:
        side = latent // (2 ** lvl)
        hd = CHANNELS[lvl] // HEADS
        n = side * side
        out.append(dict(name=f"L{lvl}_spatial_self_{side}x{side}_hd{hd}", role="spatial_self", hw=(side, side),
                        q=(frames, HEADS, n, hd), k=(frames, HEADS, n, hd)))
        out.append(dict(name=f"L{lvl}_audio_cross_{side}x{side}_to50_hd{hd}", role="audio_cross", hw=(side, side),
                        q=(frames, HEADS, n, hd), k=(frames, HEADS, 50, hd)))
        pixels = n * max(1, frames // 16)
        out.append(dict(name=f"L{lvl}_temporal_self_16f_{pixels}px_hd{hd}", role="temporal_self", hw=None,
                        q=(pixels, HEADS, 16, hd), k=(pixels, HEADS, 16, hd)))
    return out


def bench_kernels(device, dtype, levels, frames, reps):
    names = [n for n in BACKENDS if availability(n, device, dtype)[0]]
    backends = {n: create_backend(n, device, dtype, strict=True) for n in names}
    if "flex" in names:
        backends["flex+lip2"] = create_backend("flex", device, dtype, lip_focus=2.0, strict=True)
    rows = []
    g = torch.Generator().manual_seed(0)
    for p in problems(levels, frames):
        q = torch.randn(*p["q"], generator=g).to(device, dtype)
        k = torch.randn(*p["k"], generator=g).to(device, dtype)
        v = torch.randn(*p["k"], generator=g).to(device, dtype)
        row = {"problem": p["name"], "role": p["role"], "q": list(p["q"]), "k": list(p["k"]), "backends": {}}
        with torch.no_grad():
            ref = StandardAttention()(q.float(), k.float(), v.float(), role=p["role"], hw=p["hw"])
            t_std = None
            for n in ["standard"] + [b for b in backends if b != "standard"]:
                b = backends[n]
                entry = {}
                try:
                    t = _time(lambda: b(q, k, v, role=p["role"], hw=p["hw"]), device, reps)
                    out = b(q, k, v, role=p["role"], hw=p["hw"])
                    entry["ms"] = round(t * 1e3, 4)
                    if n != "flex+lip2":
                        entry["rel_err_vs_fp32_standard"] = relative_error(out, ref)
                    if n == "standard":
                        t_std = t
                    entry["speedup_vs_standard"] = round(t_std / t, 3) if t_std else None
                except Exception as exc:  # e.g. OOM of the explicit kernel on a big problem
                    entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                row["backends"][n] = entry
        rows.append(row)
        del q, k, v, ref
    return rows


def bench_unet(device, dtype, frames, reps):
    try:
        import yaml
        from latentsync.models.unet import UNet3DConditionModel
    except Exception as exc:
        return {"skipped": f"UNet unavailable: {exc}"}
    cfg_path = REPO / "configs" / "unet" / "stage2_512.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg = cfg.get("model", cfg)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            unet = UNet3DConditionModel(**cfg)
        unet = unet.to(dtype).eval().requires_grad_(False)
    except Exception as exc:
        return {"skipped": f"could not build the UNet from {cfg_path}: {type(exc).__name__}: {exc}"}
    b = max(1, frames // 16)
    latent = 64
    sample = torch.randn(b, cfg.get("in_channels", 13), 16, latent, latent, device=device, dtype=dtype)
    audio = torch.randn(b * 16, 50, cfg.get("cross_attention_dim", 384), device=device, dtype=dtype)
    res = {"input": list(sample.shape), "audio": list(audio.shape), "backends": {}}
    t_std = None
    for n in ["standard"] + [x for x in BACKENDS if x != "standard"]:
        if not availability(n, device, dtype)[0]:
            continue
        unet.set_attention_backend(create_backend(n, device, dtype, strict=True))
        try:
            with torch.no_grad():
                t = _time(lambda: unet(sample, 500, encoder_hidden_states=audio), device, reps)
            if n == "standard":
                t_std = t
            res["backends"][n] = {"ms": round(t * 1e3, 2),
                                  "speedup_vs_standard": round(t_std / t, 3) if t_std else None}
        except Exception as exc:
            res["backends"][n] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            torch.cuda.empty_cache()
        if device.type == "cuda":
            res["backends"][n]["max_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(device)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default=None, help="comma list, e.g. float16,bfloat16")
    ap.add_argument("--levels", default=None, help="UNet levels, comma list of 0..3")
    ap.add_argument("--frames", type=int, default=None, help="frames per attention call")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--no-unet", action="store_true")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtypes = args.dtypes.split(",") if args.dtypes else (["float16", "bfloat16"] if cuda else ["float32"])
    levels = [int(x) for x in args.levels.split(",")] if args.levels else ([0, 1, 2, 3] if cuda else [0])
    frames = args.frames or (32 if cuda else 1)
    reps = args.reps or (10 if cuda else 3)

    result = {
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "frames_per_call": frames, "levels": levels, "reps": reps,
        "baseline": "standard (same run)", "dtypes": {},
    }
    for name in dtypes:
        dtype = getattr(torch, name)
        entry = {"report": backend_report(device, dtype),
                 "kernels": bench_kernels(device, dtype, levels, frames, reps)}
        if cuda and not args.no_unet:
            entry["unet_forward"] = bench_unet(device, dtype, frames, max(2, reps // 3))
        result["dtypes"][name] = entry
    print(json.dumps(result, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))


if __name__ == "__main__":
    main()
