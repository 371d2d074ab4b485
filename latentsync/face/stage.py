"""The face stage: detect -> align (batched warp + exact Lanczos resize) and restore (batched inverse warp + soft
paste), with the reference's translation smoothing carried across streaming windows.

Frames are uint8 (N, H, W, 3) RGB numpy arrays or tensors. Tensor work runs on ``device``; warps touch only a
region of interest around the face (bit-equivalent to warping the whole frame, far cheaper).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

import cv2
import kornia
import numpy as np
import torch
import torch.nn.functional as F

from .base import FaceDetector
from .choice import FaceTracker, LargestFace
from .geometry import (FILL_VALUE, CropGeometry, fp16_round, invert_affine, min_filter, resize_lanczos4_u8,
                       similarity_from_points, smooth_translation, transform_points)
from ..errors import NoFaceError

log = logging.getLogger("latentsync.face")



def no_face_error(num_frames: int, source: str = "the video") -> NoFaceError:
    return NoFaceError(
        f"No face was found in any of the {num_frames} frames of {source}; use a clip where one face is clearly "
        f"visible (frontal, at least 80 px tall)."
    )


class _PerFrame:
    """A dataclass whose fields all hold one row per frame (tensors or arrays): sliced and joined alike."""

    def __len__(self) -> int:
        return int(self.has_face.shape[0])

    @classmethod
    def concatenate(cls, items: list):
        def join(rows):
            return torch.cat(rows) if isinstance(rows[0], torch.Tensor) else np.concatenate(rows)

        return cls(*(join([getattr(item, f.name) for item in items]) for f in fields(cls)))

    def slice(self, start: int, stop: int):
        return type(self)(*(getattr(self, f.name)[start:stop] for f in fields(self)))


@dataclass
class FaceTrack(_PerFrame):
    """Where the face is in consecutive frames: affine float32 (N, 2, 3) frame -> crop matrices (zeros where
    has_face is False), has_face bool (N,), anchors float (N, 3, 2) (NaN where no face). About 100 bytes a frame on
    the CPU: a whole clip's track fits in RAM and travels to other workers."""

    affine: torch.Tensor
    has_face: torch.Tensor
    anchors: np.ndarray


@dataclass
class AlignedBatch(_PerFrame):
    """faces: uint8 (N, 3, R, R) on the stage's device (grey for frames without a face); affine: float32
    (N, 2, 3) frame -> crop matrices (zeros where has_face is False); has_face: bool (N,);
    anchors: float (N, 3, 2) detected anchor points (NaN where no face)."""

    faces: torch.Tensor
    affine: torch.Tensor
    has_face: torch.Tensor
    anchors: np.ndarray


def _check_frames(frames) -> None:
    dtype_ok = frames.dtype in (torch.uint8, np.uint8)
    if not dtype_ok or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")


def _rois(corners: torch.Tensor, margin: torch.Tensor, height: int, width: int):
    """Common-size regions of interest covering ``corners`` (N, K, 2) + margin, kept inside the frame.
    Returns integer origins (N, 2) as (x0, y0) and the size (h, w)."""
    lo = (corners.amin(dim=1) - margin[:, None]).floor()
    hi = (corners.amax(dim=1) + margin[:, None]).ceil() + 1
    lo = torch.maximum(lo, torch.zeros_like(lo))
    hi = torch.minimum(hi, torch.tensor([width, height], dtype=hi.dtype, device=hi.device))
    rw = int(min(width, max(1, int((hi[:, 0] - lo[:, 0]).max()))))
    rh = int(min(height, max(1, int((hi[:, 1] - lo[:, 1]).max()))))
    x0 = lo[:, 0].clamp(max=width - rw).long()
    y0 = lo[:, 1].clamp(max=height - rh).long()
    return torch.stack([x0, y0], dim=1).cpu(), (rh, rw)


def _gather(frames, idx, origins: torch.Tensor, size: tuple[int, int], device) -> torch.Tensor:
    """Crops (N, 3, h, w) float on ``device`` of frames[idx] (uint8 (N, H, W, 3) numpy or tensor)."""
    h, w = size
    crops = [frames[i, y:y + h, x:x + w] for i, (x, y) in zip(idx.tolist(), origins.tolist())]
    if isinstance(frames, torch.Tensor):
        batch = torch.stack(crops)
    else:
        batch = torch.from_numpy(np.stack(crops))
    return batch.to(device).permute(0, 3, 1, 2).float()


class FaceStage:
    """Stateful face stage for one clip. ``align`` carries the reference's translation smoothing from call to
    call (frames must arrive in order); ``reset`` starts a new clip."""

    def __init__(self, detector: FaceDetector | None, resolution: int = 512, device="cpu",
                 fp16_matrices: bool = True, roi_warp: bool | None = None, face: int = 0,
                 warp_dtype: torch.dtype | None = None, recipe: str | None = None):
        self.detector = detector
        self.face = face  # 0 = the largest of each frame (the reference), N = the N-th from the left, followed
        self.geometry = CropGeometry(resolution)
        self.resolution = resolution
        self.device = torch.device(device)
        # whose recipe the warp follows: the device's own by default ("cuda" on CPU tensors: the VRAM model's count)
        self.recipe = recipe or self.device.type
        self.fp16_matrices = fp16_matrices  # round matrices through float16 as the reference does
        self.roi_warp = self.recipe == "cpu" if roi_warp is None else roi_warp
        # the face warp's dtype: float16 on CUDA, as the published AlignRestore warps there (the CPU, where the
        # published pipeline does not run, keeps float32)
        self.warp_dtype = warp_dtype or (torch.float16 if self.recipe == "cuda" else torch.float32)
        self._template = torch.tensor(self.geometry.template, dtype=torch.float32)
        self.reset()

    def raise_if_no_face(self, source: str = "the video") -> None:
        """Raise NoFaceError when frames were seen and none of them had a usable face."""
        if self.frames_seen and self.frames_without_face == self.frames_seen:
            raise no_face_error(self.frames_seen, source)

    def reset(self) -> None:
        """Start a new clip: no smoothing carried over, no counts, a fresh face choice."""
        self._bias: torch.Tensor | None = None
        self.frames_seen = 0
        self.frames_without_face = 0
        self.chooser = FaceTracker(self.face) if self.face else LargestFace()

    def snapshot(self) -> tuple:
        """The state ``align`` carries from batch to batch; ``rewind`` to it to align a batch again."""
        return self._bias, self.frames_seen, self.frames_without_face, self.chooser.state()

    def rewind(self, snapshot: tuple) -> None:
        self._bias, self.frames_seen, self.frames_without_face, chooser = snapshot
        self.chooser.restore(chooser)

    # ---------------------------------------------------------------------------------------------- align

    def affine_from_anchors(self, anchors: np.ndarray) -> torch.Tensor:
        """(N, 3, 2) anchors of consecutive frames -> (N, 2, 3) float32 frame->crop matrices (smoothed)."""
        m, residual = similarity_from_points(torch.as_tensor(anchors, dtype=torch.float32), self._template)
        m, self._bias = smooth_translation(m, residual, self._bias)
        return fp16_round(m) if self.fp16_matrices else m

    def locate(self, frames, anchors: list | None = None) -> FaceTrack:
        """Detect (unless ``anchors`` are given; ``frames`` may then be None) and fit the smoothed frame -> crop
        matrices; no pixels move. Frames without a face get zero matrices and has_face False; they are counted in
        ``frames_without_face``."""
        if frames is not None:
            _check_frames(frames)
        n = len(frames) if frames is not None else len(anchors)
        if anchors is None:
            if self.detector is None:
                raise ValueError("FaceStage has no detector; pass anchors to align().")
            anchors = self.detector.detect(frames if not isinstance(frames, torch.Tensor) else frames.cpu().numpy(),
                                           self.chooser)
        has = np.array([a is not None for a in anchors], dtype=bool)
        pts = np.full((n, 3, 2), np.nan)
        if has.any():
            pts[has] = np.stack([a for a in anchors if a is not None])
        self.frames_seen += n
        self.frames_without_face += int((~has).sum())
        affine = torch.zeros((n, 2, 3), dtype=torch.float32)
        if has.any():
            affine[torch.from_numpy(np.nonzero(has)[0])] = self.affine_from_anchors(pts[has])
        return FaceTrack(affine, torch.from_numpy(has), pts)

    def crop(self, frames, track: FaceTrack) -> AlignedBatch:
        """Warp and resize the faces where ``track`` puts them (grey for frames without a face)."""
        _check_frames(frames)
        r = self.resolution
        faces = torch.full((len(frames), 3, r, r), int(FILL_VALUE), dtype=torch.uint8, device=self.device)
        idx = np.nonzero(track.has_face.cpu().numpy())[0]
        if len(idx):
            m = track.affine[torch.from_numpy(idx)]
            faces[torch.from_numpy(idx).to(self.device)] = self._warp_faces(frames, idx, m)
        return AlignedBatch(faces, track.affine.to(self.device), track.has_face.to(self.device), track.anchors)

    def align(self, frames, anchors: list | None = None) -> AlignedBatch:
        """Detect (unless ``anchors`` are given), fit, warp and resize: ``crop`` where ``locate`` finds them."""
        return self.crop(frames, self.locate(frames, anchors))

    def _warp_faces(self, frames, idx: np.ndarray, m: torch.Tensor) -> torch.Tensor:
        """Warp (bilinear, grey fill), truncate to uint8 as the reference does, Lanczos-resize to R x R.

        On the GPU the whole frame is warped, which is bit-identical to the reference recipe in float32. On the
        CPU only a region of interest around the face is converted and warped (3x faster): kornia then
        normalises coordinates against a different size, and the truncating cast turns that float32 rounding
        into 1-LSB flips on ~0.5 % of the crop's pixels."""
        cw, ch = self.geometry.crop_size
        height, width = frames.shape[1:3]
        m, dtype = m.double(), self.warp_dtype
        if self.roi_warp:
            corners = torch.tensor([[0, 0], [cw - 1, 0], [0, ch - 1], [cw - 1, ch - 1]], dtype=torch.float64)
            src = transform_points(invert_affine(m), corners.expand(len(idx), 4, 2))
            origins, size = _rois(src, torch.full((len(idx),), 2.0, dtype=torch.float64), height, width)
            img = _gather(frames, idx, origins, size, self.device)
            m = m.clone()
            m[:, :, 2] += (m[:, :, :2] @ origins.double()[:, :, None])[..., 0]
        else:
            sel = torch.from_numpy(idx)
            t = frames[sel.to(frames.device)] if isinstance(frames, torch.Tensor) else torch.from_numpy(frames[idx])
            img = t.to(self.device).permute(0, 3, 1, 2).float()
        fill = torch.full((3,), FILL_VALUE, device=self.device, dtype=dtype)
        crop = kornia.geometry.transform.warp_affine(img.to(dtype), m.to(self.device, dtype), (ch, cw),
                                                     mode="bilinear", padding_mode="fill", fill_value=fill)
        crop = crop.clamp_(0, 255).to(torch.uint8)  # the reference truncates (numpy astype) the warped crop
        r = self.resolution
        if self.recipe == "cpu":  # OpenCV itself: bit-identical to resize_lanczos4_u8 and faster here
            hwc = crop.permute(0, 2, 3, 1).numpy()
            out = np.stack([cv2.resize(c, (r, r), interpolation=cv2.INTER_LANCZOS4) for c in hwc])
            return torch.from_numpy(out).permute(0, 3, 1, 2)
        return resize_lanczos4_u8(crop, (r, r))

    # -------------------------------------------------------------------------------------------- restore

    def restore(self, frames, new_faces: torch.Tensor, aligned: AlignedBatch, out: np.ndarray | None = None,
                mouth: np.ndarray | None = None, mouth_out: np.ndarray | None = None):
        """Paste ``new_faces`` (N, 3, R, R): float in [-1, 1] (as the VAE decodes them) or uint8 0..255, back
        into ``frames`` (uint8 (N, H, W, 3) numpy). Frames without a face are returned unchanged. Returns a new
        uint8 numpy array (or ``out``, which may be ``frames`` itself for an in-place paste).

        ``mouth`` (R, R), the generated mouth's weight in a face crop, with ``mouth_out`` (N, H, W) uint8 zeros:
        each frame's weight of the generated mouth, 0..255, written into ``mouth_out``."""
        frames_np = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        result = out if out is not None else frames_np.copy()
        if out is not None and out is not frames_np:
            result[...] = frames_np
        has = aligned.has_face.cpu().numpy()
        if not has.any():
            return result
        idx = np.nonzero(has)[0]
        faces = new_faces[torch.from_numpy(idx).to(new_faces.device)].to(self.device)
        faces = faces.float() / 127.5 - 1 if faces.dtype == torch.uint8 else faces.float()
        pasted, origins, weights = self._paste(frames_np, idx, faces, aligned.affine[torch.from_numpy(idx).to(
            aligned.affine.device)].cpu(), mouth)
        h, w = pasted.shape[1:3]
        for j, (x, y) in enumerate(origins.tolist()):
            result[idx[j], y:y + h, x:x + w] = pasted[j]
            if weights is not None:
                mouth_out[idx[j], y:y + h, x:x + w] = weights[j]
        return result

    def _paste(self, frames_np: np.ndarray, idx: np.ndarray, faces: torch.Tensor, m: torch.Tensor,
               mouth: np.ndarray | None = None):
        cw, ch = self.geometry.crop_size
        height, width = frames_np.shape[1:3]
        n = len(idx)
        # torchvision resize(BICUBIC, antialias=True) of the decoded face back to the crop size
        faces = F.interpolate(faces, size=(ch, cw), mode="bicubic", align_corners=False, antialias=True)
        inv = invert_affine(m.double())
        if self.fp16_matrices:
            inv = fp16_round(inv)
        corners = torch.tensor([[0, 0], [cw - 1, 0], [0, ch - 1], [cw - 1, ch - 1]], dtype=torch.float64)
        dst = transform_points(inv, corners.expand(n, 4, 2))
        # Work in a region of interest: the warped crop's bounding box plus a margin larger than the blur radius
        # (~sqrt(area)/20), so the ROI's own borders only ever see zero mask and the result equals the reference's
        # full-frame computation (its frame-border behaviour included, since the ROI is clipped to the frame).
        scale = torch.linalg.det(inv[:, :, :2]).abs().sqrt()
        margin = 8 + (math.sqrt(cw * ch) * scale / 20).ceil()
        origins, size = _rois(dst, margin, height, width)
        roi = _gather(frames_np, idx, origins, size, self.device)
        inv_roi = inv.clone()
        inv_roi[:, :, 2] -= origins.double()
        inv_roi = inv_roi.float().to(self.device)
        warp = kornia.geometry.transform.warp_affine
        fill = torch.full((3,), FILL_VALUE, device=self.device)
        inv_face = warp(faces, inv_roi, size, mode="bilinear", padding_mode="fill", fill_value=fill)
        inv_face = (inv_face / 2 + 0.5).clamp(0, 1) * 255
        ones = torch.ones((n, 1, ch, cw), device=self.device)
        mask = min_filter(warp(ones, inv_roi, size, padding_mode="zeros"), 2)
        pasted = mask * inv_face
        soft = torch.empty_like(mask)
        w_edge = [int(float(a) ** 0.5) // 20 for a in mask.float().sum(dim=(1, 2, 3)).cpu()]
        for we in sorted(set(w_edge)):
            sel = torch.tensor([i for i, v in enumerate(w_edge) if v == we], device=self.device)
            center = min_filter(mask[sel], we * 2 if we > 0 else 3)  # cv2.erode treats an empty kernel as 3x3
            k = we * 2 + 1
            sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
            soft[sel] = kornia.filters.gaussian_blur2d(center, (k, k), (sigma, sigma)) if k > 1 else center
        out = soft * pasted + (1 - soft) * roi
        weights = None
        if mouth is not None:  # the mouth's weight in the crop, carried into the frame as the face is
            crop = F.interpolate(torch.from_numpy(np.ascontiguousarray(mouth, dtype=np.float32))[None, None].to(
                self.device), size=(ch, cw), mode="bilinear", align_corners=False, antialias=True)
            weight = soft * warp(crop.expand(n, -1, -1, -1), inv_roi, size, padding_mode="zeros")
            weights = (weight[:, 0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        return out.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy(), origins, weights
