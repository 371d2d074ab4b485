"""The ComfyUI node: LatentSync's parameter surface and ComfyUI's conventions, nothing else.

A thin front over the library (``latentsync/``): it translates parameters into ``PipelineOptions``, converts
ComfyUI's IMAGE / AUDIO to what the pipeline takes and back, and follows ComfyUI's conventions (progress bar,
interruption, model memory management, output folder, UI preview). All lip-sync logic lives in the library.

Importing this module is cheap: torch and the library are imported inside the node function, and the library is
imported RELATIVELY (``from .latentsync...``) so this folder may have any name in ``custom_nodes/`` (dashes
included) and sit beside another LatentSync node pack without a clash.

Outside ComfyUI (plain Python, the tests) the node still works: progress is a no-op, nothing is interrupted,
and outputs go to ``$LATENTSYNC_OUTPUT_DIR`` (default ``./output``) under ``latentsync/``.

Environment variables read by the node:
  LATENTSYNC_CHECKPOINTS   checkpoints folder (searched first; else ComfyUI's models/latentsync, else ./checkpoints)
  LATENTSYNC_UNET_CONFIG   a UNet yaml to use instead of the version's own (tests: the tiny checkpoints' yaml)
  LATENTSYNC_OUTPUT_DIR    output folder when ComfyUI is not running
"""

from __future__ import annotations

import gc
import logging
import math
import os
import re
import sys
import threading
from pathlib import Path

log = logging.getLogger("latentsync.comfyui")

DISPLAY_NAME = "🎬 LatentSync 1.6 (MEMSAFE)"
MODEL_VERSIONS = {"1.6 (512 px)": "1.6", "1.5 (256 px)": "1.5"}
ATTENTION_MODES = ["auto", "flash", "xformers", "flex", "standard"]
OPTIMIZATION_LEVELS = ["conservative", "balanced", "aggressive"]
MEMORY_MODES = ["aggressive", "balanced", "conservative"]
OUTPUT_MODES = ["auto", "video_file", "frames"]
FACE_DETECTORS = ["auto", "insightface", "dlib"]
DEEPCACHE_INTERVAL = 3  # what the published LatentSync's --enable_deepcache uses
OUTPUT_SUBFOLDER = "latentsync"
FILENAME_PREFIX = "LatentSync"

# output_mode "auto": return frames only when the float32 IMAGE would take at most this share of the available
# RAM and the clip has at most this many frames; otherwise write the video and return a one-frame preview.
AUTO_FRAMES_RAM_SHARE = 0.25
AUTO_FRAMES_MAX = 1500  # 60 s at 25 fps


# -- ComfyUI hooks (None / no-ops when ComfyUI is not running) ------------------------------------------------------


def _comfy():
    """ComfyUI's (model_management, utils, folder_paths) modules when running inside ComfyUI, else None.

    Looked up in sys.modules (ComfyUI has imported them before any node runs): a plain-Python caller that happens
    to have a ComfyUI checkout on its path does not start ComfyUI's device setup by using the node.
    """
    modules = [sys.modules.get(name) for name in ("comfy.model_management", "comfy.utils", "folder_paths")]
    return None if None in modules else tuple(modules)


def _interrupted() -> bool:
    """True when the user pressed Cancel in ComfyUI (the pipeline polls this between batches)."""
    comfy = _comfy()
    return bool(comfy and comfy[0].processing_interrupted())


class _Progress:
    """Pipeline progress (stage, done, total) -> ComfyUI's progress bar for this node."""

    def __init__(self):
        comfy = _comfy()
        self.bar = comfy[1].ProgressBar(1) if comfy else None
        self.stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.stage = stage
            log.info("LatentSync: %s", stage)
        if self.bar is not None and total > 0:
            self.bar.update_absolute(min(done, total), total)


def _raise_interrupted(error: Exception):
    """Turn the library's Cancelled into ComfyUI's own interruption (so the UI shows 'interrupted')."""
    comfy = _comfy()
    if comfy is None:
        raise error
    model_management = comfy[0]
    model_management.throw_exception_if_processing_interrupted()  # raises and clears the flag when set
    raise model_management.InterruptProcessingException() from error


# -- output location -----------------------------------------------------------------------------------------------


def _output_root() -> Path:
    comfy = _comfy()
    if comfy is not None:
        return Path(comfy[2].get_output_directory()).resolve()
    return Path(os.environ.get("LATENTSYNC_OUTPUT_DIR") or "output").resolve()


def _next_output_path() -> tuple[Path, str, str]:
    """(path, filename, subfolder) of a new, unused mp4 under <output>/latentsync/, never outside it."""
    root = _output_root()
    folder = root / OUTPUT_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    comfy = _comfy()
    counter = 1
    if comfy is not None:  # ComfyUI's own counter over existing "<prefix>_<counter>_" files
        _, _, counter, _, _ = comfy[2].get_save_image_path(f"{OUTPUT_SUBFOLDER}/{FILENAME_PREFIX}", str(root))
    else:
        pattern = re.compile(rf"^{FILENAME_PREFIX}_(\d+)_\.mp4$")
        numbers = [int(m.group(1)) for m in map(pattern.match, os.listdir(folder)) if m]
        counter = max(numbers, default=0) + 1
    while True:
        name = f"{FILENAME_PREFIX}_{counter:05}_.mp4"
        path = (folder / name).resolve()
        if not path.exists():
            break
        counter += 1
    if root not in path.parents:
        raise ValueError(f"refusing to write outside the output folder {root}: {path}")
    return path, name, OUTPUT_SUBFOLDER


def _resolve_video_path(video_path: str) -> Path:
    """An absolute path, or one relative to ComfyUI's input folder (annotations like 'x.mp4 [input]' allowed)."""
    text = video_path.strip().strip('"')
    comfy = _comfy()
    candidates = [Path(text).expanduser()]
    if comfy is not None and not Path(text).is_absolute():
        candidates.insert(0, Path(comfy[2].get_annotated_filepath(text)))
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"video_path not found: {video_path!r} (give an absolute path or a file in ComfyUI's "
                            f"input folder); or leave video_path empty to use the IMAGE input")


# -- model cache and memory management ---------------------------------------------------------------------------


class _ModelCache:
    """The loaded models, kept between runs (loading takes long) and handed to ComfyUI's memory management.

    Inside ComfyUI the torch modules are wrapped in a ``comfy.model_patcher.ModelPatcher`` and loaded with
    ``comfy.model_management.load_models_gpu``: ComfyUI then counts their VRAM, unloads its own models to make
    room for them, and offloads them to the CPU when another node (or the "Unload models" button / POST /free)
    needs the memory. Before every run they are put back on the device.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.key = None
        self.models = None
        self.patcher = None
        self.loaded_once = False

    def get(self, key, options, progress):
        from .latentsync.pipeline import LipSyncModels

        if self.key != key:
            self.release()
            comfy = _comfy()
            if comfy is not None and options.device and not options.device.startswith("cpu"):
                import torch

                # ask ComfyUI to unload its own models first, so ours fit (a rough upper bound of our weights)
                comfy[0].free_memory(4 * 1024 ** 3, torch.device(options.device))
            self.models = LipSyncModels.load(options, progress)
            self.key = key
            self.patcher = self._register(self.models)
            self.loaded_once = False
        self._to_device(self.models)
        return self.models

    @staticmethod
    def _modules(models) -> dict:
        import torch

        found = {name: getattr(models, name, None) for name in ("unet", "vae", "audio_encoder")}
        encoder = found["audio_encoder"]
        if encoder is not None and not isinstance(encoder, torch.nn.Module):
            found["audio_encoder"] = getattr(encoder, "model", None)
        return {name: m for name, m in found.items() if isinstance(m, torch.nn.Module)}

    def _register(self, models):
        comfy = _comfy()
        if comfy is None:
            return None
        try:
            import torch
            from comfy.model_patcher import ModelPatcher

            holder = torch.nn.Module()  # a plain container: ModelPatcher sets attributes on what it wraps
            for name, module in self._modules(models).items():
                holder.add_module(name, module)
            patcher = ModelPatcher(holder, load_device=torch.device(models.device),
                                   offload_device=comfy[0].unet_offload_device())
            return patcher
        except Exception as error:  # an older / newer ComfyUI: run without its memory management
            log.warning("LatentSync: could not hand the models to ComfyUI's memory management (%s)", error)
            return None

    def _to_device(self, models) -> None:
        comfy = _comfy()
        if self.patcher is not None:
            if self.loaded_once and not any(m.model is self.patcher for m in comfy[0].current_loaded_models):
                log.info("LatentSync: ComfyUI had unloaded the models; loading them back to %s", models.device)
            self.loaded_once = True
            try:
                comfy[0].load_models_gpu([self.patcher], force_full_load=True)
            except Exception as error:
                log.warning("LatentSync: ComfyUI could not load the models (%s); moving them directly", error)
        import torch

        device = torch.device(models.device)
        for module in self._modules(models).values():  # whatever ComfyUI did (partial loads), all on the device
            if any(p.device.type != device.type or (device.index is not None and p.device.index != device.index)
                   for p in module.parameters()):
                module.to(device)

    def _unload_from_comfyui(self) -> None:
        """Take our models out of ComfyUI's list of loaded models (ComfyUI moves them to the offload device)."""
        comfy = _comfy()
        if comfy is not None and self.patcher is not None:
            loaded = comfy[0].current_loaded_models
            for index in range(len(loaded) - 1, -1, -1):
                if loaded[index].model is self.patcher:
                    loaded.pop(index).model_unload()

    def offload(self) -> None:
        """memory_mode aggressive: give the VRAM back after a run (weights go to the CPU, stay cached)."""
        if self.models is None or str(self.models.device).startswith("cpu"):
            return
        self._unload_from_comfyui()
        for module in self._modules(self.models).values():
            module.to("cpu")
        _empty_cache()

    def release(self) -> None:
        """Drop the models entirely (a different model set is wanted)."""
        if self.models is None:
            return
        self._unload_from_comfyui()
        self.models = self.patcher = self.key = None
        gc.collect()
        _empty_cache()


def _empty_cache() -> None:
    comfy = _comfy()
    if comfy is not None:
        comfy[0].soft_empty_cache()
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_MODELS = _ModelCache()


# -- I/O conversion ------------------------------------------------------------------------------------------------


def _audio_seconds(audio) -> float:
    """Check ComfyUI AUDIO {"waveform": (B, C, S), "sample_rate": int}; its duration. The library decodes it."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError("audio must be ComfyUI AUDIO: a dict with 'waveform' (batch, channels, samples) and "
                         "'sample_rate'")
    shape, rate = tuple(getattr(audio["waveform"], "shape", ())), int(audio["sample_rate"])
    if not shape or shape[-1] == 0 or rate <= 0:
        raise ValueError(f"audio is empty or has no sample rate (waveform {shape}, sample_rate {rate})")
    return shape[-1] / rate


class _FrameCollector:
    """frame_sink -> one preallocated float32 IMAGE tensor (no list of frames, no second copy)."""

    def __init__(self, expected: int):
        self.expected = max(1, expected)
        self.frames = None
        self.count = 0

    def __call__(self, batch) -> None:
        import torch

        batch = torch.from_numpy(batch)
        n = batch.shape[0]
        if self.frames is None:
            self.frames = torch.empty((self.expected, *batch.shape[1:]), dtype=torch.float32)
        if self.count + n > self.frames.shape[0]:  # the estimate was short (rare): grow once, with headroom
            grown = torch.empty((self.count + n + 16, *self.frames.shape[1:]), dtype=torch.float32)
            grown[:self.count] = self.frames[:self.count]
            self.frames = grown
        self.frames[self.count:self.count + n] = batch.to(torch.float32).div_(255.0)
        self.count += n

    def result(self):
        return self.frames[:self.count]


def _first_frame(path: Path):
    """A one-frame IMAGE (1, H, W, 3) float32 of a written video: the preview returned in video_file mode."""
    import torch

    from .latentsync.video import iter_frame_batches

    for batch in iter_frame_batches(path, 1):
        return torch.from_numpy(batch[:1].copy()).to(torch.float32).div_(255.0)
    raise RuntimeError(f"the written video {path} has no frames")


def _choose_frames(output_mode: str, frames: int, height: int, width: int) -> bool:
    """output_mode -> return all frames (True) or a video file with a preview frame (False)."""
    if output_mode == "frames":
        return True
    if output_mode == "video_file":
        return False
    import psutil

    need = frames * height * width * 3 * 4
    fits = frames <= AUTO_FRAMES_MAX and need <= AUTO_FRAMES_RAM_SHARE * psutil.virtual_memory().available
    log.info("LatentSync output_mode auto: %d frames of %dx%d need %.2f GB as IMAGE: %s", frames, width, height,
             need / 1024 ** 3, "frames" if fits else "video_file")
    return fits


# -- the node --------------------------------------------------------------------------------------------------------


class LatentSyncMemsafe:
    """Lip-sync a video (IMAGE frames or a file) to an audio track with LatentSync 1.6 / 1.5."""

    CATEGORY = "LatentSync"
    FUNCTION = "lipsync"
    RETURN_TYPES = ("IMAGE", "AUDIO", "STRING")
    RETURN_NAMES = ("images", "audio", "video_path")
    OUTPUT_NODE = True
    DESCRIPTION = ("Exact, memory-safe LatentSync lip-sync. Long clips: set video_path (streams the file) and "
                   "output_mode video_file so frames never enter RAM whole.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Video frames. Ignored (may be any dummy image) when video_path "
                                                "is set."}),
                "audio": ("AUDIO", {"tooltip": "The speech to lip-sync to; the output lasts as long as it."}),
                "seed": ("INT", {"default": 1247, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "lips_expression": ("FLOAT", {"default": 1.5, "min": 1.0, "max": 3.0, "step": 0.1,
                                              "tooltip": "Guidance scale: higher = stronger mouth movement."}),
                "inference_steps": ("INT", {"default": 20, "min": 1, "max": 999}),
                "attention_mode": (ATTENTION_MODES, {"default": "auto"}),
                "optimization_level": (OPTIMIZATION_LEVELS, {"default": "balanced"}),
                "vram_fraction": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.95, "step": 0.05,
                                            "tooltip": "0 = auto; else cap this process's VRAM share."}),
                "memory_mode": (MEMORY_MODES, {"default": "balanced",
                                               "tooltip": "How hard to save RAM/VRAM. aggressive also moves the "
                                                          "models to the CPU after each run."}),
                "output_mode": (OUTPUT_MODES, {"default": "auto",
                                               "tooltip": "frames: all frames as IMAGE; video_file: an mp4 and "
                                                          "a one-frame preview; auto: frames if they fit in RAM."}),
                "enable_disk_cache": ("BOOLEAN", {"default": False,
                                                  "tooltip": "Force the disk cache for revisited frames (off = "
                                                             "the memory plan decides)."}),
            },
            "optional": {
                "model_version": (list(MODEL_VERSIONS), {"default": "1.6 (512 px)"}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.01,
                                  "tooltip": "Frame rate of the IMAGE input (a video_path uses its own)."}),
                "face_detector": (FACE_DETECTORS, {"default": "auto"}),
                "lip_focus": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 4.0, "step": 0.1,
                                        "tooltip": "> 1 weights the mouth region in attention (flex attention; "
                                                   "changes outputs; opt-in)."}),
                "deepcache": ("BOOLEAN", {"default": False,
                                          "tooltip": "DeepCache: the full UNet every 3rd step, the others reuse its "
                                                     "deep features. Faster; changes outputs; opt-in."}),
                "video_path": ("STRING", {"default": "", "tooltip": "Stream this video file instead of the IMAGE "
                                                                    "frames (absolute, or in ComfyUI's input "
                                                                    "folder)."}),
            },
        }

    def lipsync(self, images, audio, seed, lips_expression, inference_steps, attention_mode, optimization_level,
                vram_fraction, memory_mode, output_mode, enable_disk_cache, model_version="1.6 (512 px)",
                fps=25.0, face_detector="auto", lip_focus=1.0, deepcache=False, video_path=""):
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if model_version not in MODEL_VERSIONS:
            raise ValueError(f"model_version must be one of {list(MODEL_VERSIONS)}, got {model_version!r}")

        from .latentsync.pipeline import Cancelled, LipSyncPipeline, PipelineOptions

        comfy = _comfy()
        device = str(comfy[0].get_torch_device()) if comfy is not None else None
        options = PipelineOptions(
            version=MODEL_VERSIONS[model_version], steps=int(inference_steps), guidance_scale=float(lips_expression),
            seed=int(seed), attention=attention_mode, lip_focus=float(lip_focus),
            deepcache_interval=DEEPCACHE_INTERVAL if deepcache else 0,
            optimization_level=optimization_level, memory_mode=memory_mode, vram_fraction=float(vram_fraction),
            disk_cache=True if enable_disk_cache else None, detector=face_detector, device=device,
            checkpoints_dir=os.environ.get("LATENTSYNC_CHECKPOINTS") or None,
            unet_config=os.environ.get("LATENTSYNC_UNET_CONFIG") or None)

        seconds = _audio_seconds(audio)
        if video_path and video_path.strip():
            from .latentsync.video import probe_video

            video, video_fps = _resolve_video_path(video_path), None
            info = probe_video(video)
            height, width, frame_rate = int(info.height), int(info.width), float(info.fps)
        else:
            if images is None or getattr(images, "ndim", 0) != 4 or images.shape[-1] != 3:
                raise ValueError("images must be an IMAGE batch (frames, height, width, 3), or set video_path")
            video, video_fps = images, float(fps)
            height, width, frame_rate = int(images.shape[1]), int(images.shape[2]), float(fps)
        expected = math.ceil(seconds * frame_rate)  # the output lasts as long as the audio
        return_frames = _choose_frames(output_mode, expected, height, width)

        progress = _Progress()
        key = (options.version, options.checkpoints_dir, options.unet_config, options.attention, options.lip_focus,
               options.detector, options.device)
        output_path, filename, subfolder = _next_output_path()
        collector = _FrameCollector(expected + 1) if return_frames else None
        with _MODELS.lock:
            try:
                models = _MODELS.get(key, options, progress)
                result = LipSyncPipeline(models, options).run(
                    video, audio, output_path, fps=video_fps, progress=progress,
                    should_cancel=_interrupted, frame_sink=collector)
            except Cancelled as error:
                _raise_interrupted(error)
            finally:
                if memory_mode == "aggressive":
                    _MODELS.offload()
        if result.frames_without_face:
            log.warning("LatentSync: %d of %d frames had no usable face and were passed through unchanged",
                        result.frames_without_face, result.num_frames)
        frames = collector.result() if collector is not None else _first_frame(result.output_path)
        preview = {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": (True,)}
        return {"ui": preview, "result": (frames, audio, str(result.output_path))}


NODE_CLASS_MAPPINGS = {"LatentSyncMemsafe": LatentSyncMemsafe}
NODE_DISPLAY_NAME_MAPPINGS = {"LatentSyncMemsafe": DISPLAY_NAME}
