"""What the exact classifier-free-guidance shortcut saves: UNet FLOPs of one guided call, counted.

    python bench/bench_cfg_flops.py [--version 1.6] [--out bench/results/cfg_flops.json]

With guidance the UNet runs a batch of two halves: the unconditional one (all-zero audio) and the conditional one.
They are the same up to the first cross-attention, and the unconditional half's cross-attention output is exactly its
output projection's bias (zero keys and values). The engine's guided call (``GuidedAudio``) computes the shared part
once and those cross-attentions as their bias. Counted on the full-size UNet (random weights on the meta device:
nothing is computed) with ``torch.utils.flop_counter`` at 256 and 512 px, 16 frames: the guided call against the
full call (the baseline, both halves computed, the unconditional one with all-zero audio), and the shares of the two
parts (the full call's cross-attentions; conv_in, the first resnet and the first self-attention of one half).

Also checked on the CPU (tiny reference UNet, real weights, float32 and float16, standard and SDPA attention):
whether the guided call gives the full call's bits. JSON out.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import REPO, write_report  # first: puts the repository on the path
from latentsync.attention.selection import create_backend
from latentsync.checkpoints import get_version
from latentsync.models.loading import load_unet, load_unet_config
from latentsync.models.transformer import GuidedAudio
from latentsync.models.unet import UNet3DConditionModel

FRAMES = 16


def counted(call) -> FlopCounterMode:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter


def flops(config: dict, resolution: int) -> dict:
    with torch.device("meta"):
        unet = UNet3DConditionModel(**config)
        latent = resolution // 8
        sample = torch.empty(1, config["in_channels"], FRAMES, latent, latent).expand(2, -1, -1, -1, -1)
        audio = torch.empty(FRAMES, 50, config["cross_attention_dim"])
        zeros_first = torch.cat([torch.zeros_like(audio), audio])
        timestep = torch.tensor(500)
    full = counted(lambda: unet(sample, timestep, encoder_hidden_states=zeros_first))
    guided = counted(lambda: unet(sample, timestep, encoder_hidden_states=GuidedAudio(audio)))
    total, built = full.get_total_flops(), guided.get_total_flops()
    cross = sum(sum(counts.values()) for name, counts in full.get_flop_counts().items() if name.endswith("attn2"))
    return {"resolution": resolution, "full_call_gflop": round(total / 1e9, 1),
            "guided_call_gflop": round(built / 1e9, 1), "saved_share": round(1 - built / total, 5),
            "of_which_unconditional_cross_attention": round(cross / 2 / total, 5),
            "of_which_shared_before_first_cross_attention": round(1 - built / total - cross / 2 / total, 5)}


def same_bits() -> dict:
    """On the CPU: does the guided call give the bits of the full call (the tiny reference UNet)?"""
    from safetensors.torch import load_file

    reference = REPO.parent / "shared" / "reference"
    unet = load_unet(reference / "unet_tiny.safetensors", reference / "unet_tiny_config.json").eval()
    tensors = load_file(str(reference / "unet_tiny.safetensors"))
    result = {}
    for dtype in (torch.float32, torch.float16):
        model = unet.to(dtype)
        sample = tensors["sample"][:1].to(dtype).expand(2, -1, -1, -1, -1)
        audio = tensors["audio"][len(tensors["audio"]) // 2:].to(dtype)
        for attention in ("standard", "flash"):
            model.set_attention_backend(create_backend(attention, "cpu", dtype, strict=True))
            with torch.no_grad():
                full = model(sample, 500, encoder_hidden_states=torch.cat([torch.zeros_like(audio), audio]))
                guided = model(sample, 500, encoder_hidden_states=GuidedAudio(audio))
            result[f"{str(dtype).replace('torch.', '')} {attention}"] = bool(torch.equal(full, guided))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.6", choices=["1.6", "1.5"])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "cfg_flops.json"))
    args = parser.parse_args(argv)
    config = load_unet_config(get_version(args.version).unet_config)
    write_report({"benchmark": "UNet FLOPs the exact CFG shortcut saves", "version": args.version,
                  "frames": FRAMES, "flops": [flops(config, r) for r in (256, 512)],
                  "guided_call_same_bits_as_full_cpu": same_bits()}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
