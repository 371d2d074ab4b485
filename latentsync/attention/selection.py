"""Choosing an attention backend from the registry: availability, ``create_backend`` and ``backend_report``.

A backend is available on a (device, dtype) when it imports, is not disabled, runs a small problem covering the
three roles (non-square spatial grid, 50 audio keys, 16 frames) and agrees with ``standard`` (float32, same inputs)
within ``TOLERANCE[dtype]`` relative error. Probes are cached per process by (backend, device, dtype).

``auto`` takes the first available backend in the registry's order (flex when lip_focus != 1, or
``BackendUnavailableError``); nothing is timed. An explicit request for a backend that cannot run here logs a
WARNING and follows the backend's fallbacks (``strict=True`` raises ``BackendUnavailableError`` instead).

Disabling (to dodge a broken kernel): ``LATENTSYNC_DISABLE_ATTENTION="flex,xformers"`` (read at every call);
``standard`` cannot be disabled.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import torch

from ..errors import BackendUnavailableError
from .backends import FlexAttention, SDPAAttention, XFormersAttention
from .core import AttentionBackend, StandardAttention, relative_error
from .registry import BACKENDS, NAMES, REGISTRY

logger = logging.getLogger("latentsync.attention")

ENV_DISABLE = "LATENTSYNC_DISABLE_ATTENTION"
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 3e-2}

KERNELS = {"flash": SDPAAttention, "xformers": XFormersAttention, "flex": FlexAttention,
           "standard": StandardAttention}  # the registry's backends by name
_probe_cache: dict = {}
_lock = threading.RLock()


def disabled_backends() -> set[str]:
    env = {n.strip().lower() for n in os.environ.get(ENV_DISABLE, "").split(",") if n.strip()}
    unknown = env - set(BACKENDS)
    if unknown:
        logger.warning("%s names unknown backend(s) %s (known: %s)", ENV_DISABLE, sorted(unknown),
                       ", ".join(BACKENDS))
    return (env & set(BACKENDS)) - {"standard"}


def kernel(name: str, **flex_options) -> AttentionBackend:
    """An instance of backend ``name``'s kernel (``flex_options``: lip_focus, mouth_mask, compile: flex only)."""
    cls = KERNELS[name]
    return cls(**flex_options) if REGISTRY[name].lip_focus else cls()


def create_backend(name: str = "auto", device="cpu", dtype: torch.dtype = torch.float32, lip_focus: float = 1.0,
                   mouth_mask: torch.Tensor | None = None, *, strict: bool = False,
                   compile: bool | str = "auto") -> AttentionBackend:
    """The attention backend ``name`` ("auto" or a registry name) for ``device`` / ``dtype``: see the module doc."""
    name = (name or "auto").strip().lower()
    if name not in NAMES:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(NAMES)}")
    device, lip_focus = _norm_device(device), float(lip_focus)
    if lip_focus != 1.0 and name not in ("auto", "flex"):
        raise ValueError(f"lip_focus={lip_focus} needs the flex backend, not {name!r}: choose 'flex' or 'auto', or "
                         "set lip_focus to 1.0")
    chosen = _auto(device, dtype, lip_focus) if name == "auto" else _requested(name, device, dtype, lip_focus,
                                                                                  strict)
    logger.info("attention backend %s -> %s on %s/%s", name, chosen, device, _dt(dtype))
    flex = {"lip_focus": lip_focus, "mouth_mask": mouth_mask, "compile": compile}
    return kernel(chosen, **flex)


def _auto(device: torch.device, dtype: torch.dtype, lip_focus: float) -> str:
    """lip_focus 1: the first backend in the table's order that runs here, the ones after it never probed (flex
    would compile a probe, and leave a compiler cache behind, for nothing); above 1: flex."""
    if lip_focus != 1.0:
        ok, reason = availability("flex", device, dtype)
        if not ok:
            others = [n for n in BACKENDS if n != "flex" and availability(n, device, dtype)[0]]
            raise BackendUnavailableError(
                f"lip_focus={lip_focus} needs the flex backend, which is unavailable: {reason}. Set lip_focus to 1.0 "
                f"to use {', '.join(others)}.")
        return "flex"
    for name in BACKENDS:
        ok, reason = availability(name, device, dtype)
        if ok:
            return name
        logger.info("%s unavailable: %s", name, reason)
    return "standard"  # (it always runs)


def _requested(name: str, device: torch.device, dtype: torch.dtype, lip_focus: float, strict: bool) -> str:
    ok, reason = availability(name, device, dtype)
    if ok:
        return name
    if lip_focus != 1.0 or strict:
        available = [n for n in BACKENDS if n != name and availability(n, device, dtype)[0]]
        raise BackendUnavailableError(f"attention backend {name!r} unavailable on {device}/{_dt(dtype)}: {reason}. "
                                      f"Available here: {', '.join(available)}")
    for alternative in REGISTRY[name].fallback:
        ok, why = availability(alternative, device, dtype)
        if ok:
            logger.warning("%s unavailable: %s; falling back to %s", name, reason, alternative)
            return alternative
        logger.warning("%s unavailable: %s; %s unavailable too: %s", name, reason, alternative, why)
    return "standard"


def availability(name: str, device: torch.device, dtype: torch.dtype) -> tuple[bool, str | None]:
    """(runs here, why not): disabled, or the cached probe's verdict."""
    if name in disabled_backends():
        return False, f"disabled by {ENV_DISABLE}"
    result = _probe(name, device, dtype)
    return result["available"], result["reason"]


def _probe(name: str, device: torch.device, dtype: torch.dtype) -> dict:
    """Cached: {"available", "reason", "max_rel_err"} of ``name`` on the probe problem (disabling ignored)."""
    key = (name, str(device), dtype)
    with _lock:
        if key not in _probe_cache:
            _probe_cache[key] = _run_probe(name, device, dtype)
        return _probe_cache[key]


def _run_probe(name: str, device: torch.device, dtype: torch.dtype) -> dict:
    where = f"{device.type}/{_dt(dtype)}"
    try:
        backend = kernel(name)
    except Exception as exc:  # not installed here: the kernel says why
        return {"available": False, "reason": str(exc), "max_rel_err": None}
    try:
        reference, error = StandardAttention(), 0.0
        for role, hw, q, k, v in _probe_problem(device, dtype):
            out = backend(q, k, v, role=role, hw=hw)
            expected = reference(q.float(), k.float(), v.float(), role=role, hw=hw)
            if tuple(out.shape) != tuple(expected.shape):
                raise RuntimeError(f"{role}: output shape {tuple(out.shape)} != {tuple(expected.shape)}")
            error = max(error, relative_error(out, expected))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:  # a kernel that fails here
        message = str(exc).splitlines()[0][:300] if str(exc) else ""
        return {"available": False, "reason": f"failed on {where}: {type(exc).__name__}: {message}",
                "max_rel_err": None}
    tolerance = TOLERANCE.get(dtype, 3e-2)
    reason = None if error <= tolerance else f"disagrees with standard on {where}: max rel err {error:.2e} > " \
                                             f"{tolerance:.0e}"
    return {"available": reason is None, "reason": reason, "max_rel_err": error}


def _probe_problem(device, dtype):
    g = torch.Generator().manual_seed(1234)
    d, h, w = 40, 6, 10

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    return [
        ("spatial_self", (h, w), r(2, 4, h * w, d), r(2, 4, h * w, d), r(2, 4, h * w, d)),
        ("audio_cross", (h, w), r(2, 4, h * w, d), r(2, 4, 50, d), r(2, 4, 50, d)),
        ("temporal_self", None, r(12, 4, 16, d), r(12, 4, 16, d), r(12, 4, 16, d)),
    ]


def backend_report(device="cpu", dtype: torch.dtype = torch.float32, timing: bool = True) -> list[dict]:
    """One dict per backend (for verify_installation): name, available, reason, max_rel_err (vs standard on the
    probe problem), and with ``timing`` time_ms and rel_time (/ standard's; < 1 = faster) on a LatentSync-shaped
    spatial problem; a diagnostic only: ``auto`` never times anything."""
    device = _norm_device(device)
    times = {"standard": _time_backend("standard", device, dtype)} if timing else {}
    rows = []
    for name in BACKENDS:
        ok, reason = availability(name, device, dtype)
        row = {"name": name, "available": ok, "reason": reason, "max_rel_err": _probe(name, device, dtype)[
            "max_rel_err"] if name not in disabled_backends() else None, "time_ms": None, "rel_time": None,
            "device": str(device), "dtype": _dt(dtype), "summary": REGISTRY[name].summary}
        if ok and timing:
            try:
                seconds = times.get(name) or _time_backend(name, device, dtype)
                row.update(time_ms=seconds * 1e3, rel_time=seconds / times["standard"])
            except Exception as exc:
                row["reason"] = f"timing failed: {type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def _time_backend(name: str, device: torch.device, dtype: torch.dtype, reps: int = 3) -> float:
    """Best seconds per call on spatial self-attention shaped as LatentSync's (8 heads, head_dim 40)."""
    g = torch.Generator().manual_seed(7)
    batch, side = (1, 24) if device.type == "cpu" else (16, 32)  # the CPU's keeps the report ~1 s
    q, k, v = (torch.randn(batch, 8, side * side, 40, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    backend = kernel(name)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        backend(q, k, v, role="spatial_self", hw=(side, side))  # warm-up / compile
        sync()
        best = float("inf")
        for _ in range(reps):
            started = time.perf_counter()
            backend(q, k, v, role="spatial_self", hw=(side, side))
            sync()
            best = min(best, time.perf_counter() - started)
    return best


def _norm_device(device) -> torch.device:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device is cuda but torch.cuda.is_available() is False")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _dt(dtype) -> str:
    return str(dtype).replace("torch.", "")
