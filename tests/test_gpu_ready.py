"""What the GPU path needs, proven on the CPU: no host sync inside the denoising loop, and the loop's DDIM update
equal to diffusers' bit for bit."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
from diffusers import DDIMScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from latentsync import LipSyncPipeline, PipelineOptions
from latentsync.checkpoints import SCHEDULER_CONFIG
from latentsync.denoise import ddim_steps
from helpers import make_audio, make_clip

# the ops that make the host wait for a CUDA device: a value read back (item, bool, int of a tensor), or a shape that
# depends on the data
SYNCING_OPS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default",
               "aten.nonzero.default"}
STEPS = 4


class SyncCounter(TorchDispatchMode):
    """Every op of this thread in order: a sync op as "sync", and the marks the run's progress reports."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SYNCING_OPS:
            self.events.append("sync")
        return func(*args, **(kwargs or {}))

    def progress(self, stage: str, done: float, total: int) -> None:
        if stage == "lip-sync":  # after each denoising step, and when a group is done
            self.events.append(f"step {done:.3f}")


def syncs_between_marks(events: list[str]) -> list[int]:
    counts, current = [], None
    for event in events:
        if event == "sync":
            if current is not None:
                current += 1
        else:
            if current is not None:
                counts.append(current)
            current = 0
    return counts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, media_dir, tiny_models):
    folder = tmp_path_factory.mktemp("gpu-ready")
    return tiny_models, make_clip(media_dir, folder, 1.0, Fraction(25)), make_audio(media_dir, folder, 0.9)


def test_no_host_sync_between_denoising_steps(tiny):
    """A real run on the CPU (stages in this thread, so the dispatch mode sees every op): zero syncing ops between
    two denoising steps; between groups (face alignment and paste-back of the next group) a few, counted."""
    models, clip, audio = tiny
    counter = SyncCounter()
    options = PipelineOptions(steps=STEPS, guidance_scale=1.5, detector="dlib", attention="standard")  # guided
    with counter:
        for _ in LipSyncPipeline(models, options, overlap=False).frames(clip, audio, progress=counter.progress):
            pass
    marks = [event for event in counter.events if event != "sync"]
    between = syncs_between_marks(counter.events)
    per_group = STEPS + 1  # a mark after each step, and one when the group is done
    assert len(marks) == 2 * per_group  # 0.9 s at 25 fps: two groups of 16 frames (the second one shorter)
    within_steps = [count for index, count in enumerate(between) if index % per_group < STEPS - 1]
    assert within_steps == [0] * (2 * (STEPS - 1))
    between_groups = between[per_group - 2:per_group]  # after the last step; from the group's end to the next step
    print(f"\nsyncing ops between groups: {between_groups}")
    assert sum(between_groups) <= 30  # measured: 26 (paste-back, the next group's alignment, its first step)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("count", [20, 7])
def test_ddim_update_is_diffusers_step_bit_for_bit(count, dtype):
    """Every step of 20 and of 7, float32 and float16: the same bits as DDIMScheduler.step (the same 0-d float32
    coefficients and the same order of operations, so not even one ulp apart)."""
    config = json.loads(SCHEDULER_CONFIG.read_text())
    reference = DDIMScheduler.from_config(config)
    reference.set_timesteps(count)
    ours = DDIMScheduler.from_config(config)
    ours.set_timesteps(count)
    generator = torch.Generator().manual_seed(count)
    sample = torch.randn(2, 4, 16, 8, 8, generator=generator).to(dtype)
    for step, t in zip(ddim_steps(ours), reference.timesteps):
        noise = torch.randn(2, 4, 16, 8, 8, generator=generator).to(dtype)
        expected = reference.step(noise, t, sample, eta=0.0).prev_sample
        got = step.update(noise, sample)
        assert step.timestep == t and got.dtype == expected.dtype == dtype
        assert torch.equal(got, expected), (count, int(t))
        sample = expected


# -- the published dtypes and orders ------------------------------------------------------------------------------


def test_faces_are_normalised_in_float32_then_cast():
    """Every byte value: the published image processor's float32 Normalize([0.5], [0.5]) of x / 255, then the cast
    to float16 (normalising in float16 itself rounds twice: 140 of the 256 values land one ulp away)."""
    from latentsync.denoise import normalised_faces

    faces = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    mask = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    pixels, masked = normalised_faces(faces, mask, torch.float16)
    published = (faces / 255.0 - 0.5) / 0.5  # float32, as torchvision's Normalize computes it
    assert torch.equal(pixels, published.to(torch.float16))
    assert torch.equal(masked, (published * mask).to(torch.float16))
    in_half = faces.to(torch.float16) / 255.0 * 2.0 - 1.0  # what the loop did before
    assert int((in_half != pixels).sum()) // 3 == 140


def test_clip_groupnorm_rounds_once_like_groupnorm_in_float16():
    """ClipGroupNorm on a frame stack in float16 against nn.GroupNorm on the video: statistics, scale, shift and
    output in float32, rounded once (rounding scale and shift to float16 first put 37 % of the values off)."""
    from latentsync.models.resnet import ClipGroupNorm

    torch.manual_seed(0)
    b, c, f, h, w = 2, 64, 16, 8, 8
    ours = ClipGroupNorm(32, c, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    reference = torch.nn.GroupNorm(32, c, eps=1e-6)
    reference.load_state_dict(ours.state_dict())
    video = (torch.randn(b, c, f, h, w) * 3 + 1).half()
    with torch.no_grad():
        expected = reference.half()(video)
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        got = ours.half()(frames, f).view(b, f, c, h, w).permute(0, 2, 1, 3, 4)
    off = got != expected
    ulp = torch.finfo(torch.float16).eps * expected.float().abs().clamp_min(2 ** -14)
    assert int(off.sum()) < 1e-3 * expected.numel()  # measured: 26 of 131072 (float32 statistics' own order)
    assert bool(((got.float() - expected.float()).abs() <= ulp).all())


def test_face_warp_in_float16_is_the_published_align_warp():
    """On CUDA the published AlignRestore warps the whole frame in float16 (its default dtype); the face stage warps
    in float16 there too. On the CPU in float16, the crops equal that recipe bit for bit (and differ from a float32
    warp, so the dtype is what makes them equal)."""
    import cv2
    import kornia
    import numpy as np

    from latentsync.face.stage import FaceStage

    resolution = 128
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (3, 240, 200, 3), dtype=np.uint8)
    anchors = [np.array([[70.0, 90.0], [128.0, 88.0], [99.0, 120.0]]) + shift for shift in (0.0, 1.5, -2.0)]
    stage = FaceStage(None, resolution, roi_warp=False, warp_dtype=torch.float16)
    track = stage.locate(frames, anchors)
    faces = stage.crop(frames, track).faces
    cw, ch = stage.geometry.crop_size
    fill = torch.tensor([127, 127, 127], dtype=torch.float16)
    for i, frame in enumerate(frames):  # the published align_warp_face, one frame at a time
        image = torch.from_numpy(frame).to(torch.float16).permute(2, 0, 1)[None]
        warped = kornia.geometry.transform.warp_affine(image, track.affine[i:i + 1].to(torch.float16), (ch, cw),
                                                       mode="bilinear", padding_mode="fill", fill_value=fill)
        crop = warped[0].permute(1, 2, 0).numpy().astype(np.uint8)
        expected = cv2.resize(crop, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
        assert np.array_equal(faces[i].permute(1, 2, 0).numpy(), expected), i
    in_float32 = FaceStage(None, resolution, roi_warp=False, warp_dtype=torch.float32)
    in_float32.locate(frames, anchors)
    assert not torch.equal(in_float32.crop(frames, track).faces, faces)


# -- the exact CFG shortcut ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("attention", ["standard", "flash"])
def test_unconditional_cross_attention_as_its_bias_is_the_same_bits(reference_dir, dtype, attention):
    """A guided call with GuidedAudio (the part before the first cross-attention computed once for both halves,
    the unconditional half's cross-attentions their output bias, never computed) gives the bits of the full call
    with all-zero audio for that half: DeepCache off and on."""
    from safetensors.torch import load_file

    from latentsync.attention.selection import create_backend
    from latentsync.models.deepcache import DeepCacheState
    from latentsync.models.loading import load_unet
    from latentsync.models.transformer import GuidedAudio

    tensors = load_file(str(reference_dir / "unet_tiny.safetensors"))
    unet = load_unet(reference_dir / "unet_tiny.safetensors", reference_dir / "unet_tiny_config.json").eval()
    unet = unet.to(dtype)
    unet.set_attention_backend(create_backend(attention, "cpu", dtype, strict=True))
    sample = tensors["sample"][:1].to(dtype).expand(2, -1, -1, -1, -1)  # guidance: the same sample for both halves
    audio = tensors["audio"][len(tensors["audio"]) // 2:].to(dtype)
    zeros_first = torch.cat([torch.zeros_like(audio), audio])
    bits = torch.int32 if dtype == torch.float32 else torch.int16

    with torch.no_grad():
        full = unet(sample, 500, encoder_hidden_states=zeros_first)
        short = unet(sample, 500, encoder_hidden_states=GuidedAudio(audio))
        assert torch.equal(full.view(bits), short.view(bits))
        cached_full, cached_short = DeepCacheState(3), DeepCacheState(3)
        for index, t in enumerate((900, 500, 100)):  # a full step, then two cached ones
            full = unet(sample, t, encoder_hidden_states=zeros_first, deep_cache=cached_full.step(index))
            short = unet(sample, t, encoder_hidden_states=GuidedAudio(audio), deep_cache=cached_short.step(index))
            assert torch.equal(full.view(bits), short.view(bits)), index
