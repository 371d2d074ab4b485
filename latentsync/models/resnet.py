"""Residual blocks, resampling and the clip-wide group norm.

Layout: inside the UNet every feature map is a stack of frames ``(B*F, C, H, W)`` (batch-major), so
convolutions are plain 2D convolutions with no reshuffling. The published model normalises its residual
blocks over the whole clip (a 5D ``nn.GroupNorm`` over ``(C/G, F, H, W)``); ``ClipGroupNorm`` computes the
same statistics directly on the frame stack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClipGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics span every frame of a clip, applied to a ``(B*F, C, H, W)`` frame stack.

    Equal to ``nn.GroupNorm`` on the ``(B, C, F, H, W)`` video, without moving the data: one reduction for
    the statistics, one fused multiply-add for the output.
    """

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        bf, c, h, w = x.shape
        b, g = bf // num_frames, self.num_groups
        frames = x.reshape(b, num_frames, c, h * w)
        if x.dtype in (torch.float16, torch.bfloat16):
            # as nn.GroupNorm: statistics, scale, shift and the output in float32, rounded once at the end
            frames = frames.float()
        grouped = frames.view(b, num_frames, g, (c // g) * h * w)
        var, mean = torch.var_mean(grouped, dim=(1, 3), correction=0, keepdim=True)  # (b, 1, g, 1)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, 1, g, c // g).to(var.dtype)  # (b, 1, g, c/g)
        shift = self.bias.view(1, 1, g, c // g).to(var.dtype) - mean * scale
        out = torch.addcmul(shift.view(b, 1, c, 1), frames, scale.view(b, 1, c, 1))
        return out.to(x.dtype).view(bf, c, h, w)


class FrameGroupNorm(nn.GroupNorm):
    """Per-frame GroupNorm with the same call signature as ``ClipGroupNorm`` (``use_inflated_groupnorm``)."""

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


class ResnetBlock3D(nn.Module):
    """norm -> SiLU -> conv -> + time embedding -> norm -> SiLU -> conv, plus the (projected) input."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, groups: int, eps: float,
                 output_scale_factor: float = 1.0, clip_norm: bool = True):
        super().__init__()
        norm = ClipGroupNorm if clip_norm else FrameGroupNorm
        self.norm1 = norm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = norm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x``: (B*F, C, H, W), or the first clips of the batch (guidance's shared half); ``temb_act``: SiLU of
        the time embedding, (B, temb_channels)."""
        h = self.conv1(F.silu(self.norm1(x, num_frames), inplace=True))
        bf, c, hh, ww = h.shape
        # projected for the whole batch, then its clips' rows taken: a linear layer's bits depend on its batch
        projected = self.time_emb_proj(temb_act)[:bf // num_frames]
        # In-place adds below only touch fresh outputs of convolutions, which autograd does not keep.
        h.view(bf // num_frames, num_frames, c, hh * ww).add_(projected[:, None, :, None])
        h = self.conv2(F.silu(self.norm2(h, num_frames), inplace=True))
        h.add_(x if self.conv_shortcut is None else self.conv_shortcut(x))
        if self.output_scale_factor != 1.0:
            h.div_(self.output_scale_factor)
        return h


class Downsample3D(nn.Module):
    """Strided 3x3 convolution, each frame on its own."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3D(nn.Module):
    """Nearest-neighbour 2x upsampling (or to ``size``) followed by a 3x3 convolution, per frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
