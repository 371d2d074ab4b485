"""The single attention call site of the UNet.

Every attention module of the UNet (spatial self-attention, audio cross-attention, temporal motion-module
attention) holds an ``AttentionBackend`` and calls it as

    out = backend(q, k, v, role=role, hw=(h, w))

with ``q, k, v`` shaped ``(batch, heads, tokens, head_dim)`` and ``role`` one of ``ROLES``; ``hw`` is the
spatial size of the token grid for spatial roles (``None`` for temporal). The backend is chosen per model at
load time (``UNet3DConditionModel.set_attention_backend``); the default is ``standard``.

Backends: ``standard`` (explicit softmax), ``flash`` (torch SDPA), ``xformers``, ``flex`` (flex_attention,
with ``lip_focus`` / ``audio_boost``). Pick one with ``create_backend(name, device, dtype, ...)``; ``auto``
probes what runs here. ``backend_report(device, dtype)`` lists them all with reasons, errors and timings.
Logger: ``latentsync.attention``. Disable backends with ``LATENTSYNC_DISABLE_ATTENTION="flex,xformers"``.
"""

from .backends import (DEFAULT_MASK_PATH, FlexAttention, SDPAAttention, XFormersAttention, load_mouth_mask,
                       mouth_mask_tokens)
from .core import ROLES, AttentionBackend, StandardAttention, default_backend, relative_error
from .selection import (BACKENDS, ENV_DISABLE, NAMES, BackendUnavailableError, backend_report,
                        clear_probe_cache, create_backend, disabled_backends, set_disabled_backends)

__all__ = ["ROLES", "AttentionBackend", "StandardAttention", "default_backend", "relative_error",
           "SDPAAttention", "XFormersAttention", "FlexAttention", "load_mouth_mask", "mouth_mask_tokens",
           "DEFAULT_MASK_PATH", "BACKENDS", "NAMES", "ENV_DISABLE", "BackendUnavailableError",
           "create_backend", "backend_report", "clear_probe_cache", "disabled_backends",
           "set_disabled_backends"]
