"""The non-reference kernels: ``flash`` (torch SDPA), ``xformers`` and ``flex`` (with lip focus).

All of them compute exactly softmax(q k^T / sqrt(d)) v at ``lip_focus = 1``. A kernel that cannot run here raises
RuntimeError with the reason when it is created.

``flex`` extras (``FlexAttention(lip_focus=..., mouth_mask=...)``):

- ``lip_focus`` (> 0, default 1): in ``spatial_self`` attention only, ``log(lip_focus)`` is added to the
  (already 1/sqrt(d)-scaled) score of every *key* token inside the mouth region, before the softmax. For a
  query whose standard attention mass on mouth keys is ``m`` the new mass is
  ``lip_focus*m / (lip_focus*m + 1 - m)``; the relative weights inside and outside the mouth are unchanged.
  ``lip_focus = 2`` is the seeds' "2x lip-region weight".
- The mouth region comes from the pipeline's mask image (``latentsync/assets/mask.png``: pixel 0 = mouth /
  inpainted region, 255 = kept face; ``load_mouth_mask`` returns True = mouth). For each layer's token grid
  ``(h, w)`` the mask is resized by *area* averaging and thresholded at 0.5: a token is a mouth key when at
  least half of the pixels it covers are mouth. Tokens are the row-major flattening of ``(h, w)`` (as
  ``rearrange(x, "b c h w -> b (h w) c")``). The per-``(h, w)`` key bias is cached.

Compilation: on CUDA (with triton) flex is run through ``torch.compile(flex_attention, dynamic=False)``, so
it is compiled once per (shapes, dtype, device); dynamo's recompile limit is raised to 256 around those calls
only (``recompile_room``), never for the process. On the CPU compiled flex does work on torch 2.13 (checked:
equal to eager to 1e-6, lip focus included), but it is not worth it: 12-19 s of compile per shape on a 2-core
machine, then 1.5 s per call for one 64x64-token frame (8 heads, head_dim 40) vs 0.41 s for SDPA and 2.9 s for eager flex. So ``compile="auto"`` runs flex
eager on the CPU (unfused, materialises the scores; fine for tests); ``compile=True`` forces compilation.
Uncompiled on an accelerator, and for any shape whose compilation fails (warning once, with the error), the
call goes to ``F.scaled_dot_product_attention`` with the lip bias as an additive mask and the same
scale — mathematically the same result.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings

import torch
import torch.nn.functional as F

from ..mask import MASK_PATH as DEFAULT_MASK_PATH  # re-exported
from ..mask import mouth_region as load_mouth_mask  # re-exported: (H, W) bool, True = mouth
from .core import ROLES, AttentionBackend

logger = logging.getLogger("latentsync.attention")



# --------------------------------------------------------------------------------------------- mouth mask

def mouth_mask_tokens(mouth_mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize a (H, W) bool mouth mask to the ``(h, w)`` token grid: area average, then >= 0.5.
    Returns a flat (h*w,) bool tensor in row-major token order."""
    h, w = int(hw[0]), int(hw[1])
    m = mouth_mask.to(torch.float32)[None, None]
    if tuple(m.shape[-2:]) == (h, w):
        small = m
    else:
        small = F.interpolate(m, size=(h, w), mode="area")
    return (small[0, 0] >= 0.5).reshape(-1)


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (1.0 = off), got {value}")
    return value


# ------------------------------------------------------------------------------------------------- flash

class SDPAAttention(AttentionBackend):
    """``torch.nn.functional.scaled_dot_product_attention``: flash / memory-efficient kernels on CUDA,
    a fused C++ kernel on the CPU."""

    name = "flash"

    def __call__(self, q, k, v, *, role, hw=None):
        return F.scaled_dot_product_attention(q, k, v)


# ---------------------------------------------------------------------------------------------- xformers

def xformers_unavailable_reason() -> str | None:
    try:
        import xformers.ops  # noqa: F401
    except Exception as exc:  # ImportError, or a broken build raising anything
        if isinstance(exc, ModuleNotFoundError):
            return "xformers is not installed (pip install xformers built for this torch)"
        return f"xformers failed to import: {type(exc).__name__}: {exc}"
    return None


class XFormersAttention(AttentionBackend):
    """``xformers.ops.memory_efficient_attention``; its layout is (batch, tokens, heads, head_dim)."""

    name = "xformers"

    def __init__(self):
        reason = xformers_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"xformers backend unavailable: {reason}")
        import xformers.ops as xops

        self._mea = xops.memory_efficient_attention

    def __call__(self, q, k, v, *, role, hw=None):
        out = self._mea(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)


# -------------------------------------------------------------------------------------------------- flex

def flex_unavailable_reason() -> str | None:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except Exception:
        return f"torch {torch.__version__} lacks torch.nn.attention.flex_attention (needs torch >= 2.5)"
    return None


def flex_compile_unavailable_reason(device: torch.device) -> str | None:
    """Why flex cannot be compiled on ``device`` (None when it can be tried)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} lacks torch.compile"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
            if not has_triton():
                return "triton is not installed (torch.compile needs it on CUDA)"
        except Exception:
            pass
    return None


_COMPILED_FLEX = None
_COMPILE_LOCK = threading.Lock()


def _compiled_flex():
    """One ``torch.compile(flex_attention, dynamic=False)``; dynamo specialises it per shape/dtype/device."""
    global _COMPILED_FLEX
    with _COMPILE_LOCK:
        if _COMPILED_FLEX is None:
            from torch.nn.attention.flex_attention import flex_attention

            _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
        return _COMPILED_FLEX


def recompile_room():
    """Dynamo's recompile limits raised for the calls inside the block only (settings are process-wide: a run
    must leave them as it found them). A UNet has ~a dozen attention shapes (levels x roles, batch with and
    without CFG), more than dynamo's default of 8 recompiles."""
    import torch._dynamo.config as dcfg

    wanted = {"recompile_limit": 256, "cache_size_limit": 256, "accumulated_recompile_limit": 4096}
    return dcfg.patch(**{name: max(value, getattr(dcfg, name)) for name, value in wanted.items()
                         if hasattr(dcfg, name)})


class FlexAttention(AttentionBackend):
    """``torch.nn.attention.flex_attention`` with optional lip focus (see module doc).

    ``mouth_mask``: (H, W) bool tensor, True = mouth; defaults to ``latentsync/assets/mask.png`` when
    ``lip_focus != 1``. ``compile``: "auto" (compile on CUDA only), True, or False (eager).
    """

    name = "flex"

    def __init__(self, lip_focus: float = 1.0, mouth_mask: torch.Tensor | None = None, compile: bool | str = "auto"):
        reason = flex_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"flex backend unavailable: {reason}")
        from torch.nn.attention.flex_attention import flex_attention

        self._eager = flex_attention
        self.lip_focus = _check_positive("lip_focus", lip_focus)
        if compile not in ("auto", True, False):
            raise ValueError(f"compile must be 'auto', True or False, got {compile!r}")
        self.compile = compile
        if mouth_mask is not None:
            if not isinstance(mouth_mask, torch.Tensor) or mouth_mask.dtype != torch.bool or mouth_mask.ndim != 2:
                raise TypeError("mouth_mask must be a (H, W) bool tensor, True = mouth "
                                "(use load_mouth_mask(path) to read a mask image: pixel 0 = mouth)")
            mouth_mask = mouth_mask.detach().cpu()
        elif self.lip_focus != 1.0:
            mouth_mask = load_mouth_mask()
        self.mouth_mask = mouth_mask
        self._log_bias = math.log(self.lip_focus)
        self._mods: dict = {}           # (h, w, device, dtype) -> (bias (L,), score_mod)
        self._failed: set = set()       # compile keys that failed -> SDPA fallback
        self._compiled_keys: set = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FlexAttention(lip_focus={self.lip_focus}, compile={self.compile!r})"

    # -- helpers
    def _use_compile(self, device: torch.device) -> bool:
        if self.compile is False:
            return False
        if self.compile == "auto" and device.type != "cuda":
            return False
        reason = flex_compile_unavailable_reason(device)
        if reason is not None:
            key = ("nocompile", device.type)
            if key not in self._failed:
                self._failed.add(key)
                logger.warning("flex: cannot compile on %s (%s); using SDPA with the same bias/scale instead",
                               device.type, reason)
            return False
        return True

    def _score_mod(self, hw, n_keys: int, device: torch.device):
        """Cached (bias, score_mod) for a spatial token grid; stable identity avoids recompiles."""
        if hw is None:
            side = int(round(math.sqrt(n_keys)))
            if side * side != n_keys:
                raise ValueError(f"flex lip_focus: spatial_self call without hw and {n_keys} tokens "
                                 "(not a square grid): pass hw=(h, w)")
            hw = (side, side)
        h, w = int(hw[0]), int(hw[1])
        if h * w != n_keys:
            raise ValueError(f"flex lip_focus: hw={hw} does not match {n_keys} key tokens")
        key = (h, w, str(device))
        with self._lock:
            entry = self._mods.get(key)
            if entry is None:
                mouth = mouth_mask_tokens(self.mouth_mask, (h, w))
                bias = torch.where(mouth, self._log_bias, 0.0).to(torch.float32).to(device)

                def score_mod(score, b, h_, q_idx, kv_idx):
                    return score + bias[kv_idx].to(score.dtype)

                entry = (bias, score_mod)
                self._mods[key] = entry
        return entry

    # -- the call
    def __call__(self, q, k, v, *, role, hw=None):
        scale = 1.0 / math.sqrt(q.shape[-1])
        bias = score_mod = None
        if role == "spatial_self" and self.lip_focus != 1.0:
            bias, score_mod = self._score_mod(hw, k.shape[-2], k.device)

        if self._use_compile(q.device):
            ckey = (tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype, str(q.device), score_mod is not None)
            if ckey not in self._failed:
                try:
                    with recompile_room():
                        out = _compiled_flex()(q, k, v, score_mod=score_mod, scale=scale)
                    if ckey not in self._compiled_keys:
                        self._compiled_keys.add(ckey)
                        logger.debug("flex: compiled for q%s k%s %s %s", tuple(q.shape), tuple(k.shape),
                                     q.dtype, q.device)
                    return out
                except Exception as exc:  # compile/lowering error for this shape
                    self._failed.add(ckey)
                    logger.warning("flex: compiling for q%s k%s %s on %s failed (%s: %s); this shape uses "
                                   "SDPA with the same bias/scale", tuple(q.shape), tuple(k.shape), q.dtype,
                                   q.device, type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
            return self._sdpa(q, k, v, bias, scale)

        if q.device.type != "cpu":
            # uncompiled flex on an accelerator materialises all scores: SDPA with the bias is the same math
            return self._sdpa(q, k, v, bias, scale)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            return self._eager(q, k, v, score_mod=score_mod, scale=scale)

    @staticmethod
    def _sdpa(q, k, v, bias, scale):
        mask = None if bias is None else bias.to(q.dtype).view(1, 1, 1, -1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


__all__ = ["ROLES", "SDPAAttention", "XFormersAttention", "FlexAttention", "load_mouth_mask",
           "mouth_mask_tokens", "flex_unavailable_reason", "xformers_unavailable_reason",
           "flex_compile_unavailable_reason", "DEFAULT_MASK_PATH"]
