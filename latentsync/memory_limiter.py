"""GPU / RAM profile -> a memory plan: batch sizes, VRAM cap, memory or disk mode; OOM back-off; memory logs."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from dataclasses import dataclass, field, replace

import psutil
import torch

from .options import MEMORY_MODES, OPTIMIZATION_LEVELS, PipelineOptions  # noqa: F401 (the first two re-exported)
from .errors import OutOfMemory  # noqa: F401 (raised here; defined with the others)
from .vram import CUDA_CONTEXT, GB, TIER_HELP, TIERS, GpuWork, Tier, VramModel

log = logging.getLogger("latentsync.memory")

# Share of free RAM the revisitable frames may take before the plan moves them to a disk cache.
RAM_SHARE_BEFORE_DISK = {"aggressive": 0.0, "balanced": 0.25, "conservative": 0.6}


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda", "mps" or "cpu"
    name: str
    total_vram: int = 0
    free_vram: int = 0
    capability: tuple[int, int] = (0, 0)
    total_ram: int = 0
    free_ram: int = 0


@dataclass(frozen=True)
class Batches:
    """The batch sizes that decide float sums and face-crop regions: a segment of a split run uses its whole run's."""

    chunks_per_call: int  # 16-frame chunks per UNet call
    vae_batch: int
    face_batch: int  # frames decoded, detected and aligned together


@dataclass(frozen=True)
class MemoryPlan:
    profile: str
    device: str
    dtype: torch.dtype
    chunks_per_call: int  # 16-frame chunks per UNet call
    vae_batch: int
    face_batch: int  # frames decoded, detected and aligned together
    vram_fraction: float  # 0 = no cap
    disk_cache: bool  # keep revisited frames in a disk cache instead of RAM
    reasons: tuple[str, ...] = field(default=())
    tier: str = "default"  # the memory tier (latentsync.vram.TIERS): what else is done to fit the budget
    modelled_peak: int = 0  # bytes the run needs on the GPU beside its CUDA context (0: not a CUDA plan)

    @property
    def batches(self) -> Batches:
        return Batches(self.chunks_per_call, self.vae_batch, self.face_batch)

    def with_batches(self, batches: Batches) -> "MemoryPlan":
        return replace(self, chunks_per_call=batches.chunks_per_call, vae_batch=batches.vae_batch,
                       face_batch=batches.face_batch)

    @property
    def guidance_in_sequence(self) -> bool:
        return Tier(self.tier).guidance_in_sequence

    @property
    def offload(self) -> bool:
        """Whisper, the VAE and the face detector off the GPU while the UNet runs."""
        return Tier(self.tier).offload

    @property
    def streamed(self) -> bool:
        """The UNet's weights streamed block by block from host memory."""
        return Tier(self.tier).streamed


def detect_hardware(device: str | None = None) -> Hardware:
    ram = psutil.virtual_memory()
    wanted = device or ("cuda" if torch.cuda.is_available() else
                        "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    if wanted.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(wanted).index or 0
        free, total = torch.cuda.mem_get_info(index)
        return Hardware("cuda", torch.cuda.get_device_name(index), total, free,
                        torch.cuda.get_device_capability(index), ram.total, ram.available)
    return Hardware(wanted if wanted == "mps" else "cpu", wanted, total_ram=ram.total, free_ram=ram.available)


@dataclass(frozen=True)
class Workload:
    """What a run asks of the machine, as far as planning goes."""

    resolution: int  # face size in pixels
    source_frames: int = 0
    frame_shape: tuple[int, int] = (0, 0)  # (height, width) of the video
    revisits: bool = False  # the audio outlasts the video, so frames and faces are visited again (ping-pong)
    attention: str = "flash"  # the attention kernel the run uses
    guided: bool = True  # classifier-free guidance (lips_expression above 1)
    weights_on_gpu: int = 0  # bytes of the run's weights on the GPU already (not in the free memory read)


# the largest batches a plan starts from, by optimization level: (chunks per UNet call, VAE batch, face batch)
LARGEST = {"conservative": (1, 8, 16), "balanced": (2, 16, 32), "aggressive": (4, 32, 32)}
CONSERVATIVE_BUDGET = 8 * GB  # conservative plans as on an 8 GB card
CPU_BATCHES = (1, 4, 16)
PLANNED_FRAME = (1080, 1920)  # (height, width) planned for when a workload does not say


def plan_memory(hardware: Hardware, work: Workload, choices=None, vram: VramModel | None = None) -> MemoryPlan:
    """Choose batch sizes, the memory tier and modes for ``work`` on ``hardware``. On CUDA, ``vram`` (the models'
    VRAM model) gives each candidate's modelled peak, and the plan is the first tier, with the largest batches,
    whose peak fits the budget (``vram_budget``).

    ``choices`` (a ``PipelineOptions``; default: the defaults) gives the optimization level and memory mode."""
    choices = choices if choices is not None else PipelineOptions()
    optimization_level, memory_mode = choices.optimization_level, choices.memory_mode
    vram_fraction, disk_cache = choices.vram_fraction, choices.disk_cache
    dtype = torch.float32
    if hardware.device == "cuda" and hardware.capability[0] > 7:
        dtype = torch.float16  # what the published pipeline uses on these GPUs
    tier, peak = "default", 0
    if hardware.device == "cuda" and vram is not None:
        budget, said = vram_budget(hardware, choices, work.weights_on_gpu)
        gpu_work, found = fit(vram, work, dtype, budget, optimization_level)
        if found is None:
            raise OutOfMemory(_too_small(said, budget, vram.peak(gpu_work)))
        chunks, vae_batch, face_batch = gpu_work.chunks_per_call, gpu_work.vae_batch, gpu_work.face_batch
        tier, peak, name = gpu_work.tier, found.total, f"{gpu_work.tier} tier"
        reasons = [f"{name}: modelled peak {peak / GB:.2f} GB ({found.stage} sets it) within the {budget / GB:.2f} "
                   f"GB budget ({said}) on {hardware.name}: {TIER_HELP[tier]}"]
    else:
        name, (chunks, vae_batch, face_batch) = hardware.device, CPU_BATCHES
        reasons = [f"profile {name} on {hardware.name}"]
    if not vram_fraction and hardware.device == "cuda" and optimization_level == "conservative":
        vram_fraction = min(0.95, CONSERVATIVE_BUDGET / hardware.total_vram) if hardware.total_vram else 0.0
        reasons.append(f"conservative: VRAM capped at {vram_fraction:.2f} of {hardware.total_vram / GB:.0f} GB")

    if disk_cache is None:
        resolution = work.resolution
        frame_bytes = work.frame_shape[0] * work.frame_shape[1] * 3 + resolution * resolution * 3
        working_set = work.source_frames * frame_bytes if work.revisits else 0
        disk_cache = work.revisits and working_set > RAM_SHARE_BEFORE_DISK[memory_mode] * hardware.free_ram
        if work.revisits:
            reasons.append(f"revisited frames need {working_set / GB:.2f} GB of "
                           f"{hardware.free_ram / GB:.1f} GB free RAM: {'disk' if disk_cache else 'memory'} mode")
    return MemoryPlan(name, hardware.device, dtype, chunks, vae_batch, face_batch, vram_fraction, disk_cache,
                      tuple(reasons), tier, peak)


def vram_budget(hardware: Hardware, choices, weights_on_gpu: int = 0) -> tuple[int, str]:
    """Bytes the run may have on the GPU beside its CUDA context, and where the number comes from (words): the
    smallest of ``vram_budget`` (GB, the context included), the share ``vram_fraction`` of the card and
    conservative's 8 GB, else what is free now plus the run's weights already on the GPU."""
    given = []
    if choices.vram_budget:
        given.append((int(choices.vram_budget * GB) - CUDA_CONTEXT, f"vram_budget {choices.vram_budget:g} GB"))
    if choices.vram_fraction:
        given.append((int(hardware.total_vram * choices.vram_fraction) - CUDA_CONTEXT,
                      f"vram_fraction {choices.vram_fraction:g} of {hardware.total_vram / GB:.1f} GB"))
    if choices.optimization_level == "conservative":
        given.append((CONSERVATIVE_BUDGET - CUDA_CONTEXT, "conservative: as on an 8 GB card"))
    if given:
        return min(given)
    if choices.vram_free is not None:
        return choices.vram_free + weights_on_gpu, "free for it, as its host says"
    return hardware.free_vram + weights_on_gpu, "free now"


def fit(vram: VramModel, work: Workload, dtype: torch.dtype, budget: int, optimization_level: str = "balanced"):
    """The first tier and, within it, the largest batches whose modelled peak fits ``budget``: (GpuWork, Peak); the
    Peak is None when even the last tier's smallest batches do not fit (the GpuWork is then those)."""
    frame_shape = tuple(work.frame_shape) if all(work.frame_shape) else PLANNED_FRAME
    largest = LARGEST[optimization_level]
    for tier in TIERS:
        sizes = list(largest if tier == "default" else (1, *largest[1:]))
        while True:
            gpu_work = GpuWork(*sizes, frame_shape=frame_shape, attention=work.attention,
                               dtype=str(dtype).removeprefix("torch."), tier=tier, guided=work.guided)
            peak = vram.peak(gpu_work)
            if peak.total <= budget:
                return gpu_work, peak
            if not _shrink(sizes, peak.stage):
                break
    return gpu_work, None


def _shrink(sizes: list[int], stage: str) -> bool:
    """Halve the batch that sets ``stage``'s peak first (then the others, larger first); False at the smallest."""
    first = {"unet": 0, "vae encode": 1, "vae decode": 1}.get(stage)
    order = ([first] if first is not None else []) + sorted(range(3), key=lambda i: -sizes[i])
    for index in order:
        if sizes[index] > 1:
            sizes[index] //= 2
            return True
    return False


def _too_small(said: str, budget: int, smallest) -> str:
    need = smallest.total + CUDA_CONTEXT
    return (f"the GPU memory this run may use ({said}: {(budget + CUDA_CONTEXT) / GB:.2f} GB with the CUDA "
            f"context) is less than the smallest plan needs, {need / GB:.2f} GB (UNet weights streamed, batches of "
            f"1): give vram_budget at least {need / GB:.1f}, close other GPU programs, or run on the CPU")


@contextlib.contextmanager
def vram_cap(plan: MemoryPlan, device: torch.device | str, enabled: bool = True):
    """Cap this process's share of ``device``'s memory at ``plan.vram_fraction`` for the block, then put back the
    cap that was there before (a run leaves the process as it found it)."""
    device = torch.device(device)
    if not enabled or plan.vram_fraction <= 0 or device.type != "cuda":
        yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # torch >= 2.7
    previous = getter(index) if getter is not None else 1.0
    torch.cuda.set_per_process_memory_fraction(plan.vram_fraction, index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(previous, index)


FRAMES_RAM_SHARE = 0.8  # frames kept in RAM for a host (ComfyUI's IMAGE) may take at most this share of it


def frames_ram_shortfall(count: int, height: int, width: int, bytes_per_value: int = 4,
                         share: float = FRAMES_RAM_SHARE, channels: int = 3) -> str | None:
    """None when ``count`` float32 frames of ``channels`` (3: RGB; 4: RGB and a mask) fit in ``share`` of the
    available RAM; else how much they would take and how much is free, as words for a sentence."""
    need, available = count * height * width * channels * bytes_per_value, psutil.virtual_memory().available
    if need <= share * available:
        return None
    return (f"{need / GB:.1f} GB of RAM ({count} frames of {width}x{height}) and {available / GB:.1f} GB are free")


def log_memory(stage: str) -> dict:
    """Log (and return) RSS and, on CUDA, allocated / reserved / free VRAM at a stage edge."""
    stats = {"stage": stage, "rss_gb": psutil.Process().memory_info().rss / GB}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        free, _ = torch.cuda.mem_get_info()
        stats.update(allocated_gb=torch.cuda.memory_allocated() / GB, reserved_gb=torch.cuda.memory_reserved() / GB,
                     free_gb=free / GB)
    log.info("memory at %s: %s", stage, ", ".join(f"{k}={v:.2f}" for k, v in stats.items() if k != "stage"))
    return stats



def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _glibc():
    try:
        library = ctypes.CDLL("libc.so.6")
        return library if hasattr(library, "malloc_trim") else None
    except OSError:  # not glibc (macOS, Windows, musl): their allocators give memory back by themselves
        return None


_LIBC = _glibc()


def trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc's malloc_trim): the stage threads' arenas otherwise keep
    what a group freed among what later groups hold, and RSS creeps up with the frame count (about 60 KB a frame
    measured on a 60 s run; flat with a trim after every group). A few milliseconds; nothing else changes."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def smaller_batches(plan: MemoryPlan, stage: str, error: BaseException | None = None) -> MemoryPlan:
    """The plan after an out-of-memory error in ``stage``: "denoise" halves the chunks per UNet call and the VAE
    batch, "face" the face batch. When they are 1 already, OutOfMemory says what to change."""
    if stage == "denoise":
        if plan.chunks_per_call == 1 and plan.vae_batch == 1:
            if not plan.guidance_in_sequence:
                log.warning("out of memory with the smallest batches; redoing the chunk with guidance's halves one "
                            "after the other")
                return replace(plan, tier="halves")
            raise OutOfMemory(
                "out of GPU memory even with the smallest batches and guidance's halves one after the other: set "
                "vram_budget to the GB this GPU really has for the run (the plan then offloads or streams weights), "
                "close other GPU programs, or run on the CPU") from error
        smaller = replace(plan, chunks_per_call=max(1, plan.chunks_per_call // 2),
                          vae_batch=max(1, plan.vae_batch // 2))
        log.warning("out of memory with %d chunks per UNet call and VAE batch %d; redoing the chunk with %d and %d",
                    plan.chunks_per_call, plan.vae_batch, smaller.chunks_per_call, smaller.vae_batch)
        return smaller
    if stage != "face":
        raise ValueError(f"unknown stage {stage!r}: 'denoise' or 'face'")
    if plan.face_batch == 1:
        raise OutOfMemory("out of GPU memory aligning faces one frame at a time: close other GPU programs, use a "
                          "smaller video, or run on the CPU") from error
    smaller = replace(plan, face_batch=plan.face_batch // 2)
    log.warning("out of memory with face batch %d; redoing the batch with %d", plan.face_batch, smaller.face_batch)
    return smaller
