"""Attention backend interface and the reference ``standard`` kernel."""

from __future__ import annotations

import math

import torch

# spatial_self: image tokens of one frame attend to each other; audio_cross: image tokens attend to the
# frame's audio embedding; temporal_self: one pixel attends over the frames of a chunk (motion modules).
ROLES = ("spatial_self", "audio_cross", "temporal_self")


class AttentionBackend:
    """A kernel computing softmax(q k^T / sqrt(d)) v for (batch, heads, tokens, head_dim) tensors.

    Call signature (fixed; the UNet relies on it): ``backend(q, k, v, role=role, hw=(h, w) or None)``
    returns a tensor shaped like ``q`` except the last dimension, which is ``v``'s.
    """

    name = "base"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, role: str,
                 hw: tuple[int, int] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class StandardAttention(AttentionBackend):
    """Explicit softmax(QK^T / sqrt(d)) V: the reference math, works on every device and dtype."""

    name = "standard"

    def __call__(self, q, k, v, *, role, hw=None):
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        return torch.matmul(scores.softmax(dim=-1), v)


def default_backend() -> AttentionBackend:
    return StandardAttention()


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference divided by the max abs reference value (normwise, so near-zero entries of
    ``ref`` do not blow it up). Both are compared in float64."""
    out = out.detach().double()
    ref = ref.detach().double()
    denom = ref.abs().max().clamp_min(1e-12)
    return float((out - ref).abs().max() / denom)
