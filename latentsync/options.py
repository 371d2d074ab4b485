"""One schema for what a user chooses: defaults, ranges, choices and help text.

The pipeline's ``PipelineOptions`` / ``LoadOptions`` take their defaults and checks from here, and the fronts (the
command line, the ComfyUI nodes) build their flags and widgets from the same entries, so a default or a range is
written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ATTENTION_MODES = ("auto", "flash", "xformers", "flex", "standard")
OPTIMIZATION_LEVELS = ("conservative", "balanced", "aggressive")
MEMORY_MODES = ("aggressive", "balanced", "conservative")  # how hard to save host RAM
FACE_DETECTORS = ("auto", "insightface", "dlib")
VERSIONS = ("1.6", "1.5")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
DEEPCACHE_PUBLISHED_INTERVAL = 3  # what the published LatentSync's --enable_deepcache uses


@dataclass(frozen=True)
class Param:
    label: str  # the name users know (the node's input name): error messages use it
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    step: float | None = None

    def check(self, value, name: str | None = None) -> None:
        """Raise ValueError with one sentence when ``value`` is outside this parameter's choices or range; the
        sentence calls it ``name`` (the flag or column the user typed), by default its label."""
        name = name or self.label
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{name} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        if self.min is None:
            return
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison below
            raise ValueError(f"{name} must be a number between {self.min} and {self.max}, got {value}")
        if value < self.min or value > self.max:
            raise ValueError(f"{name} must be between {self.min} and {self.max}, got {value}")


# Run parameters: chosen per video, never a reason to reload weights.
RUN = {
    "seed": Param("seed", 1247, "The starting noise: the same seed gives the same result.",
                  min=0, max=2 ** 64 - 1),
    "guidance_scale": Param("lips_expression", 1.5, "Classifier-free guidance scale: higher = stronger mouth "
                            "movement.", min=1.0, max=3.0, step=0.1),
    "steps": Param("inference_steps", 20, "Denoising (DDIM) steps. 20 is the published setting; fewer is faster "
                   "and blurrier and changes the output.", min=1, max=999),
    "attention": Param("attention_mode", "auto", "Attention kernel. All give the same result within float "
                       "tolerance; auto picks the fastest fused kernel that works here.", choices=ATTENTION_MODES),
    "lip_focus": Param("lip_focus", 1.0, "Above 1 weights the mouth region in spatial attention (flex kernel). "
                       "Opt-in: changes the output.", min=1.0, max=4.0, step=0.1),
    "deepcache_interval": Param("deepcache", 0, "DeepCache: the full UNet every N steps, the steps between reuse "
                                "its deep features (3 as published). Faster; opt-in: changes the output. 0 = off.",
                                min=0, max=10),
    "optimization_level": Param("optimization_level", "balanced", "How much GPU memory to spend on speed "
                                "(chunks per UNet call, VAE batch); conservative plans for about 8 GB.",
                                choices=OPTIMIZATION_LEVELS),
    "memory_mode": Param("memory_mode", "balanced", "How hard to save host RAM when the audio outlasts the video: "
                         "aggressive always keeps revisited frames in a disk cache, conservative keeps them in RAM "
                         "when they fit.", choices=MEMORY_MODES),
    "vram_fraction": Param("vram_fraction", 0.0, "Share of the GPU's memory to plan batches for (0 = auto). On the "
                           "command line also a hard cap for the run, lifted afterwards.", min=0.0, max=0.95,
                           step=0.05),
    "disk_cache": Param("enable_disk_cache", None, "Keep revisited frames in a disk cache (True), in RAM (False), "
                        "or let the memory plan decide (None).", choices=(None, True, False)),
    "face": Param("face", 0, "Which face to sync when there are several: 0 = the largest in each frame (the "
                  "published rule; it can jump between two people of the same size), N = the N-th face from the "
                  "left where it first appears, followed through the clip (frames without it pass through).",
                  min=0, max=16),
    "detector": Param("face_detector", "auto", "insightface (buffalo_l: the published geometry), dlib (offline; "
                      "close, not identical), or auto (insightface when its models are present, else dlib).",
                      choices=FACE_DETECTORS),
}

# Output parameters: how the video file is written (the command line; ComfyUI's Save Video node does its own).
OUTPUT = {
    "codec": Param("codec", "h264", "h264: a small MP4 every player takes. ffv1: lossless RGB in Matroska (.mkv): "
                   "large files whose frames decode to exactly what the pipeline made (masters, comparisons).",
                   choices=("h264", "ffv1")),
}

# Load parameters: what a set of weights is loaded as.
LOAD = {
    "version": Param("version", "1.6", "LatentSync 1.6 (512 px faces) or 1.5 (256 px).", choices=VERSIONS),
    "precision": Param("precision", "auto", "auto = fp16 on the GPUs the published pipeline runs in fp16, "
                       "float32 elsewhere.", choices=PRECISIONS),
}


def check_all(schema: dict[str, Param], values: dict[str, Any]) -> None:
    """Check every value that has an entry in ``schema``."""
    for name, param in schema.items():
        if name in values:
            param.check(values[name])
