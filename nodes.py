"""The ComfyUI nodes: a model loader and the lip-sync node. ComfyUI's conventions, nothing else.

    LoadVideo + LoadAudio -> LatentSync Model Loader -> LatentSync Lip Sync -> SaveVideo / PreviewVideo

The lip-sync node streams a file-backed VIDEO from its file (frames never enter RAM whole), writes its result to
ComfyUI's temp folder and returns it as VIDEO (SaveVideo then keeps it with the workflow in output/), plus the AUDIO
and, only when asked for, every frame as IMAGE. Widgets, defaults, ranges and tooltips come from the library's one
options schema (``latentsync/options.py``); ComfyUI's services are reached through ``comfyui_bridge``.

Importing this module is cheap (no torch); the library is imported relatively (``from .latentsync...``), so the
folder may have any name in custom_nodes/ and sit beside another LatentSync pack.

Environment variables (tests, development): LATENTSYNC_CHECKPOINTS (a checkpoints folder searched after ComfyUI's
``latentsync`` model folders), LATENTSYNC_UNET_CONFIG (a UNet yaml other than the version's, e.g. a tiny test
set's), LATENTSYNC_OUTPUT_DIR (where results go when ComfyUI is not running).
"""

from __future__ import annotations

import logging
import math
import os

from . import comfyui_bridge as bridge
from .latentsync.options import (DEEPCACHE_PUBLISHED_INTERVAL, FACE_DETECTORS, LOAD, PRECISIONS, RUN)

log = logging.getLogger("latentsync.comfyui")

CATEGORY = "LatentSync"
SEARCH_ALIASES = ["lip sync", "lipsync", "lip-sync", "talking head", "dubbing", "latentsync"]
MODEL_TYPE = "LATENTSYNC_MODEL"
MODEL_VERSIONS = {"1.6 (512 px)": "1.6", "1.5 (256 px)": "1.5"}
OUTPUT_MODES = ["auto", "video_file", "frames"]
FRAMES_OUTPUT = 2  # index of the IMAGE output
FRAMES_RAM_SHARE = 0.8  # frames asked for as IMAGE may take at most this share of the available RAM

bridge.register_model_folder()


def _widget(name: str, **extra) -> tuple:
    """A widget built from the options schema: its default, range or choices, and its help as the tooltip."""
    param = RUN[name]
    spec = {"default": param.default, "tooltip": param.help, **extra}
    if param.choices is not None:
        return list(param.choices), spec
    spec.update(min=param.min, max=param.max)
    if param.step is not None:
        spec["step"] = param.step
    return ("INT" if isinstance(param.default, int) else "FLOAT"), spec


class LatentSyncModelLoader:
    """Load a LatentSync checkpoint set once; ComfyUI's model management moves it on and off the GPU."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("UNet, VAE and Whisper encoder, for LatentSync Lip Sync.",)
    DESCRIPTION = ("Loads the LatentSync UNet, VAE and Whisper audio encoder from ComfyUI's models/latentsync folder "
                   "(extra_model_paths.yaml entries named latentsync too). Nothing is downloaded here: a missing "
                   "file is reported with the download command.")
    SEARCH_ALIASES = SEARCH_ALIASES

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "version": (list(MODEL_VERSIONS), {"default": "1.6 (512 px)", "tooltip": LOAD["version"].help}),
            "precision": (list(PRECISIONS), {"default": LOAD["precision"].default, "tooltip": LOAD["precision"].help}),
            "device": (["default", "cpu"], {"default": "default",
                                            "tooltip": "default = the device ComfyUI runs models on."}),
        }}

    def load(self, version, precision, device):
        from .latentsync.pipeline import LipSyncModels

        compute = bridge.load_device(device)
        models = LipSyncModels.load(
            MODEL_VERSIONS[version], bridge.checkpoint_dirs(), unet_config=os.environ.get("LATENTSYNC_UNET_CONFIG"),
            device=compute, precision=precision, weights_device=bridge.offload_device(compute),
            progress=bridge.NodeProgress(None))
        return (bridge.LatentSyncModel(models),)


class LatentSyncLipSync:
    """Lip-sync a video to a speech track with LatentSync (1.6 or 1.5, as loaded)."""

    CATEGORY = CATEGORY
    FUNCTION = "lipsync"
    RETURN_TYPES = ("VIDEO", "AUDIO", "IMAGE")
    RETURN_NAMES = ("video", "audio", "frames")
    OUTPUT_TOOLTIPS = ("The lip-synced video with the speech as its sound: connect SaveVideo to keep it.",
                       "The speech, passed through.",
                       "Every output frame as IMAGE, only when asked for (output_mode frames, or auto with this "
                       "output connected): a long clip takes a lot of RAM this way.")
    OUTPUT_NODE = True
    DESCRIPTION = ("Lip sync / dubbing: makes a talking head's mouth follow new speech (LatentSync; exact published "
                   "outputs, flat memory). "
                   "Connect a VIDEO (streamed from its file) or IMAGE frames with their fps. The output lasts as long "
                   "as the audio: a longer audio plays the video forward and back.")
    SEARCH_ALIASES = SEARCH_ALIASES

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "From LatentSync Model Loader."}),
                "audio": ("AUDIO", {"tooltip": "The speech; the output lasts as long as it."}),
                "seed": _widget("seed", control_after_generate=True),
                "lips_expression": _widget("guidance_scale"),
                "inference_steps": _widget("steps"),
                "attention_mode": _widget("attention"),
                "optimization_level": _widget("optimization_level"),
                "vram_fraction": _widget("vram_fraction", tooltip=(
                    "Share of the GPU's memory to plan batches for (0 = auto). Inside ComfyUI no hard cap is set: "
                    "its model management owns the GPU's memory.")),
                "memory_mode": _widget("memory_mode", tooltip=RUN["memory_mode"].help + (
                    " aggressive also gives the GPU memory back after each run.")),
                "output_mode": (OUTPUT_MODES, {"default": "auto", "tooltip": (
                    "auto: write the video, and return frames only if the frames output is connected. video_file: "
                    "write the video only. frames: keep every frame in RAM as IMAGE and write no file (the video "
                    "output is then made from them).")}),
                "enable_disk_cache": ("BOOLEAN", {"default": False, "tooltip": (
                    "On: revisited frames (audio longer than the video) always go to a disk cache. Off: the memory "
                    "plan decides, following memory_mode.")}),
            },
            "optional": {
                "video": ("VIDEO", {"tooltip": "The talking-head video (e.g. from Load Video): streamed from its file, "
                                               "never decoded whole. Connect this or images."}),
                "images": ("IMAGE", {"tooltip": "Video frames already in RAM. Connect this or video."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.001,
                                  "tooltip": "Frame rate of the images input (a video keeps its own)."}),
                "face": _widget("face"),
                "face_detector": (list(FACE_DETECTORS), {"default": RUN["detector"].default,
                                                         "tooltip": RUN["detector"].help}),
                "lip_focus": _widget("lip_focus"),
                "deepcache": ("BOOLEAN", {"default": False, "tooltip": RUN["deepcache_interval"].help.replace(
                    "every N steps", f"every {DEEPCACHE_PUBLISHED_INTERVAL} steps")}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    def lipsync(self, model, audio, seed, lips_expression, inference_steps, attention_mode, optimization_level,
                vram_fraction, memory_mode, output_mode, enable_disk_cache, video=None, images=None, fps=25.0,
                face=0, face_detector="auto", lip_focus=1.0, deepcache=False, unique_id=None, prompt=None):
        from .latentsync.pipeline import Cancelled, LipSyncPipeline, PipelineOptions

        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {output_mode!r}")
        options = PipelineOptions(
            steps=int(inference_steps), guidance_scale=float(lips_expression), seed=int(seed),
            attention=attention_mode, lip_focus=float(lip_focus), optimization_level=optimization_level,
            deepcache_interval=DEEPCACHE_PUBLISHED_INTERVAL if deepcache else 0, memory_mode=memory_mode,
            vram_fraction=float(vram_fraction), disk_cache=True if enable_disk_cache else None,
            face=int(face), detector=face_detector, hard_vram_cap=not bridge.inside_comfyui())
        want_frames = output_mode == "frames" or (
            output_mode == "auto" and bridge.output_is_wired(prompt, unique_id, FRAMES_OUTPUT))
        path, filename, subfolder = bridge.new_video_path() if output_mode != "frames" else (None, None, None)
        progress = bridge.NodeProgress(unique_id)
        with bridge.video_frames(video, images, fps) as (frames_in, frame_rate), bridge.named_as_chosen(frames_in):
            collector = _frame_collector(want_frames, audio, frames_in, frame_rate)
            try:
                progress("models to the device", 0, 1)
                with model.in_use(release_after=memory_mode == "aggressive") as models:
                    result = LipSyncPipeline(models, options).run(
                        frames_in, audio, path, fps=frame_rate, progress=progress,
                        should_cancel=bridge.interrupted, frame_sink=collector)
            except Cancelled as error:
                bridge.raise_interrupted(error)
        progress.finish(f"done: {result.num_frames} frame{'s' if result.num_frames != 1 else ''}" + (
            f", {result.frames_without_face} without a face passed through" if result.frames_without_face else ""),
            result.warnings)
        bridge.RESULTS.keep(unique_id, path)  # and the node's earlier result, no longer served, is removed
        frames = collector.result() if collector is not None else bridge.blocked(
            "LatentSync Lip Sync returns frames only when asked for: set its output_mode to frames or auto")
        video_out = bridge.video_output(path, frames if collector is not None else None, audio, result.fps)
        ui = {"images": [{"filename": filename, "subfolder": subfolder, "type": "temp"}], "animated": (True,)} \
            if path is not None else {}
        return {"ui": ui, "result": (video_out, audio, frames)}


def _frame_collector(wanted: bool, audio, frames_in, frame_rate):
    """The IMAGE collector when frames are asked for, after checking that they fit in RAM (one clear sentence
    before any work, rather than a machine that swaps for minutes)."""
    if not wanted:
        return None
    import psutil

    from .latentsync.video import probe_video

    seconds = bridge.audio_seconds(audio)
    if frame_rate is None:  # a file: its own size and rate
        info = probe_video(frames_in)
        height, width, frame_rate = info.height, info.width, float(info.fps)
    else:
        height, width = int(frames_in.shape[1]), int(frames_in.shape[2])
    count = math.ceil(seconds * frame_rate)
    need, available = count * height * width * 3 * 4, psutil.virtual_memory().available
    if need > FRAMES_RAM_SHARE * available:
        raise MemoryError(f"the frames output would take {need / 1024 ** 3:.1f} GB of RAM as IMAGE ({count} frames of "
                          f"{width}x{height}) and {available / 1024 ** 3:.1f} GB are free: disconnect frames and use "
                          f"the video output, or set output_mode to video_file")
    return bridge.FrameCollector(count + 1)


NODE_CLASS_MAPPINGS = {"LatentSyncModelLoader": LatentSyncModelLoader, "LatentSyncLipSync": LatentSyncLipSync}
bridge.register_prompt_handler(NODE_CLASS_MAPPINGS)
# ComfyUI 0.3.x's search box matches the class and display names only, near their start (it ignores
# SEARCH_ALIASES): the words users type for this node lead its display name
NODE_DISPLAY_NAME_MAPPINGS = {"LatentSyncModelLoader": "LatentSync Model Loader",
                              "LatentSyncLipSync": "Lip Sync, Talking Head Dubbing (LatentSync)"}
