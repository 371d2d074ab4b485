"""Face geometry of LatentSync 1.6: the 3-point template, the similarity fit, crop size, resize kernels.

Everything here mirrors the published ``AlignRestore`` / ``ImageProcessor`` recipe; the functions are batched
(torch) so they run on the GPU when the tensors live there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

# Template of the three anchor points (brow centre 1, brow centre 2, nose centre) in 256-px units / 2.8.
TEMPLATE = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]])
FILL_VALUE = 127.0  # grey the reference pads with (uint8 scale for align, [-1, 1] scale for restore)


@dataclass(frozen=True)
class CropGeometry:
    """Crop geometry for a face resolution ``R``: template * r, crop (w, h) = (int(75 r), int(100 r))."""

    resolution: int

    @property
    def ratio(self) -> float:
        return self.resolution / 256 * 2.8

    @property
    def template(self) -> np.ndarray:
        return TEMPLATE * self.ratio

    @property
    def crop_size(self) -> tuple[int, int]:
        """(width, height) of the warped crop before the resize to R x R."""
        return int(75 * self.ratio), int(100 * self.ratio)


def similarity_from_points(points: torch.Tensor, template: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched transform of the reference's ``transformation_from_points`` (without its smoothing term).

    points (N, 3, 2) frame anchors, template (3, 2). Returns M (N, 2, 3) mapping frame -> crop and the
    per-frame residual ``template_normalized[2] - points_normalized[2]`` (N, 2) that the reference smooths.
    Scale is std(template) / std(points) (unbiased std over all coordinates), rotation by Kabsch (SVD).
    """
    p1 = points.float()
    p2 = template.float().to(p1.device).expand_as(p1)
    c1 = p1.mean(dim=1, keepdim=True)
    c2 = p2.mean(dim=1, keepdim=True)
    s1 = (p1 - c1).flatten(1).std(dim=1)[:, None, None]
    s2 = (p2 - c2).flatten(1).std(dim=1)[:, None, None]
    n1 = (p1 - c1) / s1
    n2 = (p2 - c2) / s2
    cov = n1.transpose(1, 2) @ n2
    u, _, vh = torch.linalg.svd(cov)
    v = vh.transpose(1, 2)
    rot = v @ u.transpose(1, 2)
    flip = torch.linalg.det(rot) < 0
    if bool(flip.any()):
        v = v.clone()
        v[flip, :, -1] = -v[flip, :, -1]
        rot = v @ u.transpose(1, 2)
    scale = s2 / s1
    s_rot = scale * rot
    trans = c2.transpose(1, 2) - s_rot @ c1.transpose(1, 2)
    return torch.cat([s_rot, trans], dim=2), n2[:, 2] - n1[:, 2]


def smooth_translation(matrices: torch.Tensor, residual: torch.Tensor, prev: torch.Tensor | None):
    """The reference's 'smoothing': bias_t = 0.2 bias_{t-1} + 0.8 residual_t (bias_0 = residual_0), added to
    the translation column. Returns (matrices, last bias) so the state carries across streaming windows."""
    out = matrices.clone()
    bias = prev
    for i in range(out.shape[0]):
        bias = residual[i] if bias is None else 0.2 * bias + 0.8 * residual[i]
        out[i, :, 2] += bias
    return out, bias


def fp16_round(m: torch.Tensor) -> torch.Tensor:
    """The reference casts its affine matrices to float16 before warping; reproduce that rounding."""
    return m.to(torch.float16).to(m.dtype)


def invert_affine(m: torch.Tensor) -> torch.Tensor:
    """Inverse of (N, 2, 3) affine matrices, in float64."""
    a = m.double()
    lin = torch.linalg.inv(a[:, :, :2])
    return torch.cat([lin, -lin @ a[:, :, 2:]], dim=2).to(m.dtype)


def transform_points(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Apply (N, 2, 3) matrices to (N, K, 2) points."""
    return pts @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]


# ----------------------------------------------------------------------------------------------- resize kernels


def _lanczos4_weights(fx: np.float32) -> np.ndarray:
    """OpenCV's interpolateLanczos4 (float/double mix as in resize.cpp)."""
    s45 = 0.70710678118654752440084436210485
    cs = ((1, 0), (-s45, -s45), (0, 1), (s45, -s45), (-1, 0), (s45, s45), (0, -1), (-s45, s45))
    y0 = -(float(fx) + 3) * math.pi * 0.25
    s0, c0 = math.sin(y0), math.cos(y0)
    coeffs = np.zeros(8, np.float32)
    total = np.float32(0)
    for i in range(8):
        y0_ = np.float32(fx + np.float32(3 - i))
        if abs(y0_) >= 1e-6:
            y = -float(y0_) * math.pi * 0.25
            coeffs[i] = np.float32((cs[i][0] * s0 + cs[i][1] * c0) / (y * y))
        else:
            coeffs[i] = np.float32(1e30)
        total = np.float32(total + coeffs[i])
    return (coeffs * np.float32(1.0 / total)).astype(np.float32)


@lru_cache(maxsize=32)
def lanczos4_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Tap indices (dst, 8) and fixed-point weights (dst, 8) of cv2.resize(INTER_LANCZOS4) on uint8 along one
    axis: src coordinate (d + 0.5) * src/dst - 0.5, replicated borders, weights rounded to 1/2048."""
    scale = 1.0 / (dst / src)
    idx = np.zeros((dst, 8), np.int64)
    wts = np.zeros((dst, 8), np.int32)
    for d in range(dst):
        f = np.float32((d + 0.5) * scale - 0.5)
        s = math.floor(f)
        f = np.float32(f - np.float32(s))
        idx[d] = np.clip(np.arange(s - 3, s + 5), 0, src - 1)
        wts[d] = np.rint(_lanczos4_weights(f) * np.float32(2048)).astype(np.int32)
    return idx, wts


@lru_cache(maxsize=32)
def lanczos4_matrix(src: int, dst: int) -> np.ndarray:
    """Dense (src, dst) matrix of the integer tap weights (taps that land on the same replicated border pixel
    add up, exactly as OpenCV's sums do)."""
    idx, wts = lanczos4_table(src, dst)
    mat = np.zeros((src, dst), np.float64)
    for k in range(8):
        np.add.at(mat, (idx[:, k], np.arange(dst)), wts[:, k])
    return mat


def resize_lanczos4_u8(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """cv2.resize(..., INTER_LANCZOS4) for uint8 (B, C, H, W) tensors, bit-exact: OpenCV's fixed-point
    arithmetic (integer horizontal pass, integer vertical pass, (v + 2^21) >> 22, saturate) done as two
    matmuls whose products and sums are integers, exact in float32 (< 2^24) and float64 respectively."""
    b, c, h, w = img.shape
    oh, ow = size
    dev = img.device
    wx = torch.from_numpy(lanczos4_matrix(w, ow)).to(dev, torch.float32)
    wy = torch.from_numpy(lanczos4_matrix(h, oh).T.copy()).to(dev, torch.float64)
    hor = img.to(torch.float32) @ wx  # (B, C, H, OW), integers below 2^20
    ver = wy @ hor.to(torch.float64)  # (B, C, OH, OW), integers below 2^31
    return torch.floor((ver + (1 << 21)) / (1 << 22)).clamp_(0, 255).to(torch.uint8)


def min_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """Erosion of (B, 1, H, W) by a flat k x k square with anchor k // 2 (cv2.erode / kornia erosion
    conventions; the border never erodes)."""
    if k <= 1:
        return x
    a = k // 2
    big = torch.finfo(x.dtype).max
    y = F.pad(x, (a, k - 1 - a, 0, 0), value=big)
    y = -F.max_pool2d(-y, (1, k), stride=1)
    y = F.pad(y, (0, 0, a, k - 1 - a), value=big)
    return -F.max_pool2d(-y, (k, 1), stride=1)
