"""How much GPU memory a run needs, per version, attention kernel, precision and memory tier: counted, not guessed.

    python bench/bench_vram.py [--published PATH] [--frame 1920x1080] [--plot] [--out bench/results/vram.json]

Every number comes from ``latentsync.vram``: the project's own modules at full size under FakeTensorMode with a
live-bytes tracker (the CPU, seconds, nothing computed). For each version (1.6 at 512 px, 1.5 at 256 px), kernel
(flash = SDPA, standard) and precision, each tier with its smallest batches (one chunk per UNet call, VAE batch 1,
face batch 4) and the default tier with the plan a 24 GB card gets: the peak the tracker counts (``allocated``: what
torch.cuda.max_memory_allocated would say), the stage that sets it, and the card size it needs (plus the constants
the tracker cannot see: CUDA context, cuBLAS/cuDNN workspaces, the detector's arena, fragmentation).

``--published``: a checkout of the published LatentSync, whose UNet is built from its own config and counted under
the same tracker in a child process (its package is its own ``latentsync``; its utils module, which imports
torchvision and decord for training, is replaced by the one function its UNet uses). Its run per 16 frames: one
guided UNet call of both halves, the VAE encoding 2 x 16 frames and decoding 16 at once (the same diffusers VAE as
ours), and every decoded face kept on the GPU until the video ends (``synced_video_frames``): that part grows with
the video, counted per frame.

``--plot`` draws the table into docs/vram.png (matplotlib: ``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import REPO, write_report  # first: puts the repository on the path
from latentsync.memory_limiter import Hardware, Workload, plan_memory
from latentsync.options import PipelineOptions
from latentsync.vae import SD_VAE_FT_MSE
from latentsync.vram import (CUDA_CONTEXT, GB, TIER_HELP, TIERS, GpuWork, VramModel)

VERSIONS = {"1.6": 512, "1.5": 256}
CARDS = (4, 6, 8, 12, 16, 24)  # GB, the lines on the chart
BIG_CARD = Hardware("cuda", "a 24 GB card", 24 * GB, 23 * GB, (8, 9), 64 * GB, 48 * GB)
SMALLEST = (1, 1, 4)  # chunks per UNet call, VAE batch, face batch
# the published UNet under our tracker, in a child process run from its checkout
PUBLISHED = """
import json, sys, types, importlib.util, torch
spec = importlib.util.spec_from_file_location("vram_tracker", sys.argv[1])
tracker_module = importlib.util.module_from_spec(spec); spec.loader.exec_module(tracker_module)
util = types.ModuleType("latentsync.utils.util"); util.zero_rank_log = lambda *a, **k: None
sys.modules["latentsync.utils.util"] = util
import yaml
from torch._subclasses.fake_tensor import FakeTensorMode
from diffusers import AutoencoderKL
from latentsync.models.unet import UNet3DConditionModel
config = yaml.safe_load(open(sys.argv[2]))["model"]
config["norm_eps"] = float(config["norm_eps"])  # YAML 1.1 reads 1e-5 as text
resolution, vae_config = int(sys.argv[3]), json.loads(sys.argv[4])
mode = FakeTensorMode(allow_non_fake_inputs=True)
torch.set_default_dtype(torch.float16)
with mode:
    unet = UNet3DConditionModel.from_config(config).eval().requires_grad_(False)
    vae = AutoencoderKL(**vae_config).eval().requires_grad_(False)
torch.set_default_dtype(torch.float32)
size = lambda m: sum(p.untyped_storage().nbytes() for p in m.parameters())
found = {"weights": {"unet": size(unet), "vae": size(vae)}}
latent = resolution // 8
with mode, torch.no_grad():
    sample = torch.empty(2, 13, 16, latent, latent, dtype=torch.float16)
    audio = torch.empty(32, 50, config["cross_attention_dim"], dtype=torch.float16)
    faces = torch.empty(16, 3, resolution, resolution, dtype=torch.float16)
    for stage, work in (("unet", lambda: unet(sample, torch.tensor(500), encoder_hidden_states=audio)),
                        ("vae encode", lambda: [vae.encode(faces).latent_dist.sample() for _ in range(2)]),
                        ("vae decode", lambda: vae.decode(torch.empty(16, 4, latent, latent,
                                                                       dtype=torch.float16)).sample)):
        counter = tracker_module.LiveBytes()
        counter.ignore(unet, vae)
        with counter:
            work()
        found[stage] = counter.peak
print(json.dumps(found))
"""


def tier_rows(model: VramModel, version: str, frame: tuple[int, int], attention: str, dtype: str) -> list[dict]:
    rows = []
    for tier in TIERS:
        peak = model.peak(GpuWork(*SMALLEST, frame_shape=frame, attention=attention, dtype=dtype, tier=tier))
        rows.append(row(version, attention, dtype, tier, SMALLEST, peak))
    return rows


def row(version, attention, dtype, tier, batches, peak) -> dict:
    return {"version": version, "attention": attention, "dtype": dtype, "tier": tier,
            "batches": dict(zip(("chunks_per_call", "vae_batch", "face_batch"), batches)),
            "allocated_gb": round(peak.allocated / GB, 2), "stage": peak.stage,
            "card_gb": round((peak.total + CUDA_CONTEXT) / GB, 2),
            "stages_gb": {name: round(value / GB, 2) for name, value in peak.parts["stages"].items()}}


def default_plan(model: VramModel, version: str, frame: tuple[int, int], frames: int) -> dict:
    """The plan a 24 GB card gets (``plan_memory``, the budget given), for a video of ``frames`` frames."""
    plan = plan_memory(BIG_CARD, Workload(VERSIONS[version], frames, frame), PipelineOptions(vram_budget=24), model)
    return {"frames": frames, "tier": plan.tier, "batches": [plan.chunks_per_call, plan.vae_batch, plan.face_batch],
            "modelled_gb": round(plan.modelled_peak / GB, 2), "reason": plan.reasons[0]}


def published(args, version: str) -> dict:
    if not args.published:
        return {"skipped": "no --published checkout given"}
    checkout = Path(args.published).resolve()
    config = checkout / "configs" / "unet" / ("stage2_512.yaml" if version == "1.6" else "stage2.yaml")
    command = [args.published_python, "-c", PUBLISHED, str(REPO / "latentsync" / "vram_tracker.py"), str(config),
               str(VERSIONS[version]), json.dumps(SD_VAE_FT_MSE)]
    done = subprocess.run(command, cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"failed": (done.stderr.strip().splitlines() or [f"rc {done.returncode}"])[-1]}
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    weights = sum(counts.pop("weights").values())
    stage = max(counts, key=counts.get)
    per_frame = 3 * VERSIONS[version] ** 2 * 2  # a decoded face in float16, kept until the end
    return {"weights_gb": round(weights / GB, 2), "stages_gb": {k: round(v / GB, 2) for k, v in counts.items()},
            "stage": stage, "allocated_gb": round((weights + counts[stage]) / GB, 2),
            "grows_mb_per_frame": round(per_frame / 2 ** 20, 2),
            "allocated_10s_gb": round((weights + counts[stage] + 250 * per_frame) / GB, 2),
            "allocated_10min_gb": round((weights + counts[stage] + 15000 * per_frame) / GB, 2)}


def plot(report: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for axis, version in zip(axes, VERSIONS):
        rows = [r for r in report["rows"] if r["version"] == version and r["attention"] == "flash"
                and r["dtype"] == "float16"]
        labels = [r["tier"] for r in rows]
        for index, r in enumerate(rows):
            axis.bar(index, r["allocated_gb"], color="#4C72B0", label="ours: counted peak" if not index else None)
            axis.bar(index, r["card_gb"] - r["allocated_gb"], bottom=r["allocated_gb"], color="#A1C9F4",
                     label="+ context, workspaces, arena, fragmentation" if not index else None)
            axis.text(index, r["card_gb"] + 0.1, f"{r['card_gb']:.1f}\n({r['stage']})", ha="center", fontsize=8)
        found = report["published"].get(version, {})
        if "allocated_10s_gb" in found:
            axis.bar(len(rows), found["allocated_10s_gb"], color="#DD8452", label="published, 10 s clip")
            axis.bar(len(rows) + 1, min(found["allocated_10min_gb"], 30), color="#C44E52",
                     label="published, 10 min clip" + (" (cut at 30)" if found["allocated_10min_gb"] > 30 else ""))
            labels += ["published\n10 s", "published\n10 min"]
        for card in CARDS:
            axis.axhline(card, color="grey", linewidth=0.6, linestyle=":")
            axis.text(len(labels) - 0.4, card, f"{card} GB", fontsize=7, va="bottom", color="grey")
        axis.set_xticks(range(len(labels)), labels)
        axis.set_title(f"LatentSync {version} ({VERSIONS[version]} px), float16, 16-frame groups")
        axis.set_ylabel("GPU memory (GB)")
    axes[0].legend(loc="upper right", fontsize=8)
    figure.suptitle("Peak VRAM per memory tier (smallest batches; 1080x1920 video), counted on the real modules")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--published", default=None, help="a checkout of the published LatentSync")
    parser.add_argument("--published-python", default=sys.executable)
    parser.add_argument("--frame", default="1920x1080", help="the video's HEIGHTxWIDTH")
    parser.add_argument("--dtypes", default="float16,float32")
    parser.add_argument("--plot", action="store_true", help="also draw docs/vram.png")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "vram.json"))
    args = parser.parse_args(argv)
    frame = tuple(int(n) for n in args.frame.split("x"))
    report = {"benchmark": "vram", "frame": list(frame), "tiers": TIER_HELP, "rows": [], "default_plans": {},
              "published": {}}
    for version in VERSIONS:
        model = VramModel.of_version(version)
        for dtype in args.dtypes.split(","):
            for attention in ("flash", "standard"):
                report["rows"] += tier_rows(model, version, frame, attention, dtype)
        report["default_plans"][version] = [default_plan(model, version, frame, frames) for frames in (250, 15000)]
        report["published"][version] = published(args, version)
    write_report(report, args.out)
    if args.plot:
        plot(report, REPO / "docs" / "vram.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
