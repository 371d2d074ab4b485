"""The ComfyUI node, loaded the way ComfyUI loads a custom node pack (a package whose name has a dash).

The end-to-end tests run the node on the CPU with the tiny real-format checkpoints
(``latentsync.tools.make_tiny_checkpoints``, written once per session) and the offline dlib face detector.
The node is pointed at them through environment variables it documents: ``LATENTSYNC_CHECKPOINTS`` (the
checkpoints folder), ``LATENTSYNC_UNET_CONFIG`` (the tiny UNet yaml) and ``LATENTSYNC_OUTPUT_DIR`` (where it
writes when ComfyUI is not running).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_NAME = "latentsync-memsafe"  # a dash: not importable by a plain import statement, as in custom_nodes/
CLIP_SECONDS = 0.64  # 16 frames at 25 fps: one UNet chunk
CLIP_SCALE = 2  # the 1080x1920 demo decoded at half size (540x960): small, and dlib still finds the face
STEPS = 1


def load_as_comfyui(name: str = PACKAGE_NAME, root: Path = REPO):
    """What ComfyUI's nodes.load_custom_node does: spec_from_file_location on the folder's __init__.py."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def package():
    return load_as_comfyui()


@pytest.fixture(scope="session")
def node_module(package):
    return sys.modules[f"{PACKAGE_NAME}.nodes"]


def library(name: str):
    """A library module as the node sees it: inside the dashed package, never a top-level ``latentsync``."""
    load_as_comfyui()
    return importlib.import_module(f"{PACKAGE_NAME}.latentsync.{name}")


# -- the node's surface (no models needed) ------------------------------------------------------------------------


def test_mappings_and_display_name(package):
    assert set(package.NODE_CLASS_MAPPINGS) == {"LatentSyncMemsafe"}
    assert package.NODE_DISPLAY_NAME_MAPPINGS["LatentSyncMemsafe"] == "🎬 LatentSync 1.6 (MEMSAFE)"
    cls = package.NODE_CLASS_MAPPINGS["LatentSyncMemsafe"]
    assert cls.FUNCTION == "lipsync" and callable(getattr(cls(), cls.FUNCTION))
    assert cls.RETURN_TYPES == ("IMAGE", "AUDIO", "STRING")
    assert cls.OUTPUT_NODE is True


def test_input_types(package):
    inputs = package.NODE_CLASS_MAPPINGS["LatentSyncMemsafe"].INPUT_TYPES()
    required, optional = inputs["required"], inputs["optional"]
    assert list(required) == ["images", "audio", "seed", "lips_expression", "inference_steps", "attention_mode",
                              "optimization_level", "vram_fraction", "memory_mode", "output_mode",
                              "enable_disk_cache"]
    assert required["images"][0] == "IMAGE" and required["audio"][0] == "AUDIO"
    assert required["seed"][0] == "INT" and required["seed"][1]["default"] == 1247
    assert required["lips_expression"] == ("FLOAT", {**required["lips_expression"][1], "default": 1.5, "min": 1.0,
                                                      "max": 3.0, "step": 0.1})
    steps = required["inference_steps"][1]
    assert (required["inference_steps"][0], steps["default"], steps["min"], steps["max"]) == ("INT", 20, 1, 999)
    assert required["attention_mode"][0] == ["auto", "flash", "xformers", "flex", "standard"]
    assert required["optimization_level"][0] == ["conservative", "balanced", "aggressive"]
    assert required["optimization_level"][1]["default"] == "balanced"
    vram = required["vram_fraction"]
    assert (vram[0], vram[1]["default"], vram[1]["min"], vram[1]["max"]) == ("FLOAT", 0.0, 0.0, 0.95)
    assert required["memory_mode"][0] == ["aggressive", "balanced", "conservative"]
    assert required["output_mode"][0] == ["auto", "video_file", "frames"]
    assert required["enable_disk_cache"][0] == "BOOLEAN"
    assert optional["model_version"][0] == ["1.6 (512 px)", "1.5 (256 px)"]
    assert optional["fps"][0] == "FLOAT" and optional["fps"][1]["default"] == 25.0
    assert optional["face_detector"][0] == ["auto", "insightface", "dlib"]
    focus = optional["lip_focus"]
    assert (focus[0], focus[1]["default"], focus[1]["min"], focus[1]["max"]) == ("FLOAT", 1.0, 1.0, 4.0)
    assert optional["deepcache"][0] == "BOOLEAN" and optional["deepcache"][1]["default"] is False
    assert optional["video_path"][0] == "STRING" and optional["video_path"][1]["default"] == ""
    json.dumps(inputs)  # ComfyUI serves this as JSON (/object_info)


def test_import_is_cheap_and_relative(tmp_path):
    """Importing the pack loads no torch, and the node imports the library inside the pack, never a top-level
    ``latentsync`` (two LatentSync packs can coexist; the folder name may have dashes)."""
    code = f"""
import importlib, importlib.util, sys
root = {str(REPO)!r}
spec = importlib.util.spec_from_file_location("my-latentsync-pack", root + "/__init__.py",
                                              submodule_search_locations=[root])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
assert "torch" not in sys.modules, "importing the pack imported torch"
assert "diffusers" not in sys.modules
pipeline = importlib.import_module("my-latentsync-pack.latentsync.pipeline")
assert "latentsync" not in sys.modules, "a top-level latentsync was imported"
assert not any(name.startswith("latentsync.") for name in sys.modules), sorted(
    n for n in sys.modules if n.startswith("latentsync"))
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_output_mode_auto_rule(node_module, monkeypatch):
    class Memory:
        available = 8 * 1024 ** 3

    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    assert node_module._choose_frames("frames", 10 ** 6, 1080, 1920) is True
    assert node_module._choose_frames("video_file", 1, 8, 8) is False
    assert node_module._choose_frames("auto", 250, 512, 512) is True  # 0.79 GB of 8 GB
    assert node_module._choose_frames("auto", 250, 1080, 1920) is False  # 6.2 GB
    assert node_module._choose_frames("auto", node_module.AUTO_FRAMES_MAX + 1, 8, 8) is False


def test_output_paths_stay_in_output_folder(node_module, monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTSYNC_OUTPUT_DIR", str(tmp_path))
    first, name, subfolder = node_module._next_output_path()
    assert first.parent == (tmp_path / "latentsync").resolve() and subfolder == "latentsync"
    assert name == "LatentSync_00001_.mp4"
    first.write_bytes(b"x")
    second, name, _ = node_module._next_output_path()
    assert name == "LatentSync_00002_.mp4" and second != first


def test_audio_check(node_module):
    import torch

    stereo = torch.zeros(1, 2, 44100)  # (batch, channels, samples): ComfyUI AUDIO, handed to the library as is
    assert node_module._audio_seconds({"waveform": stereo, "sample_rate": 44100}) == 1.0
    with pytest.raises(ValueError, match="AUDIO"):
        node_module._audio_seconds(np.zeros(10))
    with pytest.raises(ValueError, match="empty"):
        node_module._audio_seconds({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000})


# -- end to end with the tiny checkpoints ------------------------------------------------------------------------


def _require_dlib():
    ok, reason = library("face.detectors").DlibDetector.available()
    if not ok:
        pytest.fail(f"the offline dlib face detector (a requirement) is not usable here: {reason}")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-checkpoints")
    config = library("tools.make_tiny_checkpoints").make_tiny_checkpoints(folder)
    return folder, Path(config)


@pytest.fixture(scope="session")
def short_clip(media_dir, tmp_path_factory):
    """The first 0.64 s of demo1 at half size: (IMAGE float tensor, the same clip as an mp4 path, AUDIO, fps)."""
    import av
    import torch

    frames = []
    with av.open(str(media_dir / "demo1_video.mp4")) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        count = int(round(CLIP_SECONDS * fps))
        for frame in container.decode(stream):
            frames.append(frame.reformat(width=frame.width // CLIP_SCALE, height=frame.height // CLIP_SCALE,
                                         format="rgb24").to_ndarray())
            if len(frames) == count:
                break
    clip = np.stack(frames)
    path = tmp_path_factory.mktemp("clip") / "short.mp4"
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        stream.options = {"crf": "12"}
        for image in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    images = torch.from_numpy(clip).to(torch.float32) / 255.0
    return images, path, speech(media_dir, CLIP_SECONDS), fps


def speech(media_dir: Path, seconds: float) -> dict:
    """The first ``seconds`` of demo1's speech as ComfyUI AUDIO: {"waveform": (1, C, S), "sample_rate"}."""
    import soundfile
    import torch

    samples, rate = soundfile.read(str(media_dir / "demo1_audio.wav"), dtype="float32", always_2d=True)
    samples = samples[: int(round(seconds * rate))].T  # (channels, samples)
    return {"waveform": torch.from_numpy(np.ascontiguousarray(samples))[None], "sample_rate": rate}


@pytest.fixture
def node_env(tiny_checkpoints, monkeypatch, tmp_path):
    _require_dlib()
    folder, config = tiny_checkpoints
    output = tmp_path / "output"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("LATENTSYNC_CHECKPOINTS", str(folder))
    monkeypatch.setenv("LATENTSYNC_UNET_CONFIG", str(config))
    monkeypatch.setenv("LATENTSYNC_OUTPUT_DIR", str(output))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # every temp file of the run lands here
    return output, scratch


def run_node(package, images, audio, fps, **overrides):
    node = package.NODE_CLASS_MAPPINGS["LatentSyncMemsafe"]()
    args = dict(images=images, audio=audio, seed=1247, lips_expression=1.5, inference_steps=STEPS,
                attention_mode="standard", optimization_level="balanced", vram_fraction=0.0,
                memory_mode="balanced", output_mode="frames", enable_disk_cache=False, fps=fps,
                face_detector="dlib")
    args.update(overrides)
    return node.lipsync(**args)


def probe(path: Path) -> tuple[int, int, int, bool]:
    """(frames, width, height, has audio) of a written video, counted by decoding."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, stream.width, stream.height, bool(container.streams.audio)


def expected_frames(audio, fps) -> int:
    return int(audio["waveform"].shape[-1] / audio["sample_rate"] * fps)


def test_frames_mode_end_to_end(package, node_env, short_clip):
    output, scratch = node_env
    images, _, audio, fps = short_clip
    out = run_node(package, images, audio, fps, output_mode="frames")
    frames, audio_out, path = out["result"]
    count = expected_frames(audio, fps)
    assert abs(frames.shape[0] - count) <= 1
    assert frames.shape[0] == images.shape[0]  # the audio is as long as the clip
    assert tuple(frames.shape[1:]) == tuple(images.shape[1:]) and str(frames.dtype) == "torch.float32"
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    assert audio_out is audio
    path = Path(path)
    assert path.is_file() and (output / "latentsync").resolve() in path.resolve().parents
    assert probe(path) == (frames.shape[0], images.shape[2], images.shape[1], True)
    assert out["ui"] == {"images": [{"filename": path.name, "subfolder": "latentsync", "type": "output"}],
                         "animated": (True,)}
    assert list(scratch.iterdir()) == []


def test_video_file_mode_and_video_path_streaming(package, node_env, short_clip):
    output, scratch = node_env
    images, clip_path, audio, fps = short_clip
    dummy = images[:1, :8, :8]  # ignored when video_path is set
    out = run_node(package, dummy, audio, 7.0, output_mode="video_file", video_path=str(clip_path),
                   memory_mode="aggressive")
    preview, _, path = out["result"]
    assert tuple(preview.shape) == (1, *images.shape[1:])  # one preview frame, the clip's size
    frames, width, height, has_audio = probe(Path(path))
    assert abs(frames - expected_frames(audio, fps)) <= 1  # the file's own 25 fps, not the fps input
    assert (width, height, has_audio) == (images.shape[2], images.shape[1], True)
    assert [p.name for p in (output / "latentsync").iterdir()] == [Path(path).name]
    assert list(scratch.iterdir()) == []


def test_cancelled_run_leaves_nothing(package, node_module, node_env, short_clip, media_dir, monkeypatch):
    """Cancel after the first progress update. The audio outlasts the clip (ping-pong: frames are aligned and
    kept for revisiting first), so the run is cancelled mid-way with a partial output and caches in flight."""
    output, scratch = node_env
    images, _, _, fps = short_clip
    audio = speech(media_dir, 2 * CLIP_SECONDS)
    updates = []
    original = node_module._Progress.__call__

    def progress(self, stage, done, total):
        updates.append((stage, done, total))
        original(self, stage, done, total)

    monkeypatch.setattr(node_module._Progress, "__call__", progress)
    monkeypatch.setattr(node_module, "_interrupted", lambda: bool(updates))
    cancelled = library("pipeline").Cancelled
    with pytest.raises(cancelled):
        run_node(package, images, audio, fps, output_mode="frames")
    assert updates
    leftovers = [p for p in output.rglob("*") if p.is_file()] if output.exists() else []
    assert leftovers == []
    assert list(scratch.iterdir()) == []


def test_deepcache_is_an_opt_in_that_changes_only_a_little(package, node_env, short_clip):
    """deepcache=True reaches the denoiser: with 4 steps, steps 1-3 reuse deep features, so the mouth differs
    slightly from the exact run while the frames keep their shape."""
    images, _, audio, fps = short_clip
    exact = run_node(package, images, audio, fps, inference_steps=4)["result"][0]
    cached = run_node(package, images, audio, fps, inference_steps=4, deepcache=True)["result"][0]
    assert cached.shape == exact.shape
    difference = (cached - exact).abs()
    assert difference.max() > 0  # not silently ignored
    assert difference.mean() < 0.01  # an approximation of the same result, not something else
