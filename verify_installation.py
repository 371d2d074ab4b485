"""Tell what works on this machine: torch / CUDA, attention backends, ffmpeg / NVENC, face detectors, checkpoints.

    python verify_installation.py [--json] [--checkpoints DIR] [--version 1.6|1.5]

Exits non-zero when the default path (LatentSync 1.6, auto attention, auto detector) cannot run here, after
printing what to do about it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the library importable from this folder
    sys.path.insert(0, str(Path(__file__).resolve().parent))


def _section(name, fn):
    try:
        return fn()
    except Exception as error:  # a broken component is a finding, not a crash of the report
        return {"error": f"{type(error).__name__}: {error}", "section": name}


def torch_report() -> dict:
    import torch

    report = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available":
              torch.cuda.is_available(), "cuda": torch.version.cuda, "gpus": []}
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        report["gpus"].append({"name": props.name, "vram_gb": round(props.total_memory / 1024 ** 3, 1),
                               "capability": f"{props.major}.{props.minor}"})
    try:
        import xformers

        report["xformers"] = xformers.__version__
    except ImportError:
        report["xformers"] = None
    return report


def attention_report(device: str) -> list[dict]:
    import torch

    from latentsync.attention.selection import backend_report

    dtypes = [torch.float32] if device == "cpu" else [torch.float16, torch.bfloat16]
    rows = []
    for dtype in dtypes:
        rows += backend_report(torch.device(device), dtype)
    return rows


def onnxruntime_report() -> dict:
    """Which onnxruntime build runs InsightFace's detector, and with which providers (two builds overwrite one
    module: the GPU one then loses CUDA)."""
    from latentsync.tools.choose_onnxruntime import installed_builds

    builds = installed_builds()
    report = {"builds": builds, "providers": []}
    try:
        import onnxruntime

        report["version"] = onnxruntime.__version__
        report["providers"] = onnxruntime.get_available_providers()
    except ImportError:
        report["version"] = None
    if len(builds) > 1:
        report["problem"] = (f"{' and '.join(builds)} are both installed and share one module: uninstall both, "
                             "then pip install only onnxruntime-gpu (CUDA) or onnxruntime")
    return report


def ffmpeg_report() -> dict:
    from latentsync.video import find_ffmpeg, nvenc_available

    try:
        binary = find_ffmpeg()
    except Exception as error:
        return {"ffmpeg": None, "nvenc": False, "error": str(error)}
    return {"ffmpeg": binary, "nvenc": nvenc_available(binary)}


def detector_report(root: Path) -> dict:
    from latentsync.face.detectors import available_detectors

    return {name: {"available": ok, "reason": reason} for name, (ok, reason) in available_detectors(root).items()}


def vram_report(device: str) -> dict:
    """For the card found: the memory tier each version would run at with the VRAM free now, and its modelled
    peak (counted on the real modules, cached in the user's cache folder after the first time)."""
    if device != "cuda":
        return {"skipped": "no CUDA GPU (bench/bench_vram.py shows the card each tier needs)"}
    from latentsync.memory_limiter import OutOfMemory, Workload, detect_hardware, plan_memory
    from latentsync.vram import CUDA_CONTEXT, GB, VramModel

    hardware, found = detect_hardware("cuda"), {}
    for version, resolution in (("1.6", 512), ("1.5", 256)):
        try:
            plan = plan_memory(hardware, Workload(resolution), None, VramModel.of_version(version))
            found[version] = {"tier": plan.tier, "modelled_gb": round((plan.modelled_peak + CUDA_CONTEXT) / GB, 2),
                              "batches": [plan.chunks_per_call, plan.vae_batch, plan.face_batch]}
        except OutOfMemory as error:
            found[version] = {"tier": None, "error": str(error)}
    return {"card": hardware.name, "free_gb": round(hardware.free_vram / GB, 2), "versions": found}


def checkpoint_report(version: str, folder: str | None, unet_config: str | None = None) -> dict:
    from latentsync.checkpoints import (BUFFALO_DIR, BUFFALO_FILES, VAE_FILES, WHISPER_FILE, describe_file,
                                        get_version, search_dirs)
    from latentsync.models.loading import check_unet_file, load_unet_config

    spec = get_version(version)
    root = next((d for d in search_dirs(folder) if (d / spec.unet_file).is_file()), search_dirs(folder)[0])
    files = {"unet": describe_file(root / spec.unet_file), "whisper": describe_file(root / WHISPER_FILE)}
    for name in VAE_FILES:
        files[f"vae/{name}"] = describe_file(root / "vae" / name)
    if files["unet"]["present"]:
        files["unet"]["loadable"] = _loadable(lambda: check_unet_file(root / spec.unet_file,
                                                                      load_unet_config(unet_config or spec.unet_config)))
    if files["whisper"]["present"]:
        from latentsync.audio import WhisperEncoder

        files["whisper"]["loadable"] = _loadable(lambda: WhisperEncoder.from_checkpoint(root / WHISPER_FILE))
    if all(files[f"vae/{name}"]["present"] for name in VAE_FILES):  # every file it reports is really read
        from latentsync.vae import load_vae

        files[f"vae/{VAE_FILES[-1]}"]["loadable"] = _loadable(lambda: load_vae(root / "vae"))
    for name in BUFFALO_FILES:  # the face models: optional (dlib stands in), but checked when present
        info = files[f"buffalo_l/{name}"] = describe_file(root / BUFFALO_DIR / name)
        if info["present"]:
            info["loadable"] = _loadable(lambda path=root / BUFFALO_DIR / name: _onnx_session(path))
    return {"root": str(root), "version": version, "files": files}


def _onnx_session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _loadable(check) -> bool | str:
    try:
        check()
        return True
    except Exception as error:
        return f"{type(error).__name__}: {error}"


def problems(report: dict) -> list[str]:
    """What stops the default path, each with the fix."""
    from latentsync.checkpoints import DEFAULT_CHECKPOINTS, download_command

    found = []
    torch_info = report["torch"]
    if "error" in torch_info:
        found.append(f"torch does not import ({torch_info['error']}): install PyTorch for your GPU from pytorch.org")
    attention = report["attention"]
    if isinstance(attention, dict) or not any(row.get("available") for row in attention):
        found.append("no attention backend works: reinstall torch (>= 2.4)")
    ffmpeg = report["ffmpeg"]
    if not ffmpeg.get("ffmpeg"):
        found.append("ffmpeg not found: pip install imageio-ffmpeg (or install ffmpeg on your PATH)")
    if report.get("onnxruntime", {}).get("problem"):
        found.append(report["onnxruntime"]["problem"])
    detectors = report["detectors"]
    if "error" in detectors or not any(d["available"] for d in detectors.values()):
        found.append("no face detector works: pip install dlib-bin face_recognition_models, or download buffalo_l "
                     f"with {download_command(None, DEFAULT_CHECKPOINTS)}")
    checkpoints = report["checkpoints"]
    if "error" in checkpoints:
        found.append(f"checkpoints could not be checked: {checkpoints['error']}")
    else:
        for name, info in checkpoints["files"].items():
            if name.startswith("buffalo_l/") and not info["present"]:
                continue  # optional: without it the dlib detector stands in (the detectors section says so)
            if not info["present"] or info.get("loadable", True) is not True:
                why = "missing" if not info["present"] else f"not loadable ({info['loadable']})"
                command = download_command(checkpoints["version"], Path(checkpoints["root"]))
                found.append(f"checkpoint {info['path']} {why}: run {command}")
    return found


def build_report(version: str, folder: str | None, unet_config: str | None = None) -> dict:
    report = {"torch": _section("torch", torch_report)}
    device = "cuda" if report["torch"].get("cuda_available") else "cpu"
    report["runs_on"] = device
    report["attention"] = _section("attention", lambda: attention_report(device))
    report["vram"] = _section("vram", lambda: vram_report(device))
    report["ffmpeg"] = _section("ffmpeg", ffmpeg_report)
    report["onnxruntime"] = _section("onnxruntime", onnxruntime_report)
    report["checkpoints"] = _section("checkpoints", lambda: checkpoint_report(version, folder, unet_config))
    root = Path(report["checkpoints"].get("root", "checkpoints"))
    report["detectors"] = _section("detectors", lambda: detector_report(root))
    report["problems"] = problems(report)
    report["ok"] = not report["problems"]
    return report


def print_table(report: dict) -> None:
    t = report["torch"]
    print("LatentSync MEMSAFE installation check\n")
    if "error" in t:
        print(f"  torch        BROKEN  {t['error']}")
    else:
        gpus = ", ".join(f"{g['name']} ({g['vram_gb']} GB, sm {g['capability']})" for g in t["gpus"]) or "none"
        print(f"  python       {t['python']}\n  torch        {t['torch']} (CUDA {t['cuda'] or '-'})\n  GPUs         {gpus}")
        print(f"  xformers     {t['xformers'] or 'not installed'}")
    print("\n  attention backend   dtype      available  max rel err  time vs standard  note")
    attention = report["attention"]
    for row in attention if isinstance(attention, list) else []:
        err = row.get("max_rel_err")
        speed = row.get("rel_time")
        print(f"  {row['name']:<19} {row.get('dtype', ''):<10} {'yes' if row['available'] else 'no':<10} "
              f"{'-' if err is None else f'{err:.1e}':<12} {'-' if speed is None else f'{speed:.2f}x':<17} "
              f"{row.get('reason') or ''}")
    if isinstance(attention, dict):
        print(f"  BROKEN: {attention['error']}")
    vram = report["vram"]
    if "versions" in vram:
        print(f"\n  VRAM ({vram['card']}, {vram['free_gb']} GB free)")
        for version, info in vram["versions"].items():
            print(f"    LatentSync {version}: " + (f"{info['tier']} tier, modelled peak {info['modelled_gb']} GB"
                                                   if info["tier"] else info["error"]))
    else:
        print(f"\n  VRAM         {vram.get('skipped') or vram.get('error')}")
    f = report["ffmpeg"]
    print(f"\n  ffmpeg       {f.get('ffmpeg') or 'NOT FOUND'}\n  NVENC        {'yes' if f.get('nvenc') else 'no'}")
    o = report["onnxruntime"]
    if "error" not in o:
        runs = f"{o['version']} from {', '.join(o['builds']) or '?'}" if o["version"] else "not installed (dlib only)"
        print(f"  onnxruntime  {runs}; providers: {', '.join(o['providers']) or '-'}")
    print("\n  face detector")
    detectors = report["detectors"]
    for name, info in ({} if "error" in detectors else detectors).items():
        print(f"    {name:<12} {'yes' if info['available'] else 'no':<4} {info['reason'] or ''}")
    c = report["checkpoints"]
    if "error" not in c:
        print(f"\n  checkpoints ({c['root']}, LatentSync {c['version']})")
        for name, info in c["files"].items():
            state = "present" if info["present"] else "MISSING"
            if info.get("size"):
                state += f", {info['size'] / 1e6:.1f} MB" + ("" if info.get("plausible", True) else " (small)")
            if "loadable" in info:
                state += ", loads" if info["loadable"] is True else f", DOES NOT LOAD: {info['loadable']}"
            print(f"    {name:<40} {state}")
    print()
    if report.get("runs_on") == "cpu":
        print("No GPU is usable here: the models would run on the CPU, minutes for every second of video. Install "
              "a CUDA build of torch for your GPU (pytorch.org) if this machine has one.\n")
    if report["ok"]:
        print("Everything the default path needs works here.")
    else:
        print("Problems:")
        for problem in report["problems"]:
            print(f"  - {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--checkpoints", default=None, help="checkpoints folder to check")
    parser.add_argument("--version", default="1.6", choices=["1.6", "1.5"])
    parser.add_argument("--unet-config", default=None, help="UNet yaml, when not the version's own")
    args = parser.parse_args(argv)
    report = build_report(args.version, args.checkpoints, args.unet_config)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_table(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
