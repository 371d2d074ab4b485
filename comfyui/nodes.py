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

import dataclasses
import logging
import os

from . import comfyui_bridge as bridge
from . import comfyui_graph as graph
from .latentsync.checkpoints import VERSIONS
from .latentsync.options import LOAD, RUN, Option

log = logging.getLogger("latentsync.comfyui")

CATEGORY = "LatentSync"
SEARCH_ALIASES = ["lip sync", "lipsync", "lip-sync", "talking head", "dubbing", "latentsync"]
MODEL_TYPE = "LATENTSYNC_MODEL"
MODEL_VERSIONS = {f"{name} ({version.resolution} px)": name for name, version in VERSIONS.items()}
OUTPUT_MODES = ["auto", "video_file", "frames"]
FRAMES_OUTPUT, MASK_OUTPUT = 2, 3  # indexes of the IMAGE and MASK outputs
# the widgets in the order saved workflows list their values (the options schema gives their specs)
REQUIRED_CHOICES = ("seed", "lips_expression", "inference_steps", "attention_mode", "optimization_level",
                    "vram_fraction", "memory_mode", "output_mode", "enable_disk_cache")
OPTIONAL_CHOICES = ("face", "face_detector", "lip_focus", "deepcache", "compile", "audio_start",
                    "when_video_is_longer", "when_audio_is_longer", "mouth_feather", "audio_context", "vram_budget")

bridge.register_model_folder()


def _widget(option: Option) -> tuple:
    """A widget built from the options schema: its default, range, choices or switch, and its help as the tooltip."""
    spec = {"default": option.default, "tooltip": option.node_help or option.help}
    if option.toggle is not None:
        return "BOOLEAN", {**spec, "default": option.default == option.toggle[1]}
    if option.choices is not None:
        return list(option.choices), spec
    spec.update(min=option.min, max=option.max)
    if option.step is not None:
        spec["step"] = option.step
    if option.field == "seed":
        spec["control_after_generate"] = True
    return ("INT" if option.kind is int else "FLOAT"), spec


WIDGETS = {option.node: _widget(option) for option in RUN.values() if option.node is not None}
WIDGETS["output_mode"] = (OUTPUT_MODES, {"default": "auto", "tooltip": (
    "auto: write the video, and return frames only if the frames output is connected. video_file: write the video "
    "only. frames: keep every frame in RAM as IMAGE and write no file (the video output is then made from them).")})


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
        default_version = next(label for label, name in MODEL_VERSIONS.items() if name == LOAD["version"].default)
        return {"required": {
            "version": (list(MODEL_VERSIONS), {"default": default_version, "tooltip": LOAD["version"].help}),
            "precision": (list(LOAD["precision"].choices), {"default": LOAD["precision"].default,
                                                            "tooltip": LOAD["precision"].help}),
            "device": (["default", "cpu"], {"default": "default",
                                            "tooltip": "default = the device ComfyUI runs models on."}),
        }}

    def load(self, version, precision, device):
        from .latentsync.model_set import LipSyncModels

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
    RETURN_TYPES = ("VIDEO", "AUDIO", "IMAGE", "MASK")
    RETURN_NAMES = ("video", "audio", "frames", "mouth_mask")
    OUTPUT_TOOLTIPS = ("The lip-synced video with the speech as its sound: connect SaveVideo to keep it.",
                       "The output's sound: the speech (after silence up to audio_start, padded with silence where "
                       "the video is kept longer).",
                       "Every output frame as IMAGE, only when asked for (output_mode frames, or auto with this "
                       "output connected): a long clip takes a lot of RAM this way.",
                       "Where each output frame's pixels were generated (1 = the new mouth, 0 = the video's own "
                       "pixels): for compositing and grading. Made only when connected; it takes RAM as frames do.")
    OUTPUT_NODE = True
    DESCRIPTION = ("Lip sync / dubbing: makes a talking head's mouth follow new speech (LatentSync; exact published "
                   "outputs, flat memory). "
                   "Connect a VIDEO (streamed from its file) or IMAGE frames with their fps. The output lasts as long "
                   "as the audio: a longer audio plays the video forward and back (when_audio_is_longer). For "
                   "dubbing, audio_start places the speech inside the video and when_video_is_longer keep keeps "
                   "the rest of it.")
    SEARCH_ALIASES = SEARCH_ALIASES

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "From LatentSync Model Loader."}),
                "audio": ("AUDIO", {"tooltip": "The speech; the output lasts as long as it."}),
                **{name: WIDGETS[name] for name in REQUIRED_CHOICES},
            },
            "optional": {
                "video": ("VIDEO", {"tooltip": "The talking-head video (e.g. from Load Video): streamed from its file, "
                                               "never decoded whole. Connect this or images."}),
                "images": ("IMAGE", {"tooltip": "Video frames already in RAM. Connect this or video."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.001,
                                  "tooltip": "Frame rate of the images input (a video keeps its own)."}),
                **{name: WIDGETS[name] for name in OPTIONAL_CHOICES},
            },
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):
        """When the graph is queued: exactly one frame source connected, and every link of the right type (ComfyUI
        leaves the links' types to a node that asks for ``input_types``)."""
        if ("video" in input_types) == ("images" in input_types):
            return bridge.ONE_FRAME_SOURCE
        return bridge.links_match(cls, input_types)

    def lipsync(self, model, audio, output_mode, video=None, images=None, fps=25.0, unique_id=None, prompt=None,
                **choices):
        from .latentsync.options import PipelineOptions
        from .latentsync.pipeline import Cancelled, LipSyncPipeline

        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {output_mode!r}")
        options = PipelineOptions.from_node(choices, hard_vram_cap=not bridge.inside_comfyui())
        want_frames = output_mode == "frames" or (
            output_mode == "auto" and graph.output_is_wired(prompt, unique_id, FRAMES_OUTPUT))
        want_mask = graph.output_is_wired(prompt, unique_id, MASK_OUTPUT)
        path, filename, subfolder = bridge.new_video_path() if output_mode != "frames" else (None, None, None)
        progress = bridge.NodeProgress(unique_id)
        with bridge.video_frames(video, images, fps) as (frames_in, frame_rate), bridge.named_as_chosen(frames_in):
            collector, masks = _collectors(want_frames, want_mask, options, audio, frames_in, frame_rate)
            try:
                progress("models to the device", 0, 1)
                with model.in_use(release_after=options.memory_mode == "aggressive") as models:
                    options = dataclasses.replace(options, vram_free=bridge.free_vram(models.device))
                    result = LipSyncPipeline(models, options).run(
                        frames_in, audio, path, fps=frame_rate, progress=progress,
                        should_cancel=bridge.interrupted, frame_sink=collector, mask_sink=masks)
            except Cancelled as error:
                bridge.raise_interrupted(error)
        progress.finish(bridge.outcome(result), result.warnings)
        bridge.RESULTS.keep(unique_id, path)  # and the node's earlier result, no longer served, is removed
        frames = collector.result() if collector is not None else bridge.blocked(
            "LatentSync Lip Sync returns frames only when asked for: set its output_mode to frames or auto")
        mouth_mask = masks.result() if masks is not None else bridge.blocked(
            "LatentSync Lip Sync makes mouth_mask only when that output is connected")
        sound = bridge.placed_audio(audio, result.audio_delay, float(result.num_frames / result.fps))
        video_out = bridge.video_output(path, frames if collector is not None else None, sound, result.fps)
        return {"ui": bridge.video_preview(filename, subfolder), "result": (video_out, sound, frames, mouth_mask)}


def _collectors(want_frames: bool, want_mask: bool, options, audio, frames_in, frame_rate) -> tuple:
    """The IMAGE and MASK collectors asked for (None for the others), after checking that they fit in RAM (one
    clear sentence before any work, rather than a machine that swaps for minutes)."""
    if not (want_frames or want_mask):
        return None, None
    from .latentsync.memory_limiter import frames_ram_shortfall
    from .latentsync.timeline import expected_frames
    from .latentsync.video import probe_video

    if frame_rate is None:  # a file: its own size, length and rate
        info = probe_video(frames_in)
        height, width, count, frame_rate = info.height, info.width, info.num_frames, info.fps
    else:
        count, height, width = (int(size) for size in frames_in.shape[:3])
    count = expected_frames(options, count, frame_rate, bridge.audio_seconds(audio))
    wanted = [name for name, wanted in (("frames", want_frames), ("mouth_mask", want_mask)) if wanted]
    shortfall = frames_ram_shortfall(count, height, width, channels=3 * want_frames + want_mask)
    if shortfall:
        raise MemoryError(f"the {' and '.join(wanted)} output would take {shortfall}: disconnect "
                          f"{' and '.join(wanted)} and use the video output"
                          + (", or set output_mode to video_file" if want_frames else ""))
    return (bridge.FrameCollector(count + 1) if want_frames else None,
            bridge.FrameCollector(count + 1) if want_mask else None)


NODE_CLASS_MAPPINGS = {"LatentSyncModelLoader": LatentSyncModelLoader, "LatentSyncLipSync": LatentSyncLipSync}
graph.register_prompt_handler(NODE_CLASS_MAPPINGS)
# ComfyUI 0.3.x's search box matches the class and display names only, near their start (it ignores
# SEARCH_ALIASES): the words users type for this node lead its display name
NODE_DISPLAY_NAME_MAPPINGS = {"LatentSyncModelLoader": "LatentSync Model Loader",
                              "LatentSyncLipSync": "Lip Sync, Talking Head Dubbing (LatentSync)"}
