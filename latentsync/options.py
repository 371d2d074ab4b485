"""One schema for every choice a user makes: its names on each front, type, default, range or words, and help.

Each ``Option`` knows its library field (a ``PipelineOptions`` field or a ``LipSyncModels.load`` argument), its
ComfyUI input, its command-line flag and its jobs-file column (the flag without dashes). ``PipelineOptions``, the
command line's flags, the batch's columns and the node's widgets are all made from these entries, so a name, a
default or a range is written once; ``Option.parse`` is the one converter of typed text (flags, jobs-file cells).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Mapping

from .attention.registry import NAMES as ATTENTION_MODES
from .checkpoints import VERSIONS
from .timeline import AUDIO_LONGER, VIDEO_LONGER

OPTIMIZATION_LEVELS = ("conservative", "balanced", "aggressive")
MEMORY_MODES = ("aggressive", "balanced", "conservative")  # how hard to save host RAM
FACE_DETECTORS = ("auto", "insightface", "dlib")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
CODECS = ("h264", "ffv1")
COMPILE_MODES = ("off", "on", "cudagraphs")
AUDIO_CONTEXTS = ("windows", "seamless")
DEEPCACHE_PUBLISHED_INTERVAL = 3  # what the published LatentSync's --enable_deepcache uses
MEMORY_MODE_HELP = ("How hard to save host RAM when the audio outlasts the video: aggressive always keeps revisited "
                    "frames in a disk cache, conservative keeps them in RAM when they fit.")


@dataclass(frozen=True)
class Option:
    field: str  # the library's name
    node: str | None  # the ComfyUI input users know (None: not on the node); library errors call it this
    flag: str | None  # the command-line flag (None: not on the command line); its jobs-file column drops the dashes
    default: Any
    help: str
    kind: type = str  # what a flag or a jobs-file cell is read as: int, float or str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    words: Mapping[str, Any] | None = None  # the words typed for the values, where they differ (--disk-cache on)
    changes_output: bool = True  # False: speed and memory only (a batch's done job is not redone for it)
    toggle: tuple | None = None  # the node shows a switch for it: the values (off, on)
    node_help: str | None = None  # the node's tooltip, where it differs from ``help``

    @property
    def column(self) -> str | None:
        return None if self.flag is None else self.flag[2:].replace("-", "_")

    @property
    def typed_default(self) -> str:
        """The default as it is typed on the command line."""
        if self.words is not None:
            return next(word for word, value in self.words.items() if value == self.default)
        return str(self.default)

    def parse(self, raw, name: str):
        """A typed value (a flag's text, a jobs-file cell) as this option's value, checked; one sentence calling it
        ``name`` (the flag, or the line and column) otherwise. Whole numbers may be written 2.0 (spreadsheets)."""
        if isinstance(raw, bool):
            raise ValueError(f"{name}: {str(raw).lower()} is not a value here; give a number or one of its words")
        text = str(raw).strip()
        if self.words is not None:
            if text not in self.words:
                raise ValueError(f"{name} must be one of {', '.join(self.words)}; got {text!r}")
            value = self.words[text]
        elif self.kind is int:
            value = _whole_number(text, name)
        elif self.kind is float:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{name}: {text!r} is not a number") from None
        else:
            value = text
        self.check(value, name)
        return value

    def check(self, value, name: str | None = None) -> None:
        """Raise ValueError with one sentence when ``value`` is outside this option's choices or range; the
        sentence calls it ``name`` (the flag or column the user typed), by default its node name."""
        name = name or self.node or self.field
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{name} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        if self.min is None:
            return
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison below
            raise ValueError(f"{name} must be a number between {self.min} and {self.max}, got {value}")
        if value < self.min or value > self.max:
            raise ValueError(f"{name} must be between {self.min} and {self.max}, got {value}")

    def from_node(self, value):
        """The library's value of the node's widget value."""
        return self.toggle[bool(value)] if self.toggle is not None else self.kind(value)


def _whole_number(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is None or not number.is_integer():
        raise ValueError(f"{name}: {text!r} is not a whole number")
    return int(number)


def _schema(*options: Option) -> dict[str, Option]:
    return {option.field: option for option in options}


# Run options: chosen per video, never a reason to reload weights; the fields of PipelineOptions, in the node's order.
RUN = _schema(
    Option("seed", "seed", "--seed", 1247, "The starting noise: the same seed gives the same result.", int,
           min=0, max=2 ** 64 - 1),
    Option("guidance_scale", "lips_expression", "--guidance", 1.5, "Classifier-free guidance scale: higher = "
           "stronger mouth movement.", float, min=1.0, max=3.0, step=0.1),
    Option("steps", "inference_steps", "--steps", 20, "Denoising (DDIM) steps. 20 is the published setting; fewer "
           "is faster and blurrier and changes the output. Each step is one more pass of the UNet over every frame: "
           "40 takes about twice as long as 20, for little visible gain.", int, min=1, max=999),
    Option("attention", "attention_mode", "--attention", "auto", "Attention kernel. All give the same result within "
           "float tolerance; auto picks by rule the fastest fused kernel that works here.", choices=ATTENTION_MODES,
           changes_output=False),
    Option("optimization_level", "optimization_level", "--optimization-level", "balanced", "How much GPU memory to "
           "spend on speed (chunks per UNet call, VAE batch); conservative plans for about 8 GB.",
           choices=OPTIMIZATION_LEVELS, changes_output=False),
    Option("vram_fraction", "vram_fraction", "--vram-fraction", 0.0, "Share of the GPU's memory to plan batches for "
           "(0 = auto). On the command line also a hard cap for the run, lifted afterwards.", float, min=0.0,
           max=0.95, step=0.05, changes_output=False,
           node_help="Share of the GPU's memory to plan batches for (0 = auto). Inside ComfyUI no hard cap is set: "
                     "its model management owns the GPU's memory."),
    Option("vram_budget", "vram_budget", "--vram-budget", 0.0, "GB of GPU memory this run may use, its CUDA "
           "context included (0 = what is free when it starts). The plan takes the largest batches, and if it must "
           "the next memory tier (guidance halves in sequence, models off the GPU, UNet weights streamed), whose "
           "modelled peak fits: the outputs stay within float tolerance of each other.", float, min=0.0,
           max=1024.0, step=0.5, changes_output=False),
    Option("memory_mode", "memory_mode", "--memory-mode", "balanced", MEMORY_MODE_HELP, choices=MEMORY_MODES,
           changes_output=False, node_help=MEMORY_MODE_HELP + " aggressive also gives the GPU memory back after each "
                                                              "run."),
    Option("disk_cache", "enable_disk_cache", "--disk-cache", None, "Keep revisited frames in a disk cache (on), in "
           "RAM (off), or let the memory plan decide (auto).", choices=(None, True, False),
           words={"auto": None, "on": True, "off": False}, changes_output=False, toggle=(None, True),
           node_help="On: revisited frames (audio longer than the video) always go to a disk cache. Off: the memory "
                     "plan decides, following memory_mode."),
    Option("face", "face", "--face", 0, "Which face to sync when there are several: 0 = the largest in each frame "
           "(the published rule; it can jump between two people of the same size), N = the N-th face from the left "
           "where it first appears, followed through the clip (frames without it pass through).", int, min=0,
           max=16),
    Option("detector", "face_detector", "--detector", "auto", "insightface (buffalo_l: the published geometry), dlib "
           "(offline; close, not identical), or auto (insightface when its models are present, else dlib).",
           choices=FACE_DETECTORS),
    Option("lip_focus", "lip_focus", "--lip-focus", 1.0, "Above 1 weights the mouth region in spatial attention "
           "(flex kernel). Opt-in: changes the output.", float, min=1.0, max=4.0, step=0.1),
    Option("deepcache_interval", "deepcache", "--deepcache", 0, "DeepCache: the full UNet every N steps, the steps "
           "between reuse its deep features (3 as published). Faster; opt-in: changes the output. 0 = off.", int,
           min=0, max=10, toggle=(0, DEEPCACHE_PUBLISHED_INTERVAL),
           node_help=f"DeepCache: the full UNet every {DEEPCACHE_PUBLISHED_INTERVAL} steps (as published), the steps "
                     "between reuse its deep features. Faster; opt-in: changes the output."),
    Option("compile", "compile", "--compile", "off", "Compile the UNet and the VAE decoder with torch.compile "
           "(on; cudagraphs also captures CUDA graphs): faster after a first, slow compile that later runs reuse. "
           "Equal to off within float tolerance, not bit for bit.", choices=COMPILE_MODES, changes_output=False),
    # dubbing: where the speech goes, what fills the rest, how the mouth meets the face (each opt-in)
    Option("audio_start", "audio_start", "--audio-start", 0.0, "Seconds into the video where the speech begins: the "
           "frames before pass through unchanged, and the synced part is what a run on the video cut there makes.",
           float, min=0.0, max=86400.0, step=0.01),
    Option("when_video_is_longer", "when_video_is_longer", "--when-video-is-longer", "cut", "cut: the output ends "
           "with the speech (published). keep: the rest of the video follows unchanged, the speech padded with "
           "silence.", choices=VIDEO_LONGER),
    Option("when_audio_is_longer", "when_audio_is_longer", "--when-audio-is-longer", "pingpong", "How the video "
           "goes on when the speech outlasts it: pingpong plays it backward and forward (published), loop restarts "
           "it, hold repeats its last frame.", choices=AUDIO_LONGER),
    Option("mouth_feather", "mouth_feather", "--mouth-feather", 0, "Pixels (in the face crop) over which the "
           "generated mouth fades into the face in the final blend; 0 = the published hard edge. The model's input "
           "does not change.", int, min=0, max=64),
    Option("audio_context", "audio_context", "--audio-context", "windows", "windows: the published audio features "
           "(Whisper on consecutive 30 s windows; a jump at each edge). seamless: overlapping windows cross-faded, "
           "no jump; the same features for speech of 30 s or less.", choices=AUDIO_CONTEXTS),
    # a whole scene: the lips synced only where the voice detector hears speech (each opt-in)
    Option("sync_only_speech", "sync_only_speech", "--sync-only-speech", False, "Sync only the stretches where the "
           "speech is (a voice detector finds them): the frames of pauses longer than speech_min_pause are the "
           "video's own, untouched and not computed (faster). Off: every frame of the speech is synced (published).",
           choices=(False, True), words={"off": False, "on": True}, toggle=(False, True)),
    Option("speech_min_pause", "speech_min_pause", "--speech-min-pause", 0.5, "With sync_only_speech: seconds of "
           "silence that end a stretch of speech; shorter pauses stay synced.", float, min=0.05, max=10.0,
           step=0.05),
    Option("speech_pad", "speech_pad", "--speech-pad", 0.2, "With sync_only_speech: seconds synced before and after "
           "each stretch of speech (lips move a little before the sound).", float, min=0.0, max=2.0, step=0.05),
    Option("speech_blend", "speech_blend", "--speech-blend", 4, "With sync_only_speech or several lines: frames at "
           "each end of a synced stretch over which its mouth fades in from the video's own (in the mouth region "
           "only); 0 = a cut.", int, min=0, max=12),
    # how the video file is written (ComfyUI's Save Video node does its own)
    Option("codec", None, "--codec", "h264", "h264: a small MP4 every player takes. ffv1: lossless RGB in Matroska "
           "(.mkv): large files whose frames decode to exactly what the pipeline made (masters, comparisons).",
           choices=CODECS),
)

# Load options: what a set of weights is loaded as (LipSyncModels.load's arguments).
LOAD = _schema(
    Option("version", "version", "--resolution", "1.6", "Face size in pixels, and with it the version: 512 = "
           "LatentSync 1.6, 256 = LatentSync 1.5.", choices=tuple(VERSIONS),
           words={str(v.resolution): name for name, v in VERSIONS.items()}),
    Option("precision", "precision", "--precision", "auto", "auto = fp16 on the GPUs the published pipeline runs in "
           "fp16, float32 elsewhere.", choices=PRECISIONS),
)


def check_all(schema: dict[str, Option], values: Mapping[str, Any]) -> None:
    """Check every value that has an entry in ``schema``."""
    for name, option in schema.items():
        if name in values:
            option.check(values[name])


def _check_fields(self) -> None:
    check_all(RUN, vars(self))


def _from_node(cls, inputs: Mapping[str, Any], **library_only):
    """The options of a node's input values (by their node names; the ones it does not show keep their default)."""
    return cls(**{option.field: option.from_node(inputs[option.node]) for option in RUN.values()
                  if option.node is not None and option.node in inputs}, **library_only)


PipelineOptions = make_dataclass(
    "PipelineOptions",
    [(option.field, Any, field(default=option.default)) for option in RUN.values()] + [
        # False inside a host that owns VRAM policy (ComfyUI): vram_fraction then only sizes the batches
        ("hard_vram_cap", bool, field(default=True)),
        # where disk caches go (a private folder inside it); default: the system's temp folder
        ("cache_dir", Any, field(default=None)),
        # bytes a host says are free on the GPU for the run (ComfyUI: its model management's, after its reserve);
        # default: torch.cuda.mem_get_info
        ("vram_free", Any, field(default=None)),
    ],
    namespace={"__post_init__": _check_fields, "from_node": classmethod(_from_node),
               "__doc__": "Per-run choices: one field per entry of ``RUN`` (defaults, ranges and help there), plus "
                          "hard_vram_cap, cache_dir and vram_free for hosts; none of them reloads weights."},
)
PipelineOptions.__module__ = __name__  # pickled by name (Ray workers)


def pipeline_options(values: Mapping[str, Any]) -> "PipelineOptions":
    """The run options among checked option values (field -> value, e.g. from ``Option.parse``)."""
    return PipelineOptions(**{name: values[name] for name in RUN})


def output_fields() -> tuple[str, ...]:
    """The fields whose values decide an output's pixels and file (with the weights themselves)."""
    return tuple(option.field for option in (*LOAD.values(), *RUN.values()) if option.changes_output)
