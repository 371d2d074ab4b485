"""VIDEO, IMAGE and AUDIO in and out of the lip-sync node, and the result files it writes to ComfyUI's temp folder."""

from __future__ import annotations

import contextlib
import os
import shutil
from fractions import Fraction
from pathlib import Path

import folder_paths
import torch
from comfy.cli_args import args
from comfy_api.latest import InputImpl, Types, io, ui

OUTPUT_SUBFOLDER = "latentsync"
FILENAME_PREFIX = "LatentSync"
ONE_FRAME_SOURCE = ("connect exactly one of `video` (VIDEO, streamed from its file: long clips never fill RAM) or "
                    "`images` (IMAGE frames, with `fps`)")


def new_video_path() -> tuple[Path, str, str]:
    """(path, filename, subfolder) of a fresh mp4 in ComfyUI's temp folder (shown as a preview; SaveVideo keeps it,
    with the workflow). Never outside that folder."""
    root = Path(folder_paths.get_temp_directory()).resolve()
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(f"{OUTPUT_SUBFOLDER}/{FILENAME_PREFIX}",
                                                                           str(root))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    while (folder / f"{name}_{counter:05}_.mp4").exists():
        counter += 1
    path = (folder / f"{name}_{counter:05}_.mp4").resolve()
    if root not in path.parents:
        raise ValueError(f"refusing to write outside {root}")
    return path, path.name, subfolder


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
        if previous is not None and previous != path and not getattr(args, "cache_lru", 0):
            previous.unlink(missing_ok=True)


RESULTS = NodeResults()


@contextlib.contextmanager
def named_as_chosen(path):
    """Errors that name ``path`` (a file of ComfyUI's input folder) name it as the user chose it in Load Video, not
    by the server's full path."""
    try:
        yield
    except (ValueError, OSError) as error:  # MediaError is a ValueError
        if not isinstance(path, Path) or str(path) not in str(error):
            raise
        try:
            shown = path.resolve().relative_to(Path(folder_paths.get_input_directory()).resolve()).as_posix()
        except ValueError:
            shown = path.name
        try:
            renamed = type(error)(str(error).replace(str(path), shown))
        except TypeError:  # an error type that needs other arguments: leave it as it is
            raise error from None
        raise renamed from None


@contextlib.contextmanager
def video_frames(video, images, fps: float):
    """(frames for the pipeline, frame rate or None) from exactly one of VIDEO and IMAGE.

    A file-backed VIDEO is streamed from its file and never decoded whole; an in-memory file (BytesIO) is spilled
    to a private temp file that is removed afterwards; a VIDEO made from frames hands over its frames."""
    if (video is None) == (images is None):
        raise ValueError(ONE_FRAME_SOURCE)
    if images is not None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
            raise ValueError(f"`images` must be an IMAGE batch (frames, height, width, 3), got {tuple(images.shape)}")
        yield images, float(fps)
        return
    if not isinstance(video, InputImpl.VideoFromFile):  # made from frames in RAM: saving it would encode them
        components = video.get_components()
        yield components.images, float(Fraction(components.frame_rate))
        return
    source = video.get_stream_source()
    if isinstance(source, (str, os.PathLike)):
        yield Path(source), None
        return
    from ..latentsync.tempfiles import owned_temp_dir

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
    """The VIDEO output: the written file, or the frames with the audio when no file was written."""
    if path is not None:
        return InputImpl.VideoFromFile(str(path))
    return InputImpl.VideoFromComponents(Types.VideoComponents(images=frames, audio=as_stereo(audio), frame_rate=fps))


def as_stereo(audio):
    """Mono AUDIO as two equal channels (others as they are): ComfyUI's encoder (0.3.x) writes mono sound as stereo
    3 dB down, while the node's own files keep the speech's level; two channels keep it in every version."""
    waveform = audio["waveform"]
    return {**audio, "waveform": waveform.expand(-1, 2, -1).contiguous()} if waveform.shape[1] == 1 else audio


def video_preview(filename: str | None, subfolder: str | None):
    """The node's preview of the written file (none when no file was written)."""
    if filename is None:
        return None
    return ui.PreviewVideo([ui.SavedResult(filename, subfolder, io.FolderType.temp)])


def check_audio(audio) -> None:
    """ComfyUI AUDIO {"waveform": (batch, channels, samples), "sample_rate": int} with sound, or one sentence."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError("audio must be ComfyUI AUDIO: a dict with 'waveform' (batch, channels, samples) and "
                         "'sample_rate' (connect Load Audio)")
    shape, rate = tuple(getattr(audio["waveform"], "shape", ())), int(audio["sample_rate"])
    if not shape or shape[-1] == 0 or rate <= 0:
        raise ValueError(f"the audio is empty or has no sample rate (waveform {shape}, sample_rate {rate})")


class OutputsInRam:
    """The IMAGE and MASK outputs asked for, as frame and mask sinks that fill one preallocated float32 tensor each
    (no list of frames, no second copy). Told the run's size before its first frame, they check that both fit in
    the free RAM together: one clear sentence rather than a machine that swaps for minutes."""

    def __init__(self, frames: bool, mouth_mask: bool):
        self.frames = FrameCollector(self, channels=3) if frames else None
        self.mouth_mask = FrameCollector(self, channels=1) if mouth_mask else None
        self.checked = False

    def check(self, count: int, height: int, width: int) -> None:
        if self.checked:
            return
        from ..latentsync.memory_limiter import frames_ram_shortfall

        self.checked = True
        names = [name for name in ("frames", "mouth_mask") if getattr(self, name) is not None]
        channels = sum(getattr(self, name).channels for name in names)
        shortfall = frames_ram_shortfall(count, height, width, channels=channels)
        if shortfall:
            raise MemoryError(f"the {' and '.join(names)} output would take {shortfall}: disconnect "
                              f"{' and '.join(names)} and use the video output"
                              + (", or set output_mode to video_file" if self.frames is not None else ""))


class FrameCollector:
    """A frame sink (or mask sink) that fills one float32 IMAGE (or MASK) tensor, allocated when the run tells its
    size (``start``)."""

    def __init__(self, outputs: OutputsInRam, channels: int):
        self.outputs, self.channels = outputs, channels
        self.frames = None
        self.count = 0

    def start(self, count: int, height: int, width: int) -> None:
        self.outputs.check(count, height, width)
        shape = (count, height, width, 3) if self.channels == 3 else (count, height, width)
        self.frames = torch.empty(shape, dtype=torch.float32)

    def __call__(self, batch) -> None:
        n = batch.shape[0]
        self.frames[self.count:self.count + n] = torch.from_numpy(batch).to(torch.float32).div_(255.0)
        self.count += n

    def result(self):
        return self.frames[:self.count]
