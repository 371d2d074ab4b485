"""Multi-head attention projections and the GEGLU feed-forward shared by spatial and temporal transformers.

The attention kernel itself is not here: every ``Attention`` hands ``q, k, v`` to its ``AttentionBackend``
(``latentsync.attention``), the single attention call site of the UNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention.core import ROLES, AttentionBackend, default_backend


class Attention(nn.Module):
    """to_q / to_k / to_v (no bias) -> backend -> to_out.0; ``role`` tells the backend what it attends over."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, role: str, context_dim: int | None = None):
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"unknown attention role {role!r}; expected one of {ROLES}")
        inner = heads * head_dim
        context_dim = query_dim if context_dim is None else context_dim
        self.heads, self.head_dim, self.role = heads, head_dim, role
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])
        self.set_backend(default_backend())

    def set_backend(self, backend: AttentionBackend) -> None:
        # Stored outside the module registry: a backend is a kernel choice, never part of the state dict.
        object.__setattr__(self, "backend", backend)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.view(n, t, self.heads, self.head_dim).transpose(1, 2)  # (n, heads, t, head_dim), a view

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                hw: tuple[int, int] | None = None) -> torch.Tensor:
        """``x``: (N, T, query_dim); ``context``: (N, S, context_dim), defaults to ``x`` (self-attention)."""
        context = x if context is None else context
        q = self._split_heads(self.to_q(x))
        k = self._split_heads(self.to_k(context))
        v = self._split_heads(self.to_v(context))
        out = self.backend(q, k, v, role=self.role, hw=hw)
        n, _, t, _ = out.shape
        return self.to_out[0](out.transpose(1, 2).reshape(n, t, self.heads * self.head_dim))

    def extra_repr(self) -> str:
        return f"role={self.role}, heads={self.heads}, head_dim={self.head_dim}"


class GEGLU(nn.Module):
    """Linear to twice the width; first half gated by GELU of the second half."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return F.gelu(gate).mul_(value)


class FeedForward(nn.Module):
    """GEGLU(dim -> 4 dim) then Linear(4 dim -> dim); parameter names ``net.0.proj``, ``net.2``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # net.1 was a (p=0) dropout in the published model; the slot keeps the checkpoint names aligned.
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))
