"""ComfyUI's services as the nodes use them: folders, model memory management, progress, interruption, VIDEO.

ComfyUI's modules are looked up in ``sys.modules`` (ComfyUI imports them before any custom node), never imported
here: outside ComfyUI (plain Python, the tests) every hook falls back to a plain behaviour and importing the pack
starts nothing. The library (``latentsync/``) knows nothing of ComfyUI; this module translates.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

log = logging.getLogger("latentsync.comfyui")

MODEL_FOLDER = "latentsync"  # models/latentsync, and any "latentsync:" entry of extra_model_paths.yaml
OUTPUT_SUBFOLDER = "latentsync"
FILENAME_PREFIX = "LatentSync"
PROGRESS_TEXT_SECONDS = 0.5  # the stage text is sent at most this often (it goes over the websocket)
NODE_TEXT_WIDTH = 52  # characters of one line of the node's text at its default width (it shows two lines)


def _module(name: str):
    return sys.modules.get(name)


def inside_comfyui() -> bool:
    return all(_module(name) is not None for name in ("comfy.model_management", "comfy.utils", "folder_paths"))


def _comfy_import(name: str):
    """A ComfyUI module that may not be imported yet (comfy_api, comfy_execution); None outside ComfyUI."""
    if not inside_comfyui():
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# -- folders -------------------------------------------------------------------------------------------------------


def register_model_folder() -> None:
    """Make ``models/latentsync`` a ComfyUI model folder (appended to what extra_model_paths.yaml gave it)."""
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def checkpoint_dirs() -> list[str]:
    """Where the node looks for checkpoints first: ComfyUI's latentsync folders, in its order."""
    folder_paths = _module("folder_paths")
    if folder_paths is None:
        return []
    register_model_folder()  # idempotent; covers a folder_paths set up after the pack was imported
    return folder_paths.get_folder_paths(MODEL_FOLDER)


def new_video_path() -> tuple[Path, str, str]:
    """(path, filename, subfolder) of a fresh mp4 for the node's result: ComfyUI's temp folder (shown as a preview;
    SaveVideo keeps it, with the workflow), or $LATENTSYNC_OUTPUT_DIR outside ComfyUI. Never outside that folder."""
    folder_paths = _module("folder_paths")
    if folder_paths is not None:
        root = Path(folder_paths.get_temp_directory()).resolve()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            f"{OUTPUT_SUBFOLDER}/{FILENAME_PREFIX}", str(root))
        folder = Path(folder)
    else:
        root = Path(os.environ.get("LATENTSYNC_OUTPUT_DIR") or "output").resolve()
        folder, name, subfolder = root / OUTPUT_SUBFOLDER, FILENAME_PREFIX, OUTPUT_SUBFOLDER
        counter = 1 + sum(1 for p in folder.glob(f"{FILENAME_PREFIX}_*_.mp4")) if folder.is_dir() else 1
    folder.mkdir(parents=True, exist_ok=True)
    while (folder / f"{name}_{counter:05}_.mp4").exists():
        counter += 1
    path = (folder / f"{name}_{counter:05}_.mp4").resolve()
    if root not in path.parents:
        raise ValueError(f"refusing to write outside {root}")
    return path, path.name, subfolder


# -- progress and interruption -------------------------------------------------------------------------------------


def interrupted() -> bool:
    """True once the user pressed Cancel in ComfyUI (the pipeline polls this at every denoising step)."""
    model_management = _module("comfy.model_management")
    return bool(model_management and model_management.processing_interrupted())


def raise_interrupted(error: Exception):
    """Turn the library's Cancelled into ComfyUI's own interruption (so the UI shows 'interrupted')."""
    model_management = _module("comfy.model_management")
    if model_management is None:
        raise error
    model_management.throw_exception_if_processing_interrupted()  # raises and clears the flag when set
    raise model_management.InterruptProcessingException() from error


class NodeProgress:
    """Library progress (stage, done, total) -> this node's progress bar, and the stage as progress text."""

    def __init__(self, node_id: str | None):
        self.node_id = node_id
        self.stage = None
        self.sent = 0.0
        utils = _module("comfy.utils")
        self.bar = None
        if utils is not None:
            try:
                self.bar = utils.ProgressBar(1, node_id=node_id)
            except TypeError:  # releases whose ProgressBar takes no node id
                self.bar = utils.ProgressBar(1)

    def __call__(self, stage: str, done: float, total: int) -> None:
        if stage != self.stage:
            self.stage = stage
            self.sent = 0.0
            log.info("LatentSync: %s", stage)
        if self.bar is not None and total > 0:
            self.bar.update_absolute(min(done, total), total)
        now = time.monotonic()
        if now - self.sent >= PROGRESS_TEXT_SECONDS or done >= total:
            self.sent = now
            self._text(f"{stage}: {int(done)}/{total}")

    def finish(self, text: str, warnings: list[str] = ()) -> None:
        """The text the node keeps after the run: its outcome and the label of every warning (the node shows two
        lines; the whole sentences go to the log)."""
        for warning in warnings:
            log.warning("LatentSync: %s", warning)
        if warnings:
            labels = "; ".join(warning.split(":")[0] for warning in warnings)
            text += "\n" + textwrap.shorten(f"warning: {labels}", NODE_TEXT_WIDTH, placeholder="...")
        self._text(text)

    def _text(self, text: str) -> None:
        server = _module("server")
        instance = getattr(getattr(server, "PromptServer", None), "instance", None)
        if self.node_id is not None and hasattr(instance, "send_progress_text"):
            instance.send_progress_text(text, self.node_id)


@contextlib.contextmanager
def named_as_chosen(path):
    """Errors that name ``path`` (a file of ComfyUI's input folder) name it as the user chose it in Load Video, not
    by the server's full path."""
    try:
        yield
    except (ValueError, OSError) as error:  # MediaError is a ValueError
        if not isinstance(path, Path) or str(path) not in str(error):
            raise
        folder_paths = _module("folder_paths")
        shown = path.name
        if folder_paths is not None:
            try:
                shown = path.resolve().relative_to(Path(folder_paths.get_input_directory()).resolve()).as_posix()
            except ValueError:
                pass
        try:
            renamed = type(error)(str(error).replace(str(path), shown))
        except TypeError:  # an error type that needs other arguments: leave it as it is
            raise error from None
        raise renamed from None


class NodeResults:
    """The video files the node wrote to ComfyUI's temp folder, one per node: a node's earlier result is removed
    once a new one replaces it in ComfyUI's cache (ComfyUI itself empties temp/ only when it restarts). With an LRU
    cache (--cache-lru) older results may be served again, so then nothing is removed."""

    def __init__(self):
        self.paths: dict[str, Path] = {}

    def keep(self, node_id: str | None, path: Path | None) -> None:
        if node_id is None:
            return
        previous = self.paths.pop(str(node_id), None)
        if path is not None:
            self.paths[str(node_id)] = path
        if previous is not None and previous != path and not _lru_cache():
            try:
                previous.unlink()
            except FileNotFoundError:
                pass


def _lru_cache() -> bool:
    cli_args = _module("comfy.cli_args")
    return bool(getattr(getattr(cli_args, "args", None), "cache_lru", 0))


RESULTS = NodeResults()


# -- models under ComfyUI's memory management ----------------------------------------------------------------------


def load_device(choice: str):
    """The compute device: ComfyUI's (or the best one here outside ComfyUI), or the CPU when asked."""
    import torch

    if choice == "cpu":
        return torch.device("cpu")
    model_management = _module("comfy.model_management")
    if model_management is not None:
        return model_management.get_torch_device()
    from .latentsync.memory_limiter import detect_hardware

    return torch.device(detect_hardware().device)


def offload_device(device):
    """Where weights wait between runs: ComfyUI's offload device (the CPU), or the compute device outside it."""
    model_management = _module("comfy.model_management")
    return model_management.unet_offload_device() if model_management is not None else device


class LatentSyncModel:
    """The loader node's output (LATENTSYNC_MODEL): the weights and ComfyUI's ModelPatcher over them.

    ComfyUI's node cache holds this object: "Unload models" moves the weights to the offload device, "Free model
    and node cache" (POST /free) drops the cache and with it the weights, RAM included. Nothing else keeps it.
    """

    def __init__(self, models):
        self.models = models
        self.patcher = self._patcher(models)

    @staticmethod
    def _patcher(models):
        model_patcher = _module("comfy.model_patcher") or _comfy_import("comfy.model_patcher")
        if model_patcher is None:
            return None
        import torch

        holder = torch.nn.Module()  # one container ModelPatcher can size, move and annotate
        for name, module in models.modules().items():
            holder.add_module(name, module)
        return model_patcher.ModelPatcher(holder, load_device=models.device,
                                          offload_device=offload_device(models.device))

    @contextlib.contextmanager
    def in_use(self, release_after: bool):
        """The weights on the compute device for the block (ComfyUI makes room by unloading its other models);
        ``release_after`` hands the VRAM back when the block ends, whatever happened."""
        model_management = _module("comfy.model_management")
        if self.patcher is not None and model_management is not None:
            model_management.load_models_gpu([self.patcher], force_full_load=True)
        for module in self.models.modules().values():  # whatever ComfyUI did (partial loads), all on the device
            if any(p.device != _concrete(self.models.device, p.device) for p in module.parameters()):
                module.to(self.models.device)
        try:
            yield self.models
        finally:
            if release_after:
                self.release_vram()

    def release_vram(self) -> None:
        model_management = _module("comfy.model_management")
        if model_management is not None and self.patcher is not None:
            loaded = model_management.current_loaded_models
            for index in range(len(loaded) - 1, -1, -1):
                if loaded[index].model is self.patcher:
                    loaded.pop(index).model_unload()
            model_management.soft_empty_cache()


def free_vram(device) -> int | None:
    """Bytes ComfyUI's model management says are free on ``device`` after its own reserve (None on the CPU or
    outside ComfyUI): the VRAM plan's budget, beside the weights it has just loaded."""
    import torch

    model_management = _module("comfy.model_management")
    if model_management is None or torch.device(device).type != "cuda":
        return None
    return max(0, int(model_management.get_free_memory(device)) - int(model_management.minimum_inference_memory()))


def _concrete(wanted, actual):
    """``wanted`` with the index ``actual`` has when ``wanted`` names none (cuda == cuda:0 for this check)."""
    import torch

    wanted = torch.device(wanted)
    if wanted.type == actual.type and wanted.index is None:
        return actual
    return wanted


# -- VIDEO / IMAGE in and out --------------------------------------------------------------------------------------


def _streams_from_file(video) -> bool:
    """True when the VIDEO keeps a file (LoadVideo's VideoFromFile overrides get_stream_source); a VIDEO made from
    frames already in RAM would encode itself into a buffer first, so its frames are taken as they are."""
    method = getattr(type(video), "get_stream_source", None)
    if method is None:
        return False
    base = next((c for c in type(video).__mro__ if c.__name__ == "VideoInput"), None)
    return base is None or method is not getattr(base, "get_stream_source", None)


ONE_FRAME_SOURCE = ("connect exactly one of `video` (VIDEO, streamed from its file: long clips never fill RAM) or "
                    "`images` (IMAGE frames, with `fps`)")


@contextlib.contextmanager
def video_frames(video, images, fps: float):
    """(frames for the pipeline, frame rate or None) from exactly one of VIDEO and IMAGE.

    A file-backed VIDEO is streamed from its file and never decoded whole; an in-memory file (BytesIO) is spilled
    to a private temp file that is removed afterwards; a VIDEO made from frames hands over its frames."""
    if (video is None) == (images is None):
        raise ValueError(ONE_FRAME_SOURCE)
    if images is not None:
        if getattr(images, "ndim", 0) != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
            raise ValueError(f"`images` must be an IMAGE batch (frames, height, width, 3), got "
                             f"{tuple(getattr(images, 'shape', ()))}")
        yield images, float(fps)
        return
    if not _streams_from_file(video):
        components = video.get_components()
        yield components.images, float(Fraction(components.frame_rate))
        return
    source = video.get_stream_source()
    if isinstance(source, (str, os.PathLike)):
        yield Path(source), None
        return
    from .latentsync.tempfiles import owned_temp_dir

    folder = owned_temp_dir("video")  # a killed run's is removed by the next run's stale sweep
    try:
        path = folder / "video"
        with open(path, "wb") as spill:
            source.seek(0)
            shutil.copyfileobj(source, spill, 1 << 20)
        yield path, None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def video_output(path: Path | None, frames, audio, fps: Fraction):
    """The VIDEO output: the written file (VideoFromFile), or the frames with the audio (VideoFromComponents) when
    no file was written. Outside ComfyUI: the file's path (or None)."""
    input_impl = _comfy_import("comfy_api.input_impl")
    if input_impl is None:
        return path
    if path is not None:
        return input_impl.VideoFromFile(str(path))
    util = importlib.import_module("comfy_api.util")
    return input_impl.VideoFromComponents(util.VideoComponents(images=frames, audio=audio, frame_rate=fps))


def video_preview(filename: str | None, subfolder: str | None) -> dict:
    """The node's ``ui``: the written file as a video preview (ComfyUI's ``ui.PreviewVideo`` where the running
    ComfyUI has it), nothing when no file was written."""
    if filename is None:
        return {}
    latest = _comfy_import("comfy_api.latest")
    if latest is not None and hasattr(latest, "ui"):
        ui = latest.ui
        return ui.PreviewVideo([ui.SavedResult(filename, subfolder, latest.io.FolderType.temp)]).as_dict()
    return {"images": [{"filename": filename, "subfolder": subfolder, "type": "temp"}], "animated": (True,)}


def outcome(result) -> str:
    """The node's closing text: frames made, and those without a face."""
    text = f"done: {result.num_frames} frame{'s' if result.num_frames != 1 else ''}"
    if result.frames_without_face:
        text += f", {result.frames_without_face} without a face passed through"
    return text


def links_match(node_class, input_types: dict) -> bool | str:
    """True when every linked input receives its declared type (ComfyUI's own rule), else the sentence saying which
    does not; outside ComfyUI nothing is checked."""
    validation = _comfy_import("comfy_execution.validation")
    if validation is None:
        return True
    from .comfyui_graph import declared_inputs

    declared = declared_inputs(node_class)
    for name, received in input_types.items():
        wanted = declared.get(name)
        if isinstance(wanted, str) and not validation.validate_node_input(received, wanted):
            return f"{name} takes {wanted}, but a {received} is connected"
    return True


def blocked(message: str):
    """What an output that was not asked for carries: ComfyUI's ExecutionBlocker (a node that uses it stops with
    ``message``), or None outside ComfyUI."""
    graph_utils = _comfy_import("comfy_execution.graph_utils")
    return None if graph_utils is None else graph_utils.ExecutionBlocker(message)


def audio_seconds(audio) -> float:
    """The duration of ComfyUI AUDIO {"waveform": (batch, channels, samples), "sample_rate": int}, checked."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError("audio must be ComfyUI AUDIO: a dict with 'waveform' (batch, channels, samples) and "
                         "'sample_rate' (connect Load Audio)")
    shape, rate = tuple(getattr(audio["waveform"], "shape", ())), int(audio["sample_rate"])
    if not shape or shape[-1] == 0 or rate <= 0:
        raise ValueError(f"the audio is empty or has no sample rate (waveform {shape}, sample_rate {rate})")
    return shape[-1] / rate


def placed_audio(audio, delay: float | None, seconds: float):
    """The AUDIO of an output: the speech as it is (``delay`` None), or after ``delay`` seconds of silence and
    padded with silence to ``seconds`` (the library's ``RunResult.audio_delay``)."""
    if delay is None:
        return audio
    from .latentsync.audio import placed

    return {**audio, "waveform": placed(audio["waveform"], int(audio["sample_rate"]), delay, seconds)}


class FrameCollector:
    """frame_sink (or mask_sink) -> one preallocated float32 IMAGE (or MASK) tensor (no list of frames, no second
    copy)."""

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
