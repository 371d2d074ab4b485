"""Choosing an attention backend: availability probes, ``create_backend`` and ``backend_report``.

Availability of a backend on a (device, dtype) = it imports, it is not disabled, it runs on a small random
problem covering all three roles (non-square spatial grid, 50 audio keys, 16 frames) and agrees with
``standard`` (computed in float32 from the same inputs) within ``TOLERANCE[dtype]`` relative error
(max abs error / max abs reference). Probes are cached per process by (backend, device, dtype).

Disabling (for tests, or to dodge a broken kernel): environment variable
``LATENTSYNC_DISABLE_ATTENTION="flex,xformers"`` (read at every call) and/or ``set_disabled_backends([...])``.
``standard`` cannot be disabled.

Explicit requests (``create_backend("flex", ...)``) for an unavailable backend log a WARNING with the reason
and fall back along flex -> flash -> standard (xformers -> flash -> standard), unless ``strict=True``, which
raises ``BackendUnavailableError`` instead. ``lip_focus != 1`` / ``audio_boost != 1`` only exist in ``flex``:
with them, ``auto`` picks flex or raises ``BackendUnavailableError`` (no silent dropping of the effect), and
naming another backend raises ``ValueError``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Iterable

import torch

from .backends import (FlexAttention, SDPAAttention, XFormersAttention, flex_compile_unavailable_reason,
                       flex_unavailable_reason, xformers_unavailable_reason)
from .core import AttentionBackend, StandardAttention, relative_error
from ..errors import BackendUnavailableError  # noqa: F401 (raised here; defined with the others)

logger = logging.getLogger("latentsync.attention")

BACKENDS = ("flex", "flash", "xformers", "standard")
NAMES = ("auto",) + BACKENDS
AUTO_ORDER = ("flex", "flash", "xformers", "standard")
FALLBACK = {"flex": ("flash", "standard"), "xformers": ("flash", "standard"), "flash": ("standard",),
            "standard": ()}
ENV_DISABLE = "LATENTSYNC_DISABLE_ATTENTION"
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 3e-2}
# a later backend in AUTO_ORDER must be this much faster to displace an earlier one (timing noise)
AUTO_MARGIN = 0.9



_disabled_override: set[str] = set()
_probe_cache: dict = {}
_time_cache: dict = {}
_lock = threading.RLock()


def set_disabled_backends(names: Iterable[str] | None) -> None:
    """Programmatically disable backends (in addition to $LATENTSYNC_DISABLE_ATTENTION); None clears."""
    global _disabled_override
    names = set(names or ())
    bad = names - set(BACKENDS)
    if bad:
        raise ValueError(f"unknown attention backend(s) {sorted(bad)}; known: {', '.join(BACKENDS)}")
    _disabled_override = names


def disabled_backends() -> set[str]:
    env = {n.strip().lower() for n in os.environ.get(ENV_DISABLE, "").split(",") if n.strip()}
    unknown = env - set(BACKENDS)
    if unknown:
        logger.warning("%s names unknown backend(s) %s (known: %s)", ENV_DISABLE, sorted(unknown),
                       ", ".join(BACKENDS))
    out = (env | _disabled_override) & set(BACKENDS)
    out.discard("standard")
    return out


def clear_probe_cache() -> None:
    with _lock:
        _probe_cache.clear()
        _time_cache.clear()


def _norm_device(device) -> torch.device:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device is cuda but torch.cuda.is_available() is False")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _instantiate(name: str, **flex_kwargs) -> AttentionBackend:
    if name == "standard":
        return StandardAttention()
    if name == "flash":
        return SDPAAttention()
    if name == "xformers":
        return XFormersAttention()
    if name == "flex":
        return FlexAttention(**flex_kwargs)
    raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(NAMES)}")


def _static_reason(name: str) -> str | None:
    """Why ``name`` cannot even be constructed here (None if it can)."""
    if name == "flex":
        return flex_unavailable_reason()
    if name == "xformers":
        return xformers_unavailable_reason()
    if name == "flash" and not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        return f"torch {torch.__version__} lacks torch.nn.functional.scaled_dot_product_attention"
    return None


def _probe_problem(device, dtype):
    g = torch.Generator().manual_seed(1234)
    d = 40
    h, w = 6, 10

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    return [
        ("spatial_self", (h, w), r(2, 4, h * w, d), r(2, 4, h * w, d), r(2, 4, h * w, d)),
        ("audio_cross", (h, w), r(2, 4, h * w, d), r(2, 4, 50, d), r(2, 4, 50, d)),
        ("temporal_self", None, r(12, 4, 16, d), r(12, 4, 16, d), r(12, 4, 16, d)),
    ]


def _probe(name: str, device: torch.device, dtype: torch.dtype) -> dict:
    """Cached: {"available", "reason", "max_rel_err", "mode"} ignoring disabling."""
    key = (name, str(device), dtype)
    with _lock:
        if key in _probe_cache:
            return _probe_cache[key]
        res = {"available": False, "reason": None, "max_rel_err": None, "mode": None}
        reason = _static_reason(name)
        if reason is None:
            try:
                backend = _instantiate(name)
                if name == "flex":
                    res["mode"] = _flex_mode(device)
                ref = StandardAttention()
                err = 0.0
                for role, hw, q, k, v in _probe_problem(device, dtype):
                    out = backend(q, k, v, role=role, hw=hw)
                    expected = ref(q.float(), k.float(), v.float(), role=role, hw=hw)
                    if tuple(out.shape) != tuple(expected.shape):
                        raise RuntimeError(f"{role}: output shape {tuple(out.shape)} != {tuple(expected.shape)}")
                    err = max(err, relative_error(out, expected))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                res["max_rel_err"] = err
                tol = TOLERANCE.get(dtype, 3e-2)
                if not err <= tol:
                    reason = f"disagrees with standard on {device.type}/{_dt(dtype)}: max rel err {err:.2e} > {tol:.0e}"
            except Exception as exc:
                reason = f"failed on {device.type}/{_dt(dtype)}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        res["available"] = reason is None
        res["reason"] = reason
        _probe_cache[key] = res
        return res


def _flex_mode(device: torch.device) -> str:
    if device.type == "cpu":
        return "eager (compiled flex works on this CPU but compiles 12-19 s per shape and is slower than SDPA)"
    reason = flex_compile_unavailable_reason(device)
    return "compiled" if reason is None else f"SDPA with bias ({reason})"


def _dt(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _availability(name: str, device: torch.device, dtype: torch.dtype) -> tuple[bool, str | None]:
    if name in disabled_backends():
        return False, f"disabled by {ENV_DISABLE} / set_disabled_backends"
    res = _probe(name, device, dtype)
    return res["available"], res["reason"]


def _time_backend(name: str, device: torch.device, dtype: torch.dtype, reps: int = 3) -> float:
    """Seconds per call on a LatentSync-shaped spatial self-attention problem (8 heads, head_dim 40; cached)."""
    key = (name, str(device), dtype)
    with _lock:
        if key in _time_cache:
            return _time_cache[key]
        g = torch.Generator().manual_seed(7)
        # CPU: one frame of a 24x24 grid (keeps the probe ~1 s); GPU: 16 frames of a 32x32 level
        batch, side = (1, 24) if device.type == "cpu" else (16, 32)
        q, k, v = (torch.randn(batch, 8, side * side, 40, generator=g).to(device=device, dtype=dtype)
                   for _ in range(3))
        backend = _instantiate(name)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        with torch.no_grad():
            backend(q, k, v, role="spatial_self", hw=(side, side))  # warm-up / compile
            sync()
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                backend(q, k, v, role="spatial_self", hw=(side, side))
                sync()
                best = min(best, time.perf_counter() - t0)
        _time_cache[key] = best
        return best


def _build(name, lip_focus, audio_boost, mouth_mask, compile):
    if name == "flex":
        return FlexAttention(lip_focus=lip_focus, audio_boost=audio_boost, mouth_mask=mouth_mask, compile=compile)
    return _instantiate(name)


def create_backend(name: str = "auto", device="cpu", dtype: torch.dtype = torch.float32,
                   lip_focus: float = 1.0, audio_boost: float = 1.0, mouth_mask: torch.Tensor | None = None,
                   *, strict: bool = False, compile: bool | str = "auto") -> AttentionBackend:
    """An attention backend for ``device``/``dtype``.

    name: "auto" | "flex" | "flash" | "xformers" | "standard".
    auto: among the available fused backends that agree with standard, the fastest on a LatentSync-shaped
    spatial problem, preferring flex -> flash -> xformers unless a later one is >10 % faster; standard only when
    none of them works. Each skipped backend is logged with its reason. With lip_focus/audio_boost != 1: flex, or
    ``BackendUnavailableError``.
    explicit unavailable name: WARNING + fallback (flex/xformers -> flash -> standard), or
    ``BackendUnavailableError`` with ``strict=True``.
    """
    name = (name or "auto").strip().lower()
    if name not in NAMES:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(NAMES)}")
    device = _norm_device(device)
    lip_focus = float(lip_focus)
    audio_boost = float(audio_boost)
    needs_flex = lip_focus != 1.0 or audio_boost != 1.0

    if needs_flex:
        if name not in ("auto", "flex"):
            raise ValueError(f"lip_focus={lip_focus} / audio_boost={audio_boost} need the flex backend, "
                             f"not {name!r}: choose 'flex' or 'auto', or set both to 1.0")
        ok, reason = _availability("flex", device, dtype)
        if not ok:
            raise BackendUnavailableError(
                f"lip_focus={lip_focus} / audio_boost={audio_boost} need the flex backend, which is unavailable: "
                f"{reason}. Set lip_focus and audio_boost to 1.0 to use "
                f"{', '.join(n for n in ('flash', 'xformers', 'standard') if _availability(n, device, dtype)[0])}.")
        backend = _build("flex", lip_focus, audio_boost, mouth_mask, compile)
        logger.info("attention backend %s -> %r on %s/%s", name, backend, device, _dt(dtype))
        return backend

    if name != "auto":
        ok, reason = _availability(name, device, dtype)
        if ok:
            return _build(name, lip_focus, audio_boost, mouth_mask, compile)
        alternatives = [n for n in BACKENDS if n != name and _availability(n, device, dtype)[0]]
        if strict:
            raise BackendUnavailableError(f"attention backend {name!r} unavailable on {device}/{_dt(dtype)}: "
                                          f"{reason}. Available here: {', '.join(alternatives)}")
        for alt in FALLBACK[name]:
            if _availability(alt, device, dtype)[0]:
                logger.warning("%s unavailable: %s; falling back to %s", name, reason, alt)
                return _build(alt, lip_focus, audio_boost, mouth_mask, compile)
            logger.warning("%s unavailable: %s; %s unavailable too: %s", name, reason, alt,
                           _availability(alt, device, dtype)[1])
        return StandardAttention()

    # auto
    candidates = []
    skipped = []
    for n in AUTO_ORDER:
        ok, reason = _availability(n, device, dtype)
        if ok:
            candidates.append(n)
        else:
            skipped.append((n, reason))
    if len(candidates) > 1 and "standard" in candidates:
        # standard is the reference fallback, not a contender: timing it against fused kernels on a small probe
        # only lets noise pick the slow path (at real sizes SDPA is several times faster even on a CPU)
        candidates.remove("standard")
    timings = {}
    for n in candidates:
        try:
            timings[n] = _time_backend(n, device, dtype)
        except Exception as exc:  # a kernel that passed the probe but fails at the timing shape
            skipped.append((n, f"failed at the timing problem: {type(exc).__name__}: {exc}"))
    best = None
    for n in candidates:
        if n not in timings:
            continue
        if best is None or timings[n] < AUTO_MARGIN * timings[best]:
            best = n
    if best is None:  # cannot happen (standard always works) unless the device itself is broken
        best = "standard"
    for n, reason in skipped:
        logger.info("%s unavailable: %s; falling back to %s", n, reason, best)
    for n in candidates:
        if n != best and n in timings and AUTO_ORDER.index(n) < AUTO_ORDER.index(best):
            logger.info("%s skipped: %.2f ms per call vs %s %.2f ms on %s/%s", n, timings[n] * 1e3, best,
                        timings[best] * 1e3, device, _dt(dtype))
    logger.info("attention backend auto -> %s on %s/%s (ms per call: %s)", best, device, _dt(dtype),
                ", ".join(f"{n}={t * 1e3:.2f}" for n, t in timings.items()))
    return _build(best, lip_focus, audio_boost, mouth_mask, compile)


def backend_report(device="cpu", dtype: torch.dtype = torch.float32, timing: bool = True) -> list[dict]:
    """One dict per backend: name, available, reason, max_rel_err (vs standard on the probe problem),
    time_ms and rel_time (time / standard's time; < 1 = faster) on a LatentSync-shaped spatial problem,
    mode (flex: compiled / eager / SDPA with bias)."""
    device = _norm_device(device)
    rows = []
    t_std = _time_backend("standard", device, dtype) if timing else None
    for n in BACKENDS:
        ok, reason = _availability(n, device, dtype)
        res = _probe(n, device, dtype) if n not in disabled_backends() else {"max_rel_err": None, "mode": None}
        row = {"name": n, "available": ok, "reason": reason, "max_rel_err": res["max_rel_err"],
               "time_ms": None, "rel_time": None, "device": str(device), "dtype": _dt(dtype)}
        if n == "flex":
            row["mode"] = res.get("mode")
        if ok and timing:
            try:
                t = _time_backend(n, device, dtype)
                row["time_ms"] = t * 1e3
                row["rel_time"] = t / t_std
            except Exception as exc:
                row["reason"] = f"timing failed: {type(exc).__name__}: {exc}"
        rows.append(row)
    return rows
