"""The two nodes, in ComfyUI's V3 schema (``comfy_api.latest``):

    LoadVideo + LoadAudio -> LatentSync Model Loader -> Lip Sync (LatentSync) -> SaveVideo / PreviewVideo

The lip-sync node streams a file-backed VIDEO from its file (frames never enter RAM whole), writes its result to
ComfyUI's temp folder and returns it as VIDEO (SaveVideo then keeps it with the workflow in output/), plus the AUDIO
and, only when asked for, every frame as IMAGE and the generated region as MASK. Node ids and input names are
those of every earlier release: saved workflows and API prompts keep working.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..latentsync.checkpoints import VERSIONS
from ..latentsync.options import LOAD
from . import lipsync, model
from .media import ONE_FRAME_SOURCE
from .prompt import output_is_wired
from .widgets import OPTIONAL, REQUIRED, widget

CATEGORY = "LatentSync"
SEARCH_ALIASES = ["lip sync", "lipsync", "lip-sync", "talking head", "dubbing", "latentsync"]
MODEL = io.Custom("LATENTSYNC_MODEL")
MODEL_VERSIONS = {f"{name} ({version.resolution} px)": name for name, version in VERSIONS.items()}
FRAMES_OUTPUT, MASK_OUTPUT = 2, 3
NOT_CONNECTED = object()  # validate_inputs: an unconnected input keeps its default, a connected one comes as None


def schema(**fields) -> io.Schema:
    """A Schema of the fields this ComfyUI knows (``search_aliases`` is newer than 0.3.64)."""
    return io.Schema(**{name: value for name, value in fields.items() if name in io.Schema.__dataclass_fields__})


class LatentSyncModelLoader(io.ComfyNode):
    """Load a LatentSync checkpoint set once; ComfyUI's model management moves it on and off the GPU."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        default = next(label for label, name in MODEL_VERSIONS.items() if name == LOAD["version"].default)
        return schema(
            node_id="LatentSyncModelLoader", display_name="LatentSync Model Loader", category=CATEGORY,
            search_aliases=SEARCH_ALIASES,
            description="Loads the LatentSync UNet, VAE and Whisper audio encoder from ComfyUI's models/latentsync "
                        "folder (extra_model_paths.yaml entries named latentsync too). Nothing is downloaded here: "
                        "a missing file is reported with the command that downloads it.",
            inputs=[
                io.Combo.Input("version", options=list(MODEL_VERSIONS), default=default, tooltip=LOAD["version"].help),
                io.Combo.Input("precision", options=list(LOAD["precision"].choices),
                               default=LOAD["precision"].default, tooltip=LOAD["precision"].help),
                io.Combo.Input("device", options=["default", "cpu"], default="default",
                               tooltip="default = the device ComfyUI runs models on."),
            ],
            outputs=[MODEL.Output(display_name="model",
                                  tooltip="UNet, VAE and Whisper encoder, for LatentSync Lip Sync.")],
        )

    @classmethod
    def execute(cls, version: str, precision: str, device: str) -> io.NodeOutput:
        return io.NodeOutput(model.load(MODEL_VERSIONS[version], precision, device))


class LatentSyncLipSync(io.ComfyNode):
    """Lip-sync a video to a speech track with LatentSync (1.6 or 1.5, as loaded)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="LatentSyncLipSync", display_name="Lip Sync, Talking Head Dubbing (LatentSync)",
            category=CATEGORY, search_aliases=SEARCH_ALIASES, is_output_node=True,
            description="Lip sync / dubbing: makes a talking head's mouth follow new speech (LatentSync; exact "
                        "published outputs, flat memory). Connect a VIDEO (streamed from its file) or IMAGE frames "
                        "with their fps. The output lasts as long as the audio: a longer audio plays the video "
                        "forward and back (when_audio_is_longer). For dubbing, audio_start places the speech inside "
                        "the video and when_video_is_longer keep keeps the rest of it.",
            inputs=[
                MODEL.Input("model", tooltip="From LatentSync Model Loader."),
                io.Audio.Input("audio", tooltip="The speech; the output lasts as long as it."),
                *(widget(name) for name in REQUIRED),
                io.Video.Input("video", optional=True, tooltip="The talking-head video (e.g. from Load Video): "
                               "streamed from its file, never decoded whole. Connect this or images."),
                io.Image.Input("images", optional=True, tooltip="Video frames already in RAM. Connect this or video."),
                io.Float.Input("fps", optional=True, default=25.0, min=1.0, max=120.0, step=0.001,
                               tooltip="Frame rate of the images input (a video keeps its own)."),
                *(widget(name, optional=True) for name in OPTIONAL),
            ],
            outputs=[
                io.Video.Output(display_name="video", tooltip="The lip-synced video with the speech as its sound: "
                                "connect SaveVideo to keep it."),
                io.Audio.Output(display_name="audio", tooltip="The output's sound: the speech (after silence up to "
                                "audio_start, padded with silence where the video is kept longer)."),
                io.Image.Output(display_name="frames", tooltip="Every output frame as IMAGE, only when asked for "
                                "(output_mode frames, or auto with this output connected): a long clip takes a lot "
                                "of RAM this way."),
                io.Mask.Output(display_name="mouth_mask", tooltip="Where each output frame's pixels were generated "
                               "(1 = the new mouth, 0 = the video's own pixels): for compositing and grading. Made "
                               "only when connected; it takes RAM as frames do."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def validate_inputs(cls, model=None, video=NOT_CONNECTED, images=NOT_CONNECTED) -> bool | str:
        """When the graph is queued: exactly one frame source connected. ``model``, always connected, is asked for
        only so that ComfyUI, which files the sentence under each input it passed, has one when neither is."""
        return ONE_FRAME_SOURCE if (video is NOT_CONNECTED) == (images is NOT_CONNECTED) else True

    @classmethod
    def execute(cls, model, audio, output_mode: str, video=None, images=None, fps: float = 25.0,
                **choices) -> io.NodeOutput:
        node_id, prompt = cls.hidden.unique_id, cls.hidden.prompt
        frames = output_mode == "frames" or (output_mode == "auto" and output_is_wired(prompt, node_id, FRAMES_OUTPUT))
        wanted = lipsync.Wanted(file=output_mode != "frames", frames=frames,
                                mouth_mask=output_is_wired(prompt, node_id, MASK_OUTPUT))
        out = lipsync.run(model, audio, video, images, fps, choices, wanted, node_id)
        return io.NodeOutput(out.video, out.audio, out.frames, out.mouth_mask, ui=out.preview)
