"""Spatial transformer: per-frame self-attention over image tokens, then cross-attention to the frame's audio."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention_layers import Attention, FeedForward


@dataclass(frozen=True)
class GuidedAudio:
    """The audio of a classifier-free-guidance batch: both halves have the same sample, the first half is
    unconditional (all-zero audio), the second has ``conditional`` (one row per frame of that half).

    An all-zero context makes a cross-attention's keys and values zero (its projections have no bias), so its
    output is exactly its output projection's bias: the unconditional half's cross-attention is that bias, and only
    the conditional half's is computed. And until the first cross-attention the halves are the same: the UNet
    computes that part once, for one half (``BasicTransformerBlock`` then makes both)."""

    conditional: torch.Tensor


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention (attn1), audio cross-attention (attn2), GEGLU feed-forward; all residual."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, add_audio_layer: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim, role="spatial_self")
        if add_audio_layer:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, head_dim, role="audio_cross", context_dim=cross_attention_dim)
        else:
            self.norm2 = self.attn2 = None
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None, hw: tuple[int, int]) -> torch.Tensor:
        """``x``: (B*F, H*W, dim) tokens of each frame; ``audio``: (B*F, S, cross_attention_dim) or None."""
        # Each sub-layer returns a fresh tensor, so the residual is added in place.
        x = self.attn1(self.norm1(x), hw=hw).add_(x)
        if self.attn2 is not None and isinstance(audio, GuidedAudio):
            # x: both halves, or (the UNet's first layer) the one the halves share until here
            half = x[len(x) // 2:] if len(x) > len(audio.conditional) else x
            conditional = self.attn2(self.norm2(half), audio.conditional, hw=hw)
            unconditional = self.attn2.to_out[0].bias.expand_as(conditional)
            x = torch.cat([unconditional, conditional]).add_(x if len(x) > len(half) else torch.cat([x, x]))
        elif self.attn2 is not None and audio is not None:
            x = self.attn2(self.norm2(x), audio, hw=hw).add_(x)
        return self.ff(self.norm3(x)).add_(x)


class Transformer3DModel(nn.Module):
    """GroupNorm -> 1x1 proj_in -> transformer blocks on each frame's tokens -> 1x1 proj_out, plus the input."""

    def __init__(self, channels: int, heads: int, *, cross_attention_dim: int, norm_groups: int,
                 add_audio_layer: bool, num_layers: int = 1):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim, add_audio_layer)
            for _ in range(num_layers)
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        """``x``: (B*F, C, H, W) frame stack -> same shape."""
        bf, c, h, w = x.shape
        # 1x1 convolutions applied as linear layers on channels-last tokens: one layout change each way.
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        tokens = F.linear(tokens, self.proj_in.weight.view(c, c), self.proj_in.bias)
        for block in self.transformer_blocks:
            tokens = block(tokens, audio, (h, w))
        if len(tokens) > bf:  # guidance's shared half came out of the cross-attention as both halves
            x, bf = torch.cat([x, x]), len(tokens)
        tokens = F.linear(tokens, self.proj_out.weight.view(c, c), self.proj_out.bias)
        return torch.add(x, tokens.view(bf, h, w, c).permute(0, 3, 1, 2))  # contiguous like x
