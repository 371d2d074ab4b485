"""The single attention call site of the UNet.

Every attention module of the UNet (spatial self-attention, audio cross-attention, temporal motion-module
attention) holds an ``AttentionBackend`` and calls it as

    out = backend(q, k, v, role=role, hw=(h, w))

with ``q, k, v`` shaped ``(batch, heads, tokens, head_dim)`` and ``role`` one of ``ROLES``; ``hw`` is the
spatial size of the token grid for spatial roles (``None`` for temporal). The backend is chosen per model at
load time (``UNet3DConditionModel.set_attention_backend``); the default is ``standard``.
"""

from .core import ROLES, AttentionBackend, StandardAttention, default_backend

__all__ = ["ROLES", "AttentionBackend", "StandardAttention", "default_backend"]
