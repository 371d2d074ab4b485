"""The lip-sync node's widgets, made from the library's one options schema (``latentsync/options.py``): defaults,
ranges, choices and help come from there, never repeated here.

Saved workflows list widget values in the order of the inputs, required first: the names and their order below are
those of every earlier release, so old workflows and API prompts keep their values.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..latentsync.options import RUN, Option

REQUIRED = ("seed", "lips_expression", "inference_steps", "attention_mode", "optimization_level", "vram_fraction",
            "memory_mode", "output_mode", "enable_disk_cache")
OPTIONAL = ("face", "face_detector", "lip_focus", "deepcache", "compile", "audio_start", "when_video_is_longer",
            "when_audio_is_longer", "mouth_feather", "audio_context", "vram_budget", "sync_only_speech",
            "speech_min_pause", "speech_pad", "speech_blend")
# set on every run: always in view; the rest (speed, memory, dubbing) sits behind the node's advanced-inputs toggle
IN_VIEW = {"seed", "lips_expression", "inference_steps", "face"}
OUTPUT_MODES = ("auto", "video_file", "frames")
OUTPUT_MODE_HELP = ("auto: write the video, and return frames only if the frames output is connected. video_file: "
                    "write the video only. frames: keep every frame in RAM as IMAGE and write no file (the video "
                    "output is then made from them).")
BY_NODE_NAME = {option.node: option for option in RUN.values() if option.node is not None}


def widget(name: str, optional: bool = False) -> io.Input:
    """The input for the node name ``name`` (a switch, a list or a number, as its option says)."""
    if name == "output_mode":
        made = io.Combo.Input(name, options=list(OUTPUT_MODES), default="auto", tooltip=OUTPUT_MODE_HELP,
                              optional=optional)
    else:
        made = _from_option(BY_NODE_NAME[name], optional)
    if name not in IN_VIEW:
        # an extra key, not the keyword: ComfyUI before 0.10 has no ``advanced`` argument and ignores the key
        made.extra_dict["advanced"] = True
    return made


def _from_option(option: Option, optional: bool) -> io.Input:
    common = {"tooltip": option.node_help or option.help, "optional": optional}
    if option.toggle is not None:
        return io.Boolean.Input(option.node, default=option.default == option.toggle[1], **common)
    if option.choices is not None:
        return io.Combo.Input(option.node, options=list(option.choices), default=option.default, **common)
    number = io.Int if option.kind is int else io.Float
    extra = {"control_after_generate": True} if option.field == "seed" else {}
    if option.step is not None:
        extra["step"] = option.step
    return number.Input(option.node, default=option.default, min=option.min, max=option.max, **common, **extra)

