"""What the GPU path needs, proven on the CPU: no host sync inside the denoising loop, and the loop's DDIM update
equal to diffusers' bit for bit."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
from diffusers import DDIMScheduler
from torch.utils._python_dispatch import TorchDispatchMode

from latentsync import LipSyncModels, LipSyncPipeline, PipelineOptions
from latentsync.checkpoints import SCHEDULER_CONFIG
from latentsync.denoise import ddim_steps
from latentsync.tools.make_tiny_checkpoints import make_tiny_checkpoints
from test_pipeline import make_audio, make_clip

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
def tiny(tmp_path_factory, media_dir):
    folder = tmp_path_factory.mktemp("gpu-ready")
    config = make_tiny_checkpoints(folder / "checkpoints")
    models = LipSyncModels.load("1.6", folder / "checkpoints", unet_config=config, device="cpu")
    return models, make_clip(media_dir, folder, 1.0, Fraction(25)), make_audio(media_dir, folder, 0.9)


@pytest.mark.parametrize("guidance", [1.5, 1.0])
def test_no_host_sync_between_denoising_steps(tiny, guidance):
    """A real run on the CPU (stages in this thread, so the dispatch mode sees every op): zero syncing ops between
    two denoising steps; between groups (face alignment and paste-back of the next group) a few, counted."""
    models, clip, audio = tiny
    counter = SyncCounter()
    options = PipelineOptions(steps=STEPS, guidance_scale=guidance, detector="dlib", attention="standard")
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
    print(f"\nsyncing ops between groups (guidance {guidance}): {between_groups}")
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
