"""The UNet's weights streamed from pinned host memory, a group at a time, the next group copied on a side stream
while the current one computes: for cards smaller than the weights plus the activations. diffusers' block-level group
offloading does it; ``STREAM_BLOCKS`` makes its groups each resnet, transformer and motion module of a block (not
whole blocks, of which two would stay on the GPU: 1.4 GB for 1.6)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

# the modules diffusers descends into: the block lists, each block (named by its index), the middle block
STREAM_BLOCKS = ("down_blocks", "up_blocks", "mid_block", *map(str, range(8)))
HOOKS = ("group_offloading", "lazy_prefetch_group_offloading", "layer_execution_tracker")


def stream_groups(unet: nn.Module) -> list[list[nn.Module]]:
    """The modules of each group diffusers makes with ``STREAM_BLOCKS`` (tested against its hooks): every item of a
    ModuleList is a group; what a descended module holds besides is one group."""
    groups = []

    def descend(module: nn.Module) -> None:
        rest = []
        for name, child in module.named_children():
            if name in STREAM_BLOCKS:
                descend(child)
            elif isinstance(child, (nn.ModuleList, nn.Sequential)):
                groups.extend([item] for item in child)
            else:
                rest.append(child)
        if rest:
            groups.append(rest)

    descend(unet)
    return groups


def resident_bytes(unet: nn.Module, size=lambda t: t.untyped_storage().nbytes()) -> int:
    """What streaming keeps on the GPU: the two largest groups (the one computing and the next, prefetched)."""
    sizes = sorted(sum(size(p) for module in group for p in module.parameters()) for group in stream_groups(unet))
    return sum(sizes[-2:])


@contextlib.contextmanager
def streamed_weights(unet: nn.Module, device: torch.device | str):
    """The UNet's weights in pinned host memory for the block, streamed to ``device`` as it computes (CUDA: on a side
    stream); afterwards back on ``device`` with no hooks left."""
    from diffusers.hooks import HookRegistry, apply_group_offloading

    device = torch.device(device)
    cuda = device.type == "cuda"
    apply_group_offloading(unet, onload_device=device, offload_device="cpu", offload_type="block_level",
                           num_blocks_per_group=1, use_stream=cuda, non_blocking=cuda, record_stream=cuda,
                           block_modules=list(STREAM_BLOCKS))
    try:
        yield unet
    finally:
        for module in unet.modules():
            registry = getattr(module, "_diffusers_hook", None)
            for name in HOOKS if isinstance(registry, HookRegistry) else ():
                registry.remove_hook(name, recurse=False)
        unet.to(device)
