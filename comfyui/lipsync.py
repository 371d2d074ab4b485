"""One lip-sync run for the node: the frame source in, the library's pipeline, the node's four outputs out."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import comfy.model_management as model_management
from comfy_execution.graph_utils import ExecutionBlocker  # an output not asked for: its consumer stops with the text

from ..latentsync.options import PipelineOptions
from . import media
from .progress import NodeProgress


class Wanted(NamedTuple):
    """What the run makes besides its result's sound: the video file, and the frames and mask held in RAM."""
    file: bool
    frames: bool
    mouth_mask: bool


class Outputs(NamedTuple):
    video: object
    audio: dict
    frames: object
    mouth_mask: object
    preview: object


def run(model, audio, video, images, fps: float, choices: dict, wanted: Wanted, node_id: str | None) -> Outputs:
    from ..latentsync.errors import Cancelled
    from ..latentsync.pipeline import LipSyncPipeline

    options = PipelineOptions.from_node(choices, hard_vram_cap=False)  # ComfyUI owns the GPU's memory policy
    path, filename, subfolder = media.new_video_path() if wanted.file else (None, None, None)
    progress = NodeProgress(node_id)
    media.check_audio(audio)
    outputs = media.OutputsInRam(wanted.frames, wanted.mouth_mask)  # sized by the run, before its first frame
    frames, masks = outputs.frames, outputs.mouth_mask
    with media.video_frames(video, images, fps) as (frames_in, frame_rate), media.named_as_chosen(frames_in):
        try:
            progress("models to the device", 0, 1)
            with model.in_use(release_after=options.memory_mode == "aggressive") as models:
                options = dataclasses.replace(options, vram_free=model.free_vram())
                result = LipSyncPipeline(models, options).run(
                    frames_in, audio, path, fps=frame_rate, progress=progress,
                    should_cancel=model_management.processing_interrupted, frame_sink=frames, mask_sink=masks)
        except Cancelled as error:
            progress.stopped("cancelled")
            model_management.throw_exception_if_processing_interrupted()  # raises and clears the flag
            raise model_management.InterruptProcessingException() from error
        except model_management.InterruptProcessingException:  # ComfyUI's progress hook raises it itself
            progress.stopped("cancelled")
            raise
        except Exception:
            progress.stopped("failed")
            raise
    progress.finish(_outcome(result), result.warnings)
    media.RESULTS.keep(node_id, path)  # and the node's earlier result, no longer served, is removed
    sound = audio if result.sound is None else {**audio, "waveform": result.sound[0]}  # placed by the run
    frames_out = frames.result() if frames is not None else ExecutionBlocker(
        "LatentSync Lip Sync returns frames only when asked for: set its output_mode to frames or auto")
    mask_out = masks.result() if masks is not None else ExecutionBlocker(
        "LatentSync Lip Sync makes mouth_mask only when that output is connected")
    video_out = media.video_output(path, frames_out, sound, result.fps)  # frames_out is used only without a file
    return Outputs(video_out, sound, frames_out, mask_out, media.video_preview(filename, subfolder))


def _outcome(result) -> str:
    """The node's closing text: frames made, and those without a face."""
    text = f"done: {result.output_frames} frame{'s' if result.output_frames != 1 else ''}"
    if result.frames_without_face:
        text += f", {result.frames_without_face} without a face passed through"
    return text
