"""The memory plan: profiles by GPU, overrides, disk-mode decision and the OOM back-off."""

from dataclasses import replace

import pytest
import torch

from latentsync.memory_limiter import (CUDA_CONTEXT, GB, Hardware, OutOfMemory, Workload, detect_hardware, plan_memory,
                                       smaller_batches, vram_cap)
from latentsync.options import PipelineOptions

H100 = Hardware("cuda", "H100", 80 * GB, 79 * GB, (9, 0), 128 * GB, 100 * GB)
RTX3060 = Hardware("cuda", "RTX 3060", 12 * GB, 11 * GB, (8, 6), 32 * GB, 20 * GB)
GTX1660 = Hardware("cuda", "GTX 1660", 6 * GB, 5 * GB, (7, 5), 16 * GB, 8 * GB)
CPU = Hardware("cpu", "cpu", total_ram=24 * GB, free_ram=20 * GB)
FRAME = (1920, 1080)


def plan(hardware, vram=None, **kw):
    work = dict(resolution=512, source_frames=250, frame_shape=FRAME, revisits=False)
    work.update({name: kw.pop(name) for name in list(kw) if name in work})
    return plan_memory(hardware, Workload(**work), PipelineOptions(**kw), vram)


def test_plans_follow_the_free_vram_and_capability(vram_models):
    model = vram_models["1.6"]
    big, mid, small, cpu = plan(H100, model), plan(RTX3060, model), plan(GTX1660, model), plan(CPU)
    assert (big.chunks_per_call, big.vae_batch) > (mid.chunks_per_call, mid.vae_batch)
    assert big.tier == mid.tier == "default" and small.tier != "default"  # 5 GB free: a lower tier
    assert big.modelled_peak <= H100.free_vram and mid.modelled_peak <= RTX3060.free_vram
    assert small.modelled_peak <= GTX1660.free_vram and "free now" in small.reasons[0]
    assert big.dtype == mid.dtype == torch.float16  # the published pipeline's choice on capability > 7
    assert small.dtype == cpu.dtype == torch.float32
    assert cpu.device == "cpu" and cpu.vram_fraction == 0 and cpu.modelled_peak == 0


def test_optimization_level_trades_vram_for_speed(vram_models):
    model = vram_models["1.6"]
    conservative = plan(H100, model, optimization_level="conservative")
    aggressive = plan(H100, model, optimization_level="aggressive")
    assert conservative.chunks_per_call == 1 and aggressive.chunks_per_call > plan(H100, model).chunks_per_call
    # conservative plans within 8 GB and caps the process there so 1.6 at 512 px runs as on an 8 GB card
    assert conservative.vram_fraction == pytest.approx(8 / 80) and conservative.modelled_peak < 8 * GB
    assert plan(H100, model, optimization_level="conservative", vram_fraction=0.5).vram_fraction == 0.5


def test_disk_mode_when_revisited_frames_would_crowd_ram():
    frame_bytes = 1920 * 1080 * 3 + 512 * 512 * 3
    short = plan(CPU, revisits=True, source_frames=100)  # 0.6 GB of 20 GB free: stays in RAM
    long = plan(CPU, revisits=True, source_frames=int(0.3 * 20 * GB / frame_bytes))  # > 25 % of free RAM
    assert not short.disk_cache and long.disk_cache
    assert plan(CPU, revisits=True, source_frames=100, memory_mode="aggressive").disk_cache
    assert not plan(CPU, revisits=False, source_frames=10 ** 6).disk_cache  # nothing is revisited
    assert not plan(CPU, revisits=True, source_frames=10 ** 6, disk_cache=False).disk_cache  # user override
    assert any("disk" in reason for reason in long.reasons)


@pytest.mark.parametrize("field,value", [("optimization_level", "max"), ("memory_mode", "low"),
                                         ("vram_fraction", 0.99)])
def test_bad_parameters_name_the_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        plan(CPU, **{field: value})


def test_oom_halves_the_failing_stages_batches_only():
    big = replace(plan(CPU), chunks_per_call=4, vae_batch=32, face_batch=32)
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    once = smaller_batches(big, "denoise", error)
    assert (once.chunks_per_call, once.vae_batch) == (big.chunks_per_call // 2, big.vae_batch // 2)
    assert once.face_batch == big.face_batch
    faces = smaller_batches(big, "face", error)
    assert faces.face_batch == big.face_batch // 2 and faces.vae_batch == big.vae_batch


def test_oom_at_smallest_batch_takes_guidance_halves_then_fails_with_advice():
    smallest = replace(plan(CPU), chunks_per_call=1, vae_batch=1, face_batch=1)
    halves = smaller_batches(smallest, "denoise")
    assert halves.tier == "halves" and halves.guidance_in_sequence and halves.batches == smallest.batches
    with pytest.raises(OutOfMemory, match="vram_budget"):
        smaller_batches(halves, "denoise")
    with pytest.raises(OutOfMemory, match="one frame at a time"):
        smaller_batches(smallest, "face")


def test_detects_this_machine():
    hardware = detect_hardware("cpu")
    assert hardware.device == "cpu" and hardware.total_ram > 0 and 0 < hardware.free_ram <= hardware.total_ram


def test_command_prints_this_machines_plan():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "memory_limiter.py"
    done = subprocess.run([sys.executable, str(script), "--revisits", "--frames", "5000", "--memory-mode",
                           "aggressive", "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "profile          cpu" in done.stdout and "disk_cache       True" in done.stdout


def test_vram_cap_is_set_on_the_run_device_and_put_back(monkeypatch):
    """A run caps its own GPU (cuda:1 here, not cuda:0) and leaves the process's cap as it found it, also when the
    run fails. torch's two cap calls are recorded: no GPU on the test machine."""
    caps = {1: 0.5}
    calls = []
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: caps[device])

    def set_cap(fraction, device):
        calls.append((fraction, device))
        caps[device] = fraction

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_cap)
    capped = replace(plan(CPU), vram_fraction=0.1)
    with pytest.raises(RuntimeError, match="boom"):
        with vram_cap(capped, "cuda:1"):
            assert caps[1] == capped.vram_fraction
            raise RuntimeError("boom")
    assert calls == [(capped.vram_fraction, 1), (0.5, 1)] and caps == {1: 0.5}
    with vram_cap(capped, "cuda:1", enabled=False):  # a host that owns VRAM policy (ComfyUI): no cap at all
        pass
    assert len(calls) == 2


def test_vram_fraction_sizes_the_plan(vram_models):
    whole, tenth = plan(H100, vram_models["1.6"]), plan(H100, vram_models["1.6"], vram_fraction=0.1)  # 8 GB of 80
    assert (tenth.chunks_per_call, tenth.vae_batch) < (whole.chunks_per_call, whole.vae_batch)
    assert tenth.modelled_peak < 8 * GB - CUDA_CONTEXT
