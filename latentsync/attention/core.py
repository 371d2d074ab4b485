"""Attention backend interface and the reference ``standard`` kernel."""

from __future__ import annotations

import math

import torch

# spatial_self: image tokens of one frame attend to each other; audio_cross: image tokens attend to the
# frame's audio embedding; temporal_self: one pixel attends over the frames of a chunk (motion modules).
ROLES = ("spatial_self", "audio_cross", "temporal_self")


class AttentionBackend:
    """A kernel computing softmax(q k^T / sqrt(d)) v for (batch, heads, tokens, head_dim) tensors."""

    name = "base"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, role: str,
                 hw: tuple[int, int] | None = None) -> torch.Tensor:
        raise NotImplementedError


class StandardAttention(AttentionBackend):
    """Explicit softmax(QK^T / sqrt(d)) V: the reference math, works on every device and dtype."""

    name = "standard"

    def __call__(self, q, k, v, *, role, hw=None):
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        return torch.matmul(scores.softmax(dim=-1), v)


def default_backend() -> AttentionBackend:
    return StandardAttention()
