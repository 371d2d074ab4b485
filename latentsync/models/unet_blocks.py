"""Down, mid and up stages of the UNet. Each layer: resnet, then (optional) spatial transformer, then (optional)
motion module. All tensors are ``(B*F, C, H, W)`` frame stacks; ``num_frames`` recovers the clips."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .motion_module import build_motion_module
from .resnet import Downsample3D, ResnetBlock3D, Upsample3D
from .transformer import Transformer3DModel


@dataclass(frozen=True)
class BlockSettings:
    """What every stage shares, taken from the model config."""

    temb_channels: int
    groups: int
    eps: float
    cross_attention_dim: int
    add_audio_layer: bool
    clip_norm: bool
    motion_module_type: str | None
    motion_module_kwargs: dict

    def resnet(self, cin: int, cout: int, scale: float = 1.0) -> ResnetBlock3D:
        return ResnetBlock3D(cin, cout, self.temb_channels, groups=self.groups, eps=self.eps,
                             output_scale_factor=scale, clip_norm=self.clip_norm)

    def transformer(self, channels: int, heads: int) -> Transformer3DModel:
        return Transformer3DModel(channels, heads, cross_attention_dim=self.cross_attention_dim,
                                  norm_groups=self.groups, add_audio_layer=self.add_audio_layer)

    def motion_modules(self, channels: int, count: int, enabled: bool) -> nn.ModuleList:
        if not enabled:
            return nn.ModuleList()
        return nn.ModuleList(build_motion_module(self.motion_module_type, channels, self.motion_module_kwargs)
                             for _ in range(count))


class _Stage(nn.Module):
    """Shared per-layer step: resnet -> attention -> motion module (whichever exist)."""

    resnets: nn.ModuleList
    attentions: nn.ModuleList
    motion_modules: nn.ModuleList

    def layer(self, i: int, x: torch.Tensor, temb_act: torch.Tensor, audio: torch.Tensor | None,
               num_frames: int) -> torch.Tensor:
        x = self.resnets[i](x, temb_act, num_frames)
        if len(self.attentions):
            x = self.attentions[i](x, audio)
        if len(self.motion_modules):
            x = self.motion_modules[i](x, num_frames)
        return x


class DownBlock3D(_Stage):
    """``num_layers`` layers, then an optional stride-2 downsample; returns every layer's output as skips."""

    def __init__(self, cin: int, cout: int, num_layers: int, s: BlockSettings, *, heads: int | None,
                 add_downsample: bool, downsample_padding: int, use_motion_module: bool):
        super().__init__()
        # Attribute order = the checkpoint's tensor order.
        self.attentions = nn.ModuleList(
            s.transformer(cout, heads) for _ in range(num_layers if heads is not None else 0))
        self.resnets = nn.ModuleList(s.resnet(cin if i == 0 else cout, cout) for i in range(num_layers))
        self.motion_modules = s.motion_modules(cout, num_layers, use_motion_module)
        self.downsamplers = nn.ModuleList([Downsample3D(cout, downsample_padding)]) if add_downsample else None

    def forward(self, x, temb_act, audio, num_frames):
        skips = []
        for i in range(len(self.resnets)):
            x = self.layer(i, x, temb_act, audio, num_frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock3D(_Stage):
    """``num_layers`` layers, each fed the previous output concatenated with one skip; optional 2x upsample."""

    def __init__(self, cin: int, cprev: int, cout: int, num_layers: int, s: BlockSettings, *, heads: int | None,
                 add_upsample: bool, use_motion_module: bool):
        super().__init__()
        self.attentions = nn.ModuleList(
            s.transformer(cout, heads) for _ in range(num_layers if heads is not None else 0))
        self.resnets = nn.ModuleList(
            s.resnet((cprev if i == 0 else cout) + (cin if i == num_layers - 1 else cout), cout)
            for i in range(num_layers)
        )
        self.motion_modules = s.motion_modules(cout, num_layers, use_motion_module)
        self.upsamplers = nn.ModuleList([Upsample3D(cout)]) if add_upsample else None

    def forward(self, x, skips: list[torch.Tensor], temb_act, audio, num_frames, upsample_size=None):
        """``skips``: this stage's skip tensors, consumed last-first."""
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips.pop()], dim=1)
            x = self.layer(i, x, temb_act, audio, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNetMidBlock3DCrossAttn(_Stage):
    """resnet, then ``num_layers`` x (transformer, optional motion module, resnet)."""

    def __init__(self, channels: int, s: BlockSettings, *, heads: int, scale: float, use_motion_module: bool,
                 num_layers: int = 1):
        super().__init__()
        self.attentions = nn.ModuleList(s.transformer(channels, heads) for _ in range(num_layers))
        self.resnets = nn.ModuleList(s.resnet(channels, channels, scale) for _ in range(num_layers + 1))
        self.motion_modules = s.motion_modules(channels, num_layers, use_motion_module)

    def forward(self, x, temb_act, audio, num_frames):
        x = self.resnets[0](x, temb_act, num_frames)
        for i, attention in enumerate(self.attentions):
            x = attention(x, audio)
            if len(self.motion_modules):
                x = self.motion_modules[i](x, num_frames)
            x = self.resnets[i + 1](x, temb_act, num_frames)
        return x


DOWN_BLOCKS = {"CrossAttnDownBlock3D": True, "DownBlock3D": False}  # name -> has spatial transformers
UP_BLOCKS = {"CrossAttnUpBlock3D": True, "UpBlock3D": False}
