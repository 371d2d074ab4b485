"""What the exact classifier-free-guidance shortcut saves: UNet FLOPs of one guided call, counted.

    python bench/bench_cfg_flops.py [--version 1.6] [--out bench/results/cfg_flops.json]

With guidance the UNet runs a batch of two halves: the unconditional one (all-zero audio) and the conditional one.
They are identical up to the first cross-attention, and the unconditional half's cross-attention output is exactly
its output projection's bias (zero keys and values). Counted on the full-size UNet (random weights on the meta
device: nothing is computed) with ``torch.utils.flop_counter`` at 256 and 512 px, 16 frames:

- ``shared_before_first_cross_attention``: conv_in, the first resnet and the first self-attention of one half;
- ``unconditional_cross_attention``: every cross-attention of the unconditional half (the engine computes them as
  their output bias, ``GuidedAudio``: the same bits).

Also checked on the CPU (tiny reference UNet, real weights): whether the part before the split gives the same bits
at half the batch, which the shortcut needs to be bitwise equal to the full call. JSON out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latentsync.checkpoints import get_version  # noqa: E402
from latentsync.models.loading import load_unet, load_unet_config  # noqa: E402
from latentsync.models.unet import UNet3DConditionModel  # noqa: E402
from report import write_report  # noqa: E402

FRAMES = 16


def before_first_cross_attention(unet, sample: torch.Tensor, timestep) -> dict[str, torch.Tensor]:
    """The activations of one batch up to the first cross-attention (its input), by stage name."""
    b, c, f, h, w = sample.shape
    temb = F.silu(unet._time_embedding(timestep, b, sample.device))
    x = unet.conv_in(sample.transpose(1, 2).reshape(b * f, c, h, w))
    found = {"conv_in": x}
    block, transformer = unet.down_blocks[0], unet.down_blocks[0].attentions[0]
    x = found["resnet"] = block.resnets[0](x, temb, f)
    bf, channels, hh, ww = x.shape
    tokens = transformer.norm(x).permute(0, 2, 3, 1).reshape(bf, hh * ww, channels)
    tokens = F.linear(tokens, transformer.proj_in.weight.view(channels, channels), transformer.proj_in.bias)
    first = transformer.transformer_blocks[0]
    found["self_attention"] = first.attn1(first.norm1(tokens), hw=(hh, ww)).add_(tokens)
    return found


def flops(config: dict, resolution: int) -> dict:
    with torch.device("meta"):
        unet = UNet3DConditionModel(**config)
        latent = resolution // 8
        sample = torch.empty(2, config["in_channels"], FRAMES, latent, latent)
        audio = torch.empty(2 * FRAMES, 50, config["cross_attention_dim"])
        timestep = torch.tensor(500)
    with FlopCounterMode(display=False) as whole:
        unet(sample, timestep, encoder_hidden_states=audio)
    with FlopCounterMode(display=False) as shared:
        before_first_cross_attention(unet, sample[:1], timestep)
    total = whole.get_total_flops()
    cross = sum(sum(counts.values()) for name, counts in whole.get_flop_counts().items() if name.endswith("attn2"))
    saved = shared.get_total_flops() + cross / 2
    return {"resolution": resolution, "guided_call_gflop": round(total / 1e9, 1),
            "shared_before_first_cross_attention": round(shared.get_total_flops() / total, 5),
            "unconditional_cross_attention": round(cross / 2 / total, 5), "saved_share": round(saved / total, 5)}


def half_batch_bits() -> dict:
    """On the CPU, float32 and float16: does each stage before the split give the same bits for a batch of one half
    as for the batch of both (the tiny reference UNet)?"""
    reference = REPO.parent / "shared" / "reference"
    from safetensors.torch import load_file

    unet = load_unet(reference / "unet_tiny.safetensors", reference / "unet_tiny_config.json").eval()
    sample = load_file(str(reference / "unet_tiny.safetensors"))["sample"]
    result = {}
    for dtype in (torch.float32, torch.float16):
        model, half = unet.to(dtype), sample.to(dtype)
        with torch.no_grad():
            both = before_first_cross_attention(model, torch.cat([half, half]), 500)
            alone = before_first_cross_attention(model, half, 500)
        n = len(alone["conv_in"])
        result[str(dtype).replace("torch.", "")] = {name: bool(torch.equal(both[name][n:], alone[name]))
                                                    for name in alone}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.6", choices=["1.6", "1.5"])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "cfg_flops.json"))
    args = parser.parse_args(argv)
    config = load_unet_config(get_version(args.version).unet_config)
    write_report({"benchmark": "UNet FLOPs the exact CFG shortcut would save", "version": args.version,
                  "frames": FRAMES, "flops": [flops(config, r) for r in (256, 512)],
                  "same_bits_at_half_batch_cpu": half_batch_bits()}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
