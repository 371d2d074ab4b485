"""The VRAM model: its tracker against torch's, its counts against real tensors, the planner's tiers per budget, and
each tier's output against the default's."""

import json

import pytest
import torch

from latentsync.attention.selection import create_backend
from latentsync.checkpoints import SCHEDULER_CONFIG
from latentsync.denoise import Chunk, DenoiseSettings, LipSyncDenoiser
from latentsync.face.geometry import CropGeometry
from latentsync.face.stage import FaceStage
from latentsync.mask import load_mouth_mask
from latentsync.memory_limiter import Hardware, OutOfMemory, Workload, plan_memory
from latentsync.models.streaming import stream_groups, streamed_weights
from latentsync.models.unet import UNet3DConditionModel
from latentsync.options import PipelineOptions
from latentsync.tools.make_tiny_checkpoints import TINY_RESOLUTION, TINY_UNET, TINY_VAE
from latentsync.vram import (CUDA_CONTEXT, GB, GpuWork, ModelShapes, VramModel, _face_affine, count_denoise,
                             count_faces, count_paste, count_warp)
from latentsync.vram_tracker import LiveBytes

TINY = ModelShapes(TINY_UNET, TINY_VAE, (80, 1500, 64, 4, 2), TINY_RESOLUTION, 16)
CARD = Hardware("cuda", "a card", 80 * GB, 79 * GB, (9, 0), 128 * GB, 100 * GB)
FRAME = (960, 540)


def test_tracker_agrees_with_torch_memtracker():
    """Our live-bytes count and torch's MemTracker see the same peak on the same real work (sizes in 512-byte
    blocks, which both count alike)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.GELU(), torch.nn.Linear(512, 128))
    x = torch.randn(64, 128)
    ours = LiveBytes()
    ours.add_module(model)  # MemTracker counts the parameters of the modules that run
    with torch.no_grad(), ours:
        y = model(x) * 2
        del y
    theirs = MemTracker()
    with torch.no_grad(), theirs:
        y = model(x) * 2
        del y
    assert ours.peak == theirs.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] > 526848


def _real_tiny_models(dtype):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    unet = UNet3DConditionModel(**TINY_UNET).eval().requires_grad_(False).to(dtype)
    unet.set_attention_backend(create_backend("flash", "cpu", dtype, strict=True))  # the kernel auto picks
    vae = AutoencoderKL(**TINY_VAE).eval().requires_grad_(False).to(dtype)
    return unet, vae


def _denoiser(unet, vae, dtype, **settings):
    mask = torch.from_numpy(load_mouth_mask(TINY_RESOLUTION).copy())
    return LipSyncDenoiser(unet, vae, json.loads(SCHEDULER_CONFIG.read_text()), mask,
                           DenoiseSettings(steps=2, **settings), "cpu", dtype)


def test_model_counts_what_real_tensors_take():
    """The fake count of one group's denoising (each stage) equals the same work on real tensors, counted by the
    same tracker, within 5 %; the face stages' lines through 2 and 3 frames meet direct counts at 5."""
    work = GpuWork(1, 4, 4, (192, 160), dtype="float32")
    counted = count_denoise(TINY, work)
    unet, vae = _real_tiny_models(torch.float32)
    denoiser = _denoiser(unet, vae, torch.float32, vae_batch=4)
    generator = torch.Generator().manual_seed(1)
    chunk = Chunk(torch.randint(0, 256, (16, 3, TINY_RESOLUTION, TINY_RESOLUTION), generator=generator,
                                dtype=torch.uint8), torch.randn(16, 50, TINY_UNET["cross_attention_dim"]))
    real = LiveBytes()
    real.ignore(unet, vae)
    real.add(denoiser.paste_mask, denoiser.float_mask, denoiser.latent_mask)
    with real, real.in_stage("denoise loop"), real.stages({"unet": unet, "vae encode": vae.encoder,
                                                           "vae decode": vae.decoder}):
        denoiser.start()
        denoiser.run([chunk])
    assert set(counted) == {"denoise loop", "unet", "vae encode", "vae decode"}
    for stage, peak in counted.items():
        assert peak == pytest.approx(real.stage_peaks[stage], rel=0.05), stage

    faces = count_faces(TINY, GpuWork(1, 4, 5, (192, 160), dtype="float32"))  # the line through 2 and 3 frames, at 5
    stage = FaceStage(None, TINY_RESOLUTION, device="cpu", recipe="cuda")
    affine = _face_affine(CropGeometry(TINY_RESOLUTION), *work.frame_shape)[None]
    for name, count in (("align", count_warp), ("restore", count_paste)):  # (small tensors' 512-byte blocks aside)
        assert faces[name] == pytest.approx(count(stage, affine, torch.float32, 5, work.frame_shape), rel=0.01)


def test_every_step_after_the_first_peaks_alike():
    work = GpuWork(1, 2, 2, (192, 160), dtype="float32")
    assert count_denoise(TINY, work, steps=2) == count_denoise(TINY, work, steps=4)


def _plan(model, version, budget, frames=250):
    resolution = 512 if version == "1.6" else 256
    return plan_memory(CARD, Workload(resolution, frames, FRAME), PipelineOptions(vram_budget=budget), model)


# the tiers the README states for each card size (the targets: 1.6 fits 8 GB by default, 6 GB with guidance's halves
# in sequence, 4 GB with streamed weights)
STATED = {"1.6": {24: "default", 12: "default", 8: "default", 6: "halves", 4: "streamed", 3: "streamed"},
          "1.5": {24: "default", 12: "default", 8: "default", 6: "default", 4: "offload", 3: "streamed"}}


@pytest.mark.parametrize("version", ["1.6", "1.5"])
def test_planner_takes_the_stated_tier_for_each_budget(vram_models, version):
    model = vram_models[version]
    chosen = {}
    for budget, tier in STATED[version].items():
        plan = _plan(model, version, budget)
        chosen[budget] = plan.tier
        assert plan.modelled_peak + CUDA_CONTEXT <= budget * GB
        assert f"within the {(budget * GB - CUDA_CONTEXT) / GB:.2f} GB budget (vram_budget {budget} GB)" in \
            plan.reasons[0]
    assert chosen == STATED[version]
    big, small = _plan(model, version, 24), _plan(model, version, 4)
    assert (big.chunks_per_call, big.vae_batch) >= (small.chunks_per_call, small.vae_batch) != (
        big.chunks_per_call, big.vae_batch)


def test_the_peak_does_not_grow_with_the_video(vram_models):
    ten_seconds, ten_minutes = _plan(vram_models["1.6"], "1.6", 8, 250), _plan(vram_models["1.6"], "1.6", 8, 15000)
    assert ten_seconds.modelled_peak == ten_minutes.modelled_peak > 0
    assert ten_seconds.batches == ten_minutes.batches


def test_an_impossible_budget_names_the_smallest_that_works(vram_models):
    with pytest.raises(OutOfMemory, match=r"give vram_budget at least 2\.\d") as error:
        _plan(vram_models["1.6"], "1.6", 2)
    assert str(error.value).count(".") <= 4  # one sentence (numbers aside)


def test_stream_groups_are_diffusers_groups():
    """The groups the VRAM model counts for streamed weights are the ones diffusers' group offloading makes."""
    from diffusers.hooks import HookRegistry

    unet, _ = _real_tiny_models(torch.float32)
    ours = sorted(sorted(id(module) for module in group) for group in stream_groups(unet))
    with streamed_weights(unet, "cpu"):
        groups = {}
        for module in unet.modules():
            registry = getattr(module, "_diffusers_hook", None)
            hook = registry.hooks.get("group_offloading") if isinstance(registry, HookRegistry) else None
            if hook is not None:
                groups[id(hook.group)] = hook.group
        theirs = sorted(sorted(id(module) for module in group.modules) for group in groups.values())
    assert ours == theirs and len(ours) > 10
    assert not any(hasattr(module, "_diffusers_hook") and module._diffusers_hook.hooks for module in unet.modules())


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 0.05)])
def test_each_tier_gives_the_default_output(dtype, tolerance):
    """Guidance's halves in sequence, the VAE off the device during the UNet and streamed UNet weights: the same
    faces as the default within tolerance (float32: 1e-4 of DESIGN.md's UNet tolerance; the CPU has no fast
    float16 kernels, bfloat16 stands for the half-precision order)."""
    unet, vae = _real_tiny_models(dtype)
    generator = torch.Generator().manual_seed(3)
    chunks = [Chunk(torch.randint(0, 256, (16, 3, TINY_RESOLUTION, TINY_RESOLUTION), generator=generator,
                                  dtype=torch.uint8), torch.randn(16, 50, TINY_UNET["cross_attention_dim"]))
              for _ in range(2)]

    def run(**settings):
        denoiser = _denoiser(unet, vae, dtype, chunks_per_call=2, **settings)
        denoiser.start()
        return torch.cat(denoiser.run(chunks)).float()

    default = run()
    for tier in ({"guidance_in_sequence": True}, {"guidance_in_sequence": True, "offload_vae": True}):
        assert (run(**tier) - default).abs().max() <= tolerance, tier
    with streamed_weights(unet, "cpu"):
        streamed = run(guidance_in_sequence=True, offload_vae=True)
    assert (streamed - default).abs().max() <= tolerance
    assert torch.equal(run(), default)  # and nothing of the tiers stays behind


def test_a_work_counted_by_another_process_is_read_not_counted_again(tmp_path, monkeypatch):
    """Two processes that plan (two ComfyUI servers, two test workers) share their counts: a model whose counts
    were read before the other counted looks in the shared file again before counting."""
    import latentsync.vram as vram

    cache = tmp_path / "counts.json"
    first, second = VramModel(TINY, cache), VramModel(TINY, cache)  # the second has read an empty file
    work = GpuWork(1, 2, 2, (192, 160), dtype="float32")
    counted = first.peak(work)
    for name in ("count_weights", "count_denoise", "count_faces", "count_features"):
        monkeypatch.setattr(vram, name, lambda *args, name=name: pytest.fail(f"{name} counted again"))
    assert second.peak(work) == counted
