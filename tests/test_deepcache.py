"""Opt-in DeepCache (branch 0, as the published LatentSync's DeepCacheSDHelper): exact reuse, fewer module calls,
deep blocks only on full steps, off by default and then bit-identical."""

import json

import pytest
import torch
from torch import nn

from latentsync.denoise import DenoiseSettings, LipSyncDenoiser
from latentsync.models.deepcache import DeepCacheState
from latentsync.models.loading import load_unet

from helpers import chunks_of, make_denoiser


@pytest.fixture(scope="module")
def unet(reference_dir):
    config = json.loads((reference_dir / "unet_tiny_config.json").read_text())
    return load_unet(reference_dir / "unet_tiny.safetensors", config)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 13, 8, 16, 16, generator=g), torch.randn(16, 50, 24, generator=g)


class CallCounter:
    """Counts Conv2d/Linear calls (the FLOPs) while active."""

    def __init__(self, model: nn.Module):
        self.calls = 0
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, (nn.Conv2d, nn.Linear))]

    def _hook(self, *_):
        self.calls += 1

    def take(self) -> int:
        calls, self.calls = self.calls, 0
        return calls

    def remove(self):
        for handle in self.handles:
            handle.remove()


@torch.inference_mode()
def test_cached_step_reuses_exactly_what_the_full_pass_computes(unet, inputs):
    sample, audio = inputs
    exact = unet(sample, 500, encoder_hidden_states=audio)
    state = DeepCacheState(3)
    full = unet(sample, 500, encoder_hidden_states=audio, deep_cache=state.step(0))
    assert torch.equal(full, exact)  # a full step is the exact UNet
    assert state.features is not None and not state.reuse
    cached = unet(sample, 500, encoder_hidden_states=audio, deep_cache=state.step(1))
    assert state.reuse
    assert (cached - exact).abs().max().item() <= 1e-5
    # another timestep on the cached path: the shallow branch does take the new input
    assert not torch.allclose(unet(sample, 100, encoder_hidden_states=audio, deep_cache=state.step(2)), cached)


@torch.inference_mode()
def test_cached_step_makes_far_fewer_module_calls(unet, inputs):
    sample, audio = inputs
    counter = CallCounter(unet)
    try:
        state = DeepCacheState(3)
        unet(sample, 500, encoder_hidden_states=audio)
        exact_calls = counter.take()
        unet(sample, 500, encoder_hidden_states=audio, deep_cache=state.step(0))
        full_calls = counter.take()
        unet(sample, 400, encoder_hidden_states=audio, deep_cache=state.step(1))
        cached_calls = counter.take()
    finally:
        counter.remove()
    assert full_calls == exact_calls
    print(f"conv/linear calls: full {full_calls}, cached {cached_calls}")
    assert cached_calls * 5 < full_calls


@torch.inference_mode()
def test_cached_step_checks_its_state(unet, inputs):
    sample, audio = inputs
    with pytest.raises(RuntimeError, match="full step first"):
        unet(sample, 500, encoder_hidden_states=audio, deep_cache=DeepCacheState(3).step(1))
    state = DeepCacheState(3)
    unet(sample, 500, encoder_hidden_states=audio, deep_cache=state.step(0))
    with pytest.raises(ValueError, match="one state per batch"):
        unet(sample[:1], 500, encoder_hidden_states=audio[:8], deep_cache=state.step(1))
    with pytest.raises(ValueError, match="at least 1"):
        DeepCacheState(0)
    with pytest.raises(ValueError, match="deepcache_interval"):
        DenoiseSettings(deepcache_interval=-1)


def test_off_by_default_and_interval_one_is_exact(reference_pipeline):
    spec, tensors = reference_pipeline[0], reference_pipeline[1]
    assert DenoiseSettings().deepcache_interval == 0
    results = []
    for interval in (0, 1):
        denoiser = make_denoiser(reference_pipeline, deepcache_interval=interval)
        denoiser.start()
        results.append(torch.cat(denoiser.run(chunks_of(tensors, spec["num_frames"]))))
    assert torch.equal(results[0], results[1])
    assert (results[0] - tensors["out_pixels"]).abs().max().item() <= 2e-3


def test_interval_three_is_close_but_not_exact(reference_pipeline):
    spec, tensors = reference_pipeline[0], reference_pipeline[1]
    out = {}
    for per_call in (1, 2):  # a batch of chunks (and CFG doubling) goes through the cache together
        denoiser = make_denoiser(reference_pipeline, deepcache_interval=3, chunks_per_call=per_call)
        denoiser.start()
        out[per_call] = torch.cat(denoiser.run(chunks_of(tensors, spec["num_frames"])))
    pixels = out[1]
    assert pixels.shape == tensors["out_pixels"].shape and torch.isfinite(pixels).all()
    diff = (pixels - tensors["out_pixels"]).abs().max().item()
    print(f"DeepCache interval 3 vs exact: max abs pixel difference {diff:.4g}")
    assert 1e-4 < diff < 0.5
    assert (out[2] - pixels).abs().max().item() <= 1e-4


def test_deep_blocks_run_only_on_full_steps_of_each_batch(reference_pipeline):
    spec, tensors, unet = reference_pipeline[0], reference_pipeline[1], reference_pipeline[2]
    settings = DenoiseSettings(steps=7, guidance_scale=spec["guidance_scale"], seed=spec["seed"],
                               chunk_size=spec["num_frames"], deepcache_interval=3)
    denoiser = LipSyncDenoiser(unet, reference_pipeline[3], spec["scheduler"], tensors["mask"], settings)
    trace = []  # per UNet call: did the mid block and the deepest down block run?
    deep = [unet.mid_block, unet.down_blocks[-1], unet.up_blocks[0]]
    handles = [unet.register_forward_pre_hook(lambda *_: trace.append(0))]
    handles += [m.register_forward_hook(lambda *_: trace.__setitem__(-1, trace[-1] + 1)) for m in deep]
    try:
        denoiser.start()
        denoiser.run(chunks_of(tensors, spec["num_frames"]))  # two chunks, one per batch
    finally:
        for handle in handles:
            handle.remove()
    full = [3 if step in (0, 3, 6) else 0 for step in range(7)]
    assert trace == full + full  # the second chunk starts again with a full step
