"""The attention backends, one row each: the kernel class, what it supports, and where a request falls back to.

This table is the one list of backends: the option's names (``latentsync.options``), ``create_backend`` and the
installation report all read it (their kernels: ``selection.KERNELS``). It imports nothing, so the options schema
and the ComfyUI widget list are built from it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    name: str  # the option value users choose
    summary: str
    fallback: tuple[str, ...]  # tried in order when it cannot run here
    lip_focus: bool = False  # runs lip_focus != 1 (the others refuse it)


# In the order ``auto`` prefers them (a rule, not a measurement): torch's own fused SDPA first (flash or memory-
# efficient kernels on CUDA, a fused kernel on the CPU), xformers where SDPA is missing, flex (only needed for lip
# focus; it compiles per shape), and the reference softmax, which always runs.
REGISTRY = {backend.name: backend for backend in (
    Backend("flash", "torch.nn.functional.scaled_dot_product_attention (its flash / "
            "memory-efficient kernels on CUDA)", ("standard",)),
    Backend("xformers", "xformers.ops.memory_efficient_attention", ("flash", "standard")),
    Backend("flex", "torch flex_attention, compiled on CUDA; the only one with lip_focus",
            ("flash", "standard"), lip_focus=True),
    Backend("standard", "explicit softmax(q k^T / sqrt(d)) v: the reference math, every "
            "device and dtype", ()),
)}
BACKENDS = tuple(REGISTRY)
NAMES = ("auto",) + BACKENDS
