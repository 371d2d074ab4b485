"""The ComfyUI nodes, loaded the way ComfyUI loads a custom node pack (a package whose name has a dash).

The nodes run on the CPU with the tiny real-format checkpoints (``latentsync.tools.make_tiny_checkpoints``) and the
offline dlib detector, inside a ComfyUI environment: the stand-in of ``tests/comfyui_standin`` (ComfyUI is not on
the package index, so CI has no ComfyUI), or the real modules of a ComfyUI checkout when ``COMFYUI_DIR`` is set.
``tests/test_comfyui_integration.py`` runs them in a real ComfyUI server.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).resolve().parent / "comfyui_standin"
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
PACKAGE_NAME = "latentsync-memsafe"  # a dash: not importable by a plain import statement, as in custom_nodes/
CLIP_SECONDS = 0.64  # 16 frames at 25 fps: one UNet chunk
CLIP_SCALE = 2  # the 1080x1920 demo decoded at half size (540x960): small, and dlib still finds the face
STEPS = 2
COMFY_MODULES = ("folder_paths", "server", "comfy", "comfy_api", "comfy_execution")


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


def library(name: str):
    """A library module as the nodes see it: inside the dashed package, never a top-level ``latentsync``."""
    load_as_comfyui()
    return importlib.import_module(f"{PACKAGE_NAME}.latentsync.{name}")


@pytest.fixture(scope="session")
def comfy_modules():
    """ComfyUI's modules in sys.modules for the session, as ComfyUI has them before it loads a custom node: the
    stand-in, or a real checkout's. The HTTP server is the stand-in's in both cases (a real one is what
    test_comfyui_integration.py runs). The library never looks at them, so the tests after these are unaffected."""
    sys.path.insert(0, COMFYUI_DIR or str(STANDIN))
    if COMFYUI_DIR:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # before model_management decides on a device
    spec = importlib.util.spec_from_file_location("server", STANDIN / "server.py")
    server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(server)
    sys.modules["server"] = server
    server.PromptServer()
    import comfy.model_management
    import comfy.utils
    import folder_paths

    return {"folder_paths": folder_paths, "mm": comfy.model_management, "utils": comfy.utils,
            "server": server.PromptServer.instance}


@pytest.fixture(scope="session")
def package(comfy_modules):
    """The pack loaded as ComfyUI loads it, and its nodes as ComfyUI registers them (comfy_entrypoint)."""
    module = load_as_comfyui()
    extension = asyncio.run(module.comfy_entrypoint())
    module.nodes = {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}
    return module


@pytest.fixture
def comfyui(package, comfy_modules, tmp_path, monkeypatch):
    """ComfyUI's folders private to the test (under tmp_path), its progress bar hooked, the sent texts cleared."""
    base = tmp_path / "comfy-base"
    folder_paths = comfy_modules["folder_paths"]
    if COMFYUI_DIR:
        for folder in ("models", "output", "temp", "input"):
            (base / folder).mkdir(parents=True)
        monkeypatch.delitem(folder_paths.folder_names_and_paths, "latentsync", raising=False)  # earlier tests'
        folder_paths.models_dir = str(base / "models")
        folder_paths.set_output_directory(str(base / "output"))
        folder_paths.set_temp_directory(str(base / "temp"))
        folder_paths.set_input_directory(str(base / "input"))
    else:
        folder_paths.configure(str(base))
    updates = []
    monkeypatch.setattr(comfy_modules["utils"], "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        updates.append((value, total, node_id)))
    comfy_modules["server"].texts.clear()
    try:
        yield {**comfy_modules, "base": base, "updates": updates}
    finally:
        comfy_modules["mm"].unload_all_models()


@pytest.fixture(scope="session")
def nodes(package):
    return package.nodes


def execute(node_class, node_id=None, prompt=None, **inputs):
    """What ComfyUI does to run a V3 node (PREPARE_CLASS_CLONE, whose argument differs between releases): a clone of
    the class holding the hidden inputs, then ``execute``."""
    from comfy_api.latest import io

    clone = type(node_class.__name__, (node_class,), {})
    clone.hidden = io.HiddenHolder.from_dict({io.Hidden.unique_id: node_id, io.Hidden.prompt: prompt})
    return clone.execute(**inputs)


# -- the nodes' surface (no models needed) --------------------------------------------------------------------------


def test_registered_through_comfy_entrypoint_with_ids_names_and_types(package):
    """The ids, input names, output names and types of every earlier release (saved workflows name them)."""
    assert not hasattr(package, "NODE_CLASS_MAPPINGS")  # ComfyUI would then ignore comfy_entrypoint
    assert set(package.nodes) == {"LatentSyncModelLoader", "LatentSyncLipSync"}
    loader, lipsync = package.nodes["LatentSyncModelLoader"], package.nodes["LatentSyncLipSync"]
    assert {k: node.GET_SCHEMA().display_name for k, node in package.nodes.items()} == {
        "LatentSyncModelLoader": "LatentSync Model Loader",
        "LatentSyncLipSync": "Lip Sync, Talking Head Dubbing (LatentSync)"}
    assert tuple(loader.RETURN_TYPES) == ("LATENTSYNC_MODEL",)
    assert tuple(lipsync.RETURN_TYPES) == ("VIDEO", "AUDIO", "IMAGE", "MASK")
    assert tuple(lipsync.RETURN_NAMES) == ("video", "audio", "frames", "mouth_mask")
    assert lipsync.OUTPUT_NODE is True
    inputs = lipsync.INPUT_TYPES()
    assert list(inputs["required"]) == [
        "model", "audio", "seed", "lips_expression", "inference_steps", "attention_mode", "optimization_level",
        "vram_fraction", "memory_mode", "output_mode", "enable_disk_cache"]
    assert list(inputs["optional"]) == [
        "video", "images", "fps", "face", "face_detector", "lip_focus", "deepcache", "compile", "audio_start",
        "when_video_is_longer", "when_audio_is_longer", "mouth_feather", "audio_context", "vram_budget",
        "sync_only_speech", "speech_min_pause", "speech_pad", "speech_blend"]
    for node in (loader, lipsync):
        schema = node.GET_SCHEMA()
        if hasattr(schema, "search_aliases"):  # newer ComfyUI: the search box finds it by these words
            assert {"lip sync", "lipsync", "talking head"} <= set(schema.search_aliases)
        assert len(node.OUTPUT_TOOLTIPS) == len(node.RETURN_TYPES) and all(node.OUTPUT_TOOLTIPS)
        assert node.DESCRIPTION and node.CATEGORY == "LatentSync"


def test_every_input_has_a_tooltip_and_the_schema_defaults(package):
    schema = library("options").RUN
    for node in package.nodes.values():
        inputs = node.INPUT_TYPES()
        json.dumps(inputs)  # ComfyUI serves this as JSON (/object_info)
        for section in ("required", "optional"):
            for name, (kind, spec) in inputs.get(section, {}).items():
                assert spec.get("tooltip"), f"{node.__name__}.{name} has no tooltip"
    inputs = package.nodes["LatentSyncLipSync"].INPUT_TYPES()
    required, optional = inputs["required"], inputs["optional"]
    assert required["seed"][1]["control_after_generate"] is True and required["seed"][1]["default"] == 1247
    assert required["lips_expression"][0] == "FLOAT"
    assert {k: required["lips_expression"][1][k] for k in ("default", "min", "max")} == {
        "default": 1.5, "min": 1.0, "max": 3.0}
    assert (required["inference_steps"][0], required["inference_steps"][1]["default"]) == ("INT", 20)
    assert required["attention_mode"][0] == "COMBO"
    assert required["attention_mode"][1]["options"] == list(schema["attention"].choices)
    assert required["output_mode"][1]["options"] == ["auto", "video_file", "frames"]
    assert (required["deepcache"] if "deepcache" in required else optional["deepcache"])[0] == "BOOLEAN"
    assert optional["video"][0] == "VIDEO" and optional["images"][0] == "IMAGE"
    assert "video_path" not in optional  # no free-text server paths
    assert {name: spec[0] for name, spec in inputs["hidden"].items()} == {
        "unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def test_the_few_widgets_of_every_run_are_in_view_and_the_rest_advanced(package):
    """seed, lips_expression, inference_steps and face stay on the node; the speed, memory and dubbing settings
    carry ComfyUI's ``advanced`` flag (the frontend folds them behind "show advanced inputs")."""
    inputs = package.nodes["LatentSyncLipSync"].INPUT_TYPES()
    widgets = {name: spec for section in ("required", "optional") for name, (kind, spec) in inputs[section].items()
               if kind in ("INT", "FLOAT", "BOOLEAN", "COMBO") and name != "fps"}
    in_view = {name for name, spec in widgets.items() if not spec.get("advanced")}
    assert in_view == {"seed", "lips_expression", "inference_steps", "face"}
    assert {"vram_fraction", "compile", "audio_start", "mouth_feather", "output_mode"} <= set(widgets) - in_view


def test_without_the_v3_schema_one_log_line_and_an_empty_pack(tmp_path):
    """On a ComfyUI without comfy_api.latest (or outside ComfyUI), the pack loads empty with one line saying which
    ComfyUI it needs; importing it loads neither torch nor the library."""
    code = f"""
import importlib.util, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
root = {str(REPO)!r}
spec = importlib.util.spec_from_file_location("my-latentsync-pack", root + "/__init__.py",
                                              submodule_search_locations=[root])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
assert module.NODE_CLASS_MAPPINGS == {{}} and not hasattr(module, "comfy_entrypoint")
assert "torch" not in sys.modules and "diffusers" not in sys.modules
assert not any(name.startswith("my-latentsync-pack.latentsync") for name in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [
        "ERROR LatentSync MEMSAFE needs ComfyUI 0.3.64 or newer (its comfy_api.latest node schema); update ComfyUI "
        "to load the LatentSync nodes"]


def test_loading_the_nodes_loads_no_library_and_imports_it_relatively(tmp_path):
    """Inside ComfyUI (the stand-in here), registering the nodes imports none of the library's heavy modules, and
    the nodes import the library inside the pack, never a top-level ``latentsync`` (two LatentSync packs can
    coexist; the folder name may have dashes)."""
    code = f"""
import asyncio, importlib, importlib.util, sys
sys.path.insert(0, {str(STANDIN)!r})
root = {str(REPO)!r}
spec = importlib.util.spec_from_file_location("my-latentsync-pack", root + "/__init__.py",
                                              submodule_search_locations=[root])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
import server
server.PromptServer()
spec.loader.exec_module(module)
extension = asyncio.run(module.comfy_entrypoint())
assert len(asyncio.run(extension.get_node_list())) == 2
heavy = [name for name in ("diffusers", "whisper", "cv2", "kornia", "my-latentsync-pack.latentsync.pipeline")
         if name in sys.modules]
assert not heavy, heavy
importlib.import_module("my-latentsync-pack.latentsync.pipeline")
assert "latentsync" not in sys.modules, "a top-level latentsync was imported"
assert not any(name.startswith("latentsync.") for name in sys.modules)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_output_wiring_is_read_from_the_prompt(package):
    prompt_module = importlib.import_module(f"{PACKAGE_NAME}.comfyui.prompt")
    prompt = {"5": {"class_type": "LatentSyncLipSync", "inputs": {"seed": 1}},
              "6": {"class_type": "SaveVideo", "inputs": {"video": ["5", 0], "filename_prefix": "x"}},
              "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 2]}}}
    assert prompt_module.output_is_wired(prompt, "5", 2) and prompt_module.output_is_wired(prompt, "5", 0)
    assert not prompt_module.output_is_wired(prompt, "5", 1) and not prompt_module.output_is_wired(prompt, "6", 2)
    assert not prompt_module.output_is_wired(None, "5", 2)


def cache_signature(prompt: dict, node_id: str) -> list:
    """ComfyUI's cache key of a node without links (comfy_execution/caching.py): its class and every input value."""
    node = prompt[node_id]
    return [node["class_type"], *((key, json.dumps(node["inputs"][key])) for key in sorted(node["inputs"]))]


def test_cache_key_holds_only_what_changes_the_result(package, comfyui):
    """After a run the frontend sends the node's own video preview back as an input value, and fps is unused while
    a VIDEO is connected: neither may rerun an unchanged graph. Wiring ``frames`` must: that result had no frames.
    Other nodes' entries are left as they are."""
    import copy

    asyncio.run(package.comfy_entrypoint())  # a second registration, as a reloaded pack would make
    server = comfyui["server"]

    def submitted(prompt: dict) -> dict:
        return server.trigger_on_prompt({"prompt": copy.deepcopy(prompt)})["prompt"]

    node = {"class_type": "LatentSyncLipSync", "inputs": {"seed": 1, "inference_steps": 20, "model": ["1", 0],
                                                          "video": ["2", 0], "fps": 25.0}}
    save = {"class_type": "SaveVideo", "inputs": {"video": ["5", 0], "filename_prefix": "x", "video-preview": 1}}
    graph = {"5": node, "6": save}
    first = submitted(graph)
    previewed = copy.deepcopy(graph)
    previewed["5"]["inputs"]["video-preview"] = {"params": {"filename": "LatentSync_00001_.mp4", "type": "temp"}}
    previewed["5"]["inputs"]["fps"] = 30.0
    assert cache_signature(submitted(previewed), "5") == cache_signature(first, "5")
    wired = copy.deepcopy(graph)
    wired["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 2]}}
    assert cache_signature(submitted(wired), "5") != cache_signature(first, "5")
    assert submitted(wired)["5"]["inputs"]["seed"] == 1 and "video-preview" not in submitted(previewed)["5"]["inputs"]
    assert submitted(graph)["6"] == save  # another node's entry: untouched
    from_images = copy.deepcopy(graph)
    del from_images["5"]["inputs"]["video"]
    from_images["5"]["inputs"]["images"] = ["3", 0]
    changed = copy.deepcopy(from_images)
    changed["5"]["inputs"]["fps"] = 30.0
    assert cache_signature(submitted(changed), "5") != cache_signature(submitted(from_images), "5")
    handlers = [h for h in server.on_prompt_handlers if getattr(h, "latentsync", False)]
    assert len(handlers) == 1  # registered once, however often the pack is registered


# -- end to end with the tiny checkpoints ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    ok, reason = library("face.detectors").DlibDetector.available()
    if not ok:
        pytest.fail(f"the offline dlib face detector (a requirement) is not usable here: {reason}")
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
def node_env(comfyui, tiny_checkpoints, monkeypatch, tmp_path):
    """ComfyUI with the tiny set in an extra ``latentsync`` model folder (as extra_model_paths.yaml adds one)."""
    folder, config = tiny_checkpoints
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    comfyui["folder_paths"].add_model_folder_path("latentsync", str(folder))
    monkeypatch.setenv("LATENTSYNC_UNET_CONFIG", str(config))
    monkeypatch.delenv("LATENTSYNC_CHECKPOINTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # every temp file of the run lands here
    return {**comfyui, "scratch": scratch, "checkpoints": folder}


def load_model(package):
    return execute(package.nodes["LatentSyncModelLoader"], version="1.6 (512 px)", precision="fp32",
                   device="default")[0]


def run_node(package, model, audio, node_id="5", prompt=None, **overrides) -> dict:
    """The lip-sync node run as ComfyUI runs it: {"result": its four outputs, "ui": its preview as sent}."""
    args = dict(model=model, audio=audio, seed=1247, lips_expression=1.5, inference_steps=STEPS,
                attention_mode="standard", optimization_level="balanced", vram_fraction=0.0, memory_mode="balanced",
                output_mode="auto", enable_disk_cache=False, face_detector="dlib")
    args.update(overrides)
    out = execute(package.nodes["LatentSyncLipSync"], node_id, prompt, **args)
    return {"result": out.args, "ui": out.ui.as_dict() if out.ui is not None else {}}


def probe(path: Path) -> tuple[int, int, int, float | None]:
    """(frames, width, height, audio seconds or None) of a written video, counted by decoding."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        audio = container.streams.audio
        seconds = float(audio[0].duration * audio[0].time_base) if audio and audio[0].duration else None
        return count, stream.width, stream.height, seconds


def decode(path: Path) -> np.ndarray:
    from latentsync.video import iter_frame_batches

    return np.concatenate(list(iter_frame_batches(path, 64)))


def test_loader_finds_checkpoints_through_comfyui_model_folders(package, node_env):
    model = load_model(package)
    folders = node_env["folder_paths"].get_folder_paths("latentsync")
    assert folders == [str(node_env["checkpoints"]), str(node_env["base"] / "models" / "latentsync")]
    assert model.models.checkpoints.root == node_env["checkpoints"]
    assert model.patcher is not None and model.patcher.model_size() > 0
    held = {name: module for name, module in model.patcher.model.named_children()}
    assert set(held) == {"unet", "vae", "audio_encoder"}


def test_video_route_streams_the_file_and_returns_a_video(package, node_env, short_clip, monkeypatch):
    """LoadVideo -> loader -> node: the VIDEO is streamed from its file (never decoded whole), the result is a
    VIDEO of a file in ComfyUI's temp folder, with the audio's length and sound; no frames unless wired."""
    from comfy_api.latest import InputImpl

    VideoFromFile = InputImpl.VideoFromFile

    images, clip_path, audio, fps = short_clip

    def whole_decode(self):
        raise AssertionError("the node decoded the whole VIDEO instead of streaming its file")

    monkeypatch.setattr(VideoFromFile, "get_components", whole_decode)
    prompt = {"5": {"class_type": "LatentSyncLipSync", "inputs": {}},
              "6": {"class_type": "SaveVideo", "inputs": {"video": ["5", 0]}}}
    out = run_node(package, load_model(package), audio, prompt=prompt, video=VideoFromFile(str(clip_path)))
    video, audio_out, frames, mouth_mask = out["result"]
    assert audio_out is audio
    assert type(frames).__name__ == "ExecutionBlocker" and "output_mode" in frames.message
    assert type(mouth_mask).__name__ == "ExecutionBlocker" and "connected" in mouth_mask.message
    path = Path(video.get_stream_source())
    temp = Path(node_env["folder_paths"].get_temp_directory()).resolve()
    assert temp / "latentsync" == path.parent
    count, width, height, sound = probe(path)
    assert count == int(CLIP_SECONDS * fps) and (width, height) == (images.shape[2], images.shape[1])
    assert sound is not None and abs(sound - count / fps) < 0.05
    assert out["ui"] == {"images": [{"filename": path.name, "subfolder": "latentsync", "type": "temp"}],
                         "animated": (True,)}
    assert list(node_env["scratch"].iterdir()) == []
    assert list((node_env["base"] / "output").rglob("*.mp4")) == []  # saving is SaveVideo's job


def test_progress_moves_every_denoising_step_with_the_stage_named(package, node_env, short_clip):
    images, _, audio, fps = short_clip
    run_node(package, load_model(package), audio, node_id="9", images=images, fps=fps, output_mode="frames")
    values = [value for value, total, node_id in node_env["updates"] if node_id == "9"]
    frames = images.shape[0]
    # 16 frames, 2 steps: the bar passes half-way (8 of 16 frames) after the first step, before the chunk is done
    assert any(0 < value < frames for value in values) and values[-1] == frames
    texts = [text for node_id, text in node_env["server"].texts if node_id == "9"]
    assert any(text.startswith("lip-sync") for text in texts)
    # the start is never silent: each stage before the first denoising step names itself, in order
    stages = [text.split(":")[0] for text in texts]
    firsts = [stages.index(name) for name in ("models to the device", "read video and audio", "audio features",
                                               "detect faces", "lip-sync")]
    assert firsts == sorted(firsts), stages
    assert texts[-1] == f"done: {frames} frames"  # what the node keeps showing


def test_stage_text_says_the_time_left_from_the_stage_s_first_step(package, comfyui, monkeypatch):
    progress = importlib.import_module(f"{PACKAGE_NAME}.comfyui.progress")
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    bar = progress.NodeProgress("7")
    bar("lip-sync", 0, 80)
    clock[0] += 30.0
    bar("lip-sync", 8, 80)  # 30 s for 8 of 80: 72 left at the same pace
    clock[0] += 1.0
    bar("write", 0, 10)
    texts = [text for node_id, text in comfyui["server"].texts if node_id == "7"]
    assert texts == ["lip-sync: 0/80", "lip-sync: 8/80, 4 min left", "write: 0/10"]
    assert [progress.duration(s) for s in (40, 150, 3900)] == ["40 s", "2 min", "1 h 5 min"]


def test_warnings_stay_on_the_node(package, node_env, short_clip, caplog):
    """A speech shorter than the model's 16 frames (and, its first 50 ms, silent) and an attention kernel that is
    not installed: the run goes on, and the node's last text says all three (cut to the node's width)."""
    pytest.importorskip("torch")
    import importlib.util as util

    if util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed here: its fallback cannot be seen")
    images, _, audio, fps = short_clip
    blip = {"waveform": audio["waveform"][..., : audio["sample_rate"] // 20], "sample_rate": audio["sample_rate"]}
    out = run_node(package, load_model(package), blip, node_id="11", images=images, fps=fps, output_mode="frames",
                   attention_mode="xformers")
    assert out["result"][2].shape[0] == 1
    last = [text for node_id, text in node_env["server"].texts if node_id == "11"][-1]
    assert last == "done: 1 frame\nwarning: speech too short; little or no speech;..."  # the two lines it shows
    logged = [r.getMessage() for r in caplog.records if r.name == "latentsync.comfyui" and r.levelname == "WARNING"]
    assert [line.split(":")[1].strip() for line in logged] == ["speech too short", "little or no speech",
                                                               "xformers unavailable"]
    assert "give at least 0.64 s of speech" in logged[0] and "runs instead" in logged[2]
    assert "hears speech in 0% of the audio" in logged[1]


def test_errors_name_the_file_as_the_user_chose_it(package, node_env, short_clip):
    """A corrupt file in ComfyUI's input folder: the sentence names it as Load Video lists it, without the
    server's path or FFmpeg's error number."""
    from comfy_api.latest import InputImpl

    VideoFromFile = InputImpl.VideoFromFile

    _, _, audio, _ = short_clip
    folder = Path(node_env["folder_paths"].get_input_directory()) / "clips"
    folder.mkdir(parents=True)
    (folder / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError) as error:
        run_node(package, load_model(package), audio, video=VideoFromFile(str(folder / "broken.mp4")))
    message = str(error.value)
    assert message.startswith("cannot read clips/broken.mp4 as media (Invalid data found when processing input)")
    assert str(folder) not in message and "Errno" not in message


def test_an_earlier_result_of_the_node_is_removed_once_replaced(package, comfyui, monkeypatch, tmp_path):
    """ComfyUI empties temp/ only when it restarts: each node keeps its latest result file there, no more (unless an
    LRU cache may serve an older one again)."""
    import types

    media = importlib.import_module(f"{PACKAGE_NAME}.comfyui.media")
    results = media.NodeResults()
    paths = [tmp_path / f"{i}.mp4" for i in range(4)]
    for path in paths:
        path.write_bytes(b"video")
    results.keep("5", paths[0])
    results.keep("6", paths[1])  # another node's result stays
    results.keep("5", paths[2])
    assert [path.exists() for path in paths[:3]] == [False, True, True]
    monkeypatch.setattr(media, "args", types.SimpleNamespace(cache_lru=10))  # ComfyUI started with --cache-lru 10
    results.keep("5", paths[3])
    assert paths[2].exists() and paths[3].exists()


def test_images_route_frames_mode_writes_no_file(package, node_env, short_clip):
    import torch

    images, _, audio, fps = short_clip
    out = run_node(package, load_model(package), audio, images=images, fps=fps, output_mode="frames")
    video, _, frames, _ = out["result"]
    assert tuple(frames.shape) == tuple(images.shape) and str(frames.dtype) == "torch.float32"
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    components = video.get_components()  # the VIDEO output is made from the frames, with the audio
    assert components.images is frames and float(components.frame_rate) == fps
    assert audio["waveform"].shape[1] == 1 and components.audio["sample_rate"] == audio["sample_rate"]
    assert torch.equal(components.audio["waveform"], audio["waveform"].repeat(1, 2, 1))  # mono speech: two channels
    assert out["ui"] == {}
    assert [p for p in node_env["base"].rglob("*.mp4")] == []


def test_auto_mode_returns_frames_when_wired_equal_to_the_video(package, node_env, short_clip):
    from comfy_api.latest import InputImpl

    VideoFromFile = InputImpl.VideoFromFile

    _, clip_path, audio, _ = short_clip
    prompt = {"5": {"class_type": "LatentSyncLipSync", "inputs": {}},
              "8": {"class_type": "PreviewImage", "inputs": {"images": ["5", 2]}}}
    model = load_model(package)
    video, _, frames, _ = run_node(package, model, audio, prompt=prompt, video=VideoFromFile(str(clip_path)))["result"]
    written = decode(Path(video.get_stream_source()))
    assert frames.shape[0] == len(written)
    # the same frames, up to the encoder's loss
    assert np.abs(frames.numpy() * 255 - written.astype(np.float32)).mean() < 3.0


def test_dubbing_widgets_place_the_speech_and_the_mouth_mask_output(package, node_env, short_clip):
    """audio_start and keep: the video's own frames around the speech, the AUDIO output is the speech after that
    much silence padded to the video's end, and a wired mouth_mask is a MASK of every frame (zero where nothing
    was generated)."""
    images, _, audio, fps = short_clip
    prompt = {"5": {"class_type": "LatentSyncLipSync", "inputs": {}},
              "9": {"class_type": "PreviewImage", "inputs": {"images": ["5", 3]}}}
    assert images.shape[0] > 12
    cut = round(0.2 * fps)
    out = run_node(package, load_model(package), audio, images=images, fps=fps, output_mode="frames", prompt=prompt,
                   audio_start=0.2, when_video_is_longer="keep", mouth_feather=4, audio_context="seamless")
    video, sound, frames, mouth_mask = out["result"]
    count = max(images.shape[0], cut + int(audio["waveform"].shape[-1] / audio["sample_rate"] * fps))
    assert frames.shape[0] == count and tuple(mouth_mask.shape) == (count, *images.shape[1:3])
    assert str(mouth_mask.dtype) == "torch.float32" and float(mouth_mask.max()) == 1.0
    assert float(mouth_mask[:cut].abs().max()) == 0.0  # before the speech: nothing generated
    rate = audio["sample_rate"]
    lead = round(cut / fps * rate)
    assert sound["sample_rate"] == rate and sound["waveform"].shape[-1] >= round(count / fps * rate)
    assert float(sound["waveform"][..., :lead].abs().max()) == 0.0
    assert np.array_equal(sound["waveform"][..., lead:lead + audio["waveform"].shape[-1]].numpy(),
                          audio["waveform"].numpy())
    assert np.array_equal(video.get_components().audio["waveform"].numpy(), sound["waveform"].repeat(1, 2, 1).numpy())


def test_frames_and_mask_outputs_that_would_not_fit_in_ram_fail_before_a_frame_is_made(package, node_env,
                                                                                       short_clip, monkeypatch):
    import types

    images, _, audio, fps = short_clip
    model = load_model(package)
    memory = library("memory_limiter")
    ram = types.SimpleNamespace(available=10 ** 6, total=2 ** 36)  # 64 GB, 1 MB of it free
    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: ram)
    prompt = {"5": {"class_type": "LatentSyncLipSync", "inputs": {}},
              "9": {"class_type": "MaskToImage", "inputs": {"mask": ["5", 3]}}}
    with pytest.raises(MemoryError, match="the mouth_mask output would take .* disconnect mouth_mask and use the "
                                          "video output$"):
        run_node(package, model, audio, images=images, fps=fps, prompt=prompt)
    with pytest.raises(MemoryError, match="the frames and mouth_mask output would take"):
        run_node(package, model, audio, images=images, fps=fps, prompt=prompt, output_mode="frames")
    assert [p for p in node_env["base"].rglob("*.mp4")] == []  # nothing ran


def test_exactly_one_of_video_and_images(package, node_env, short_clip):
    from comfy_api.latest import InputImpl

    VideoFromFile = InputImpl.VideoFromFile

    images, clip_path, audio, fps = short_clip
    model = load_model(package)
    for extra in ({}, {"video": VideoFromFile(str(clip_path)), "images": images}):
        with pytest.raises(ValueError, match="exactly one of `video`") as error:
            run_node(package, model, audio, fps=fps, **extra)
        assert "\n" not in str(error.value)
    # and when the graph is queued, before anything runs: ComfyUI passes each connected input the function names
    # as None (its value does not exist yet) and leaves the others out
    node = package.nodes["LatentSyncLipSync"]
    for connected in ({}, {"video": None, "images": None}):
        assert "exactly one of `video`" in node.validate_inputs(model=None, **connected)
    assert node.validate_inputs(model=None, video=None) is True
    assert node.validate_inputs(model=None, images=None) is True


def test_interrupt_stops_within_a_step_and_leaves_nothing(package, node_env, short_clip, media_dir, monkeypatch):
    """Cancel as soon as the run reports progress; the audio outlasts the clip (frames and faces are cached for
    revisiting), so caches and a partial output are in flight when it stops."""
    images, _, _, fps = short_clip
    model = load_model(package)
    node_env["updates"].clear()
    mm = node_env["mm"]
    original, pressed = mm.processing_interrupted, []

    def cancel_pressed_after_first_progress():  # the user presses Cancel once the bar has moved
        if node_env["updates"] and not pressed:
            pressed.append(True)
            mm.interrupt_current_processing(True)
        return original()

    monkeypatch.setattr(mm, "processing_interrupted", cancel_pressed_after_first_progress)
    with pytest.raises(mm.InterruptProcessingException):
        run_node(package, model, speech(media_dir, 2 * CLIP_SECONDS), images=images, fps=fps,
                 output_mode="video_file")
    assert not mm.processing_interrupted()  # the flag was consumed, as ComfyUI's own nodes do
    last = node_env["server"].texts[-1][1]  # not a stale stage: what happened, and where
    assert re.fullmatch(r"cancelled at [a-z -]+ \d+/\d+", last), last
    assert [p for p in node_env["base"].rglob("*") if p.is_file()] == []
    assert list(node_env["scratch"].iterdir()) == []


def test_per_run_choices_never_reload_weights_and_free_releases_them(package, node_env, short_clip):
    """Attention kernel and face detector change per run on the same weights; unloading moves the weights to the
    offload device; dropping the loader's output (what POST /free does to ComfyUI's cache) frees them; a new load
    reproduces the pixels exactly."""
    images, _, audio, fps = short_clip
    model = load_model(package)
    unet = model.models.unet
    pointers = [p.data_ptr() for p in unet.parameters()]
    first = run_node(package, model, audio, images=images, fps=fps, output_mode="frames")["result"][2]
    second = run_node(package, model, audio, images=images, fps=fps, output_mode="frames", attention_mode="flash",
                      seed=1247)["result"][2]
    assert model.models.unet is unet and [p.data_ptr() for p in unet.parameters()] == pointers
    assert float((first - second).abs().max()) < 2 / 255  # same result, another kernel
    mm = node_env["mm"]
    assert any(loaded.model is model.patcher for loaded in mm.current_loaded_models)
    mm.unload_all_models()  # "Unload models"
    assert all(p.device.type == "cpu" for p in unet.parameters())
    alive = weakref.ref(model.models)
    del model, unet, first
    gc.collect()
    assert alive() is None  # nothing but ComfyUI's cache held the weights
    again = run_node(package, load_model(package), audio, images=images, fps=fps, output_mode="frames",
                     attention_mode="flash")["result"][2]
    assert np.array_equal(again.numpy(), second.numpy())


def test_auto_detector_without_face_models_uses_dlib_and_never_downloads(package, node_env, short_clip,
                                                                          monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("a run tried to download something")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    images, _, audio, fps = short_clip
    out = run_node(package, load_model(package), audio, images=images, fps=fps, output_mode="frames",
                   face_detector="auto")
    assert out["result"][2].shape[0] == images.shape[0]
    assert not (node_env["checkpoints"] / "auxiliary").exists()


def test_missing_checkpoint_is_one_sentence_with_the_download_command(package, comfyui, monkeypatch, tmp_path):
    monkeypatch.delenv("LATENTSYNC_CHECKPOINTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    comfyui["folder_paths"].add_model_folder_path("latentsync", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as error:
        load_model(package)
    message = str(error.value)
    # a command that runs from ComfyUI's folder with ComfyUI's Python (tests/test_checkpoints.py runs one)
    assert message.endswith(f'download it with: cd "{REPO}" && "{sys.executable}" -m latentsync.checkpoints download '
                            f'--version 1.6 --dir "{tmp_path / "nowhere"}"') and "\n" not in message
    assert not (tmp_path / "nowhere").exists()


def test_deepcache_is_an_opt_in_that_changes_only_a_little(package, node_env, short_clip):
    """deepcache reaches the denoiser: with 4 steps, steps 1-3 reuse deep features, so the mouth differs slightly
    from the exact run while the frames keep their shape."""
    images, _, audio, fps = short_clip
    model = load_model(package)
    exact = run_node(package, model, audio, images=images, fps=fps, output_mode="frames", inference_steps=4)
    cached = run_node(package, model, audio, images=images, fps=fps, output_mode="frames", inference_steps=4,
                      deepcache=True)
    exact, cached = exact["result"][2], cached["result"][2]
    assert cached.shape == exact.shape
    difference = (cached - exact).abs()
    assert difference.max() > 0  # not silently ignored
    assert difference.mean() < 0.01  # an approximation of the same result, not something else


def test_results_go_to_numbered_files_inside_their_folder(package, comfyui):
    media = importlib.import_module(f"{PACKAGE_NAME}.comfyui.media")
    temp = Path(comfyui["folder_paths"].get_temp_directory()).resolve()
    first, name, subfolder = media.new_video_path()
    assert (first.parent, name, subfolder) == (temp / "latentsync", "LatentSync_00001_.mp4", "latentsync")
    first.write_bytes(b"x")
    second, name, _ = media.new_video_path()
    assert name == "LatentSync_00002_.mp4" and second.parent == first.parent


def test_face_choice_reaches_the_pipeline(package, node_env, short_clip):
    """Two faces side by side (the clip beside its mirror image): face 1 changes the left one only."""
    import torch

    images, _, audio, fps = short_clip
    two = torch.cat([images, images.flip(2)], dim=2)
    frames = run_node(package, load_model(package), audio, images=two, fps=fps, output_mode="frames",
                      face=1)["result"][2]
    width = images.shape[2]
    assert torch.equal(frames[:, :, width:], two[:, :, width:])  # the right face: untouched
    assert not torch.equal(frames[:, :, :width], two[:, :, :width])


def test_sync_only_speech_leaves_the_silent_frames_as_they_came(package, node_env, short_clip, media_dir):
    """A dubbed track with 0.64 s of silence first: those frames come out as they went in (no model call), the
    speech after them is synced."""
    import torch

    images, _, _, fps = short_clip
    images = torch.cat([images, images.flip(0)])  # 32 frames
    words = speech(media_dir, 1.14)["waveform"][..., 8000:]  # demo1's 0.5..1.14 s: speech throughout
    track = {"waveform": torch.cat([torch.zeros_like(words), words], dim=-1), "sample_rate": 16000}
    out = run_node(package, load_model(package), track, images=images, fps=fps, output_mode="frames",
                   sync_only_speech=True, when_video_is_longer="keep")
    frames = out["result"][2]
    assert frames.shape == images.shape
    assert torch.equal(frames[:8], images[:8])  # silence (less the 0.2 s pad before the speech): the input's
    assert not torch.equal(frames[-8:], images[-8:])  # the speech: synced
