"""Motion (temporal) modules: every pixel position attends over the frames of its chunk."""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention_layers import Attention, FeedForward


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal frame-position table ``pe`` (1, max_len, dim), stored in the checkpoint."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        pe = torch.empty(1, max_len, dim)
        if not pe.is_meta:  # on the meta device (checkpoint loading) the values come from the checkpoint
            position = torch.arange(max_len, dtype=torch.float32)[:, None]
            freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
            pe[0, :, 0::2] = torch.sin(position * freq)
            pe[0, :, 1::2] = torch.cos(position * freq)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames, max_len = x.shape[1], self.pe.shape[1]
        if frames > max_len:
            raise ValueError(f"the motion modules encode at most {max_len} frame positions, got a chunk of "
                             f"{frames} frames; use chunks of at most {max_len} frames")
        return x + self.pe[:, :frames]


class TemporalAttention(Attention):
    """Self-attention over frames, with the frame positions added to its input first."""

    def __init__(self, dim: int, heads: int, head_dim: int, position_encoding: bool, max_len: int):
        super().__init__(dim, heads, head_dim, role="temporal_self")
        self.pos_encoder = PositionalEncoding(dim, max_len) if position_encoding else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, hw=None) -> torch.Tensor:
        """``x``: (B*H*W, F, dim)."""
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        return super().forward(x)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, num_attentions: int, position_encoding: bool,
                 max_len: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            TemporalAttention(dim, heads, head_dim, position_encoding, max_len) for _ in range(num_attentions)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_attentions))
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x)).add_(x)
        return self.ff(self.ff_norm(x)).add_(x)


class TemporalTransformer3DModel(nn.Module):
    """Per-frame GroupNorm -> proj_in -> blocks over (pixel, frame) sequences -> proj_out, plus the input."""

    def __init__(self, channels: int, heads: int, head_dim: int, *, num_layers: int, num_attentions: int,
                 position_encoding: bool, max_len: int, norm_groups: int = 32):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TemporalTransformerBlock(inner, heads, head_dim, num_attentions, position_encoding, max_len)
            for _ in range(num_layers)
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x``: (B*F, C, H, W) frame stack -> same shape."""
        bf, c, h, w = x.shape
        b = bf // num_frames
        # One layout change in, one out: (B, F, C, HW) -> (B*HW, F, C) sequences over frames.
        seq = self.norm(x).view(b, num_frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, num_frames, c)
        seq = self.proj_in(seq)
        for block in self.transformer_blocks:
            seq = block(seq)
        seq = self.proj_out(seq).view(b, h * w, num_frames, c).permute(0, 2, 3, 1)
        return torch.add(x.view(b, num_frames, c, h * w), seq).view(bf, c, h, w)


class VanillaTemporalModule(nn.Module):
    """AnimateDiff-style motion module as configured by ``motion_module_kwargs``."""

    def __init__(self, in_channels: int, num_attention_heads: int = 8, num_transformer_block: int = 2,
                 attention_block_types: tuple[str, ...] | list[str] = ("Temporal_Self", "Temporal_Self"),
                 temporal_position_encoding: bool = False, temporal_position_encoding_max_len: int = 24,
                 temporal_attention_dim_div: int = 1, zero_initialize: bool = True):
        super().__init__()
        if any(kind != "Temporal_Self" for kind in attention_block_types):
            raise ValueError(f"only Temporal_Self motion attention is supported, got {list(attention_block_types)}")
        head_dim = in_channels // num_attention_heads // temporal_attention_dim_div
        self.temporal_transformer = TemporalTransformer3DModel(
            in_channels, num_attention_heads, head_dim, num_layers=num_transformer_block,
            num_attentions=len(attention_block_types), position_encoding=temporal_position_encoding,
            max_len=temporal_position_encoding_max_len,
        )
        if zero_initialize:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, num_frames)


def build_motion_module(kind: str | None, channels: int, kwargs: dict) -> VanillaTemporalModule:
    if kind != "Vanilla":
        raise ValueError(f"unsupported motion_module_type {kind!r}; only 'Vanilla' exists")
    return VanillaTemporalModule(channels, **kwargs)
