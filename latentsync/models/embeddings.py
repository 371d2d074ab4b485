"""Diffusion timestep embedding: sinusoidal features, then a two-layer MLP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_features(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True,
                      freq_shift: float = 0.0, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) timesteps -> (N, dim) float32 sinusoids, frequencies ``max_period ** (-i / (dim/2 - freq_shift))``."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    angles = timesteps[:, None].float() * torch.exp(exponent / (half - freq_shift))[None, :]
    parts = (torch.cos(angles), torch.sin(angles)) if flip_sin_to_cos else (torch.sin(angles), torch.cos(angles))
    emb = torch.cat(parts, dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))
