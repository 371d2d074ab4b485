"""Opt-in DeepCache (Ma et al., 2023) for the LatentSync UNet: an approximation that changes the output.

It follows the published LatentSync's ``DeepCacheSDHelper(pipe).set_params(cache_interval=N, cache_branch_id=0)``.
Branch 0 is the shallowest skip path: ``conv_in`` -> the last layer of the last up block. A *full* step runs the
whole UNet and keeps the features that enter that last layer from the deeper path (the output of the up block's
previous layer, motion module included). A *cached* step computes only ``conv_in``, the last layer (fed the kept
features and the fresh ``conv_in`` output), and the output head; every down block, the mid block and all other
up-block layers are skipped, exactly where DeepCache's block wrappers return their cached outputs.

One state object belongs to one denoising run of one batch: make a new one for every batch of chunks, so chunks
never see each other's features. No global state.
"""

from __future__ import annotations

import torch


class DeepCacheState:
    """Passed to ``UNet3DConditionModel.forward(..., deep_cache=state)``.

    ``reuse`` False: full step, (re)fills ``features``. ``reuse`` True: cached step, reads them.
    ``step(index)`` sets ``reuse`` for denoising step ``index`` (0-based): full on 0, N, 2N, ... as DeepCache's
    uniform schedule, cached in between.
    """

    def __init__(self, interval: int):
        if interval < 1:
            raise ValueError(f"DeepCache interval must be at least 1, got {interval}")
        self.interval = interval
        self.reuse = False
        self.features: torch.Tensor | None = None

    def step(self, index: int) -> "DeepCacheState":
        self.reuse = index % self.interval != 0
        return self

    def cached(self, like: torch.Tensor) -> torch.Tensor:
        """The kept features, checked against this call's ``conv_in`` output (same frames, same size)."""
        if self.features is None:
            raise RuntimeError("DeepCache: a cached step needs a full step first (step 0 is always full)")
        if self.features.shape[0] != like.shape[0] or self.features.shape[-2:] != like.shape[-2:]:
            raise ValueError(f"DeepCache: features were kept for a batch of shape {tuple(self.features.shape)}, "
                             f"this call has {tuple(like.shape)}; use one state per batch")
        return self.features
