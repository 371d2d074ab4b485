"""The node pack inside a real ComfyUI server, driven over its HTTP API as the browser drives it.

Skipped unless COMFYUI_DIR points to a ComfyUI checkout (a folder with main.py): ComfyUI is not on the package index,
so CI has none (the nodes' ComfyUI branches run in CI through tests/test_node.py). COMFYUI_PYTHON names the python
that has ComfyUI's requirements and this package's (default: this interpreter).

Covered: the shipped UI workflow is what the API graph says; LoadVideo -> loader -> lip sync -> SaveVideo gives a
saved file with the audio's length and sound and the workflow embedded; the speech placed inside the video with
the mouth mask previewed; three queued prompts with different seeds;
POST /free, then the same prompt again gives identical pixels; POST /interrupt stops the node and leaves no file;
bad inputs fail with one sentence each.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from comfyui_server import PACK_NAME, REPO, comfyui_server, get, post, ui_to_api
from helpers import make_audio, write_clip

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
TEMPLATE = "Lip sync a talking-head video to speech (LatentSync)"  # its title in Browse Templates
WORKFLOW = REPO / "example_workflows" / f"{TEMPLATE}.json"
API_GRAPH = Path(__file__).resolve().parent / "workflows" / "lipsync_api.json"
CLIP_SECONDS = 0.64  # 16 frames: one UNet chunk

pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
    reason="set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to a python with its requirements and this "
           "package's) to run the real-ComfyUI integration test")


def _decode(path: Path) -> tuple[np.ndarray, dict, float | None]:
    import av

    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        audio = container.streams.audio
        seconds = float(audio[0].duration * audio[0].time_base) if audio and audio[0].duration else None
        return frames, dict(container.metadata), seconds


def _levels(path: Path) -> list[float]:
    """The RMS level of each channel of a file's sound, in dB of full scale."""
    import av

    with av.open(str(path)) as container:
        sound = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=-1)  # (channels, samples)
    return [float(20 * np.log10(np.sqrt(np.mean(channel.astype(np.float64) ** 2)) + 1e-12)) for channel in sound]


def _saved(entry: dict, base: Path) -> Path:
    save_id = next(key for key, node in entry["prompt"][2].items() if node["class_type"] == "SaveVideo")
    files = entry["outputs"][save_id]["images"]
    assert len(files) == 1 and files[0]["type"] == "output", files
    return base / "output" / files[0]["subfolder"] / files[0]["filename"]


def _error(entry: dict) -> str:
    events = dict(entry["status"]["messages"])
    assert entry["status"]["status_str"] == "error" and "execution_error" in events, entry["status"]
    return events["execution_error"]["exception_message"].strip()


def test_nodes_in_a_real_comfyui_server(tmp_path, media_dir):
    from latentsync.face.detectors import DlibDetector
    from latentsync.tools.make_tiny_checkpoints import make_tiny_checkpoints

    ok, reason = DlibDetector.available()
    if not ok:
        pytest.skip(f"the offline dlib face detector is not usable here: {reason}")
    base = tmp_path / "comfy-base"
    (base / "input").mkdir(parents=True)
    tiny = tmp_path / "tiny-checkpoints"
    config = make_tiny_checkpoints(tiny)
    video = write_clip(media_dir, base / "input", "latentsync_test_clip.mp4", CLIP_SECONDS, scale=2).name
    speech = make_audio(media_dir, base / "input", CLIP_SECONDS, "latentsync_test_speech.wav").name
    long_speech = make_audio(media_dir, base / "input", 8 * CLIP_SECONDS, "latentsync_test_speech_long.wav").name
    too_short = make_audio(media_dir, base / "input", 0.02, "latentsync_test_blip.wav").name
    env = {"LATENTSYNC_CHECKPOINTS": str(tiny), "LATENTSYNC_UNET_CONFIG": str(config), "HF_HUB_OFFLINE": "1"}
    timings = {}
    with comfyui_server(COMFYUI_DIR, base, env, os.environ.get("COMFYUI_PYTHON")) as server:
        object_info = get(f"{server.url}/object_info", timeout=60)
        failed = [line for line in server.log(10 ** 6).splitlines() if "IMPORT FAILED" in line]
        assert not any(PACK_NAME in line for line in failed), server.log()
        assert {"LoadVideo", "LoadAudio", "SaveVideo", "GetVideoComponents"} <= set(object_info), failed
        assert object_info["LatentSyncLipSync"]["display_name"] == "Lip Sync, Talking Head Dubbing (LatentSync)"
        assert object_info["LatentSyncModelLoader"]["display_name"] == "LatentSync Model Loader"
        assert object_info["LatentSyncLipSync"]["output"] == ["VIDEO", "AUDIO", "IMAGE", "MASK"]

        # ComfyUI lists the template (Browse Templates) and serves it with its thumbnail
        assert get(f"{server.url}/workflow_templates") == {PACK_NAME: [TEMPLATE]}
        served = f"{server.url}/api/workflow_templates/{PACK_NAME}/{urllib.parse.quote(TEMPLATE)}"
        assert get(f"{served}.json") == json.loads(WORKFLOW.read_text())
        with urllib.request.urlopen(f"{served}.jpg", timeout=10) as thumbnail:
            assert thumbnail.status == 200 and thumbnail.read(3) == b"\xff\xd8\xff"

        # the shipped UI workflow opens as the graph the API file describes
        workflow = json.loads(WORKFLOW.read_text())
        shipped = json.loads(API_GRAPH.read_text())
        assert ui_to_api(workflow, object_info) == {k: {"class_type": v["class_type"], "inputs": v["inputs"]}
                                                    for k, v in shipped.items()}

        prompt = json.loads(json.dumps(shipped))
        by_type = {node["class_type"]: node for node in prompt.values()}
        by_type["LoadVideo"]["inputs"]["file"] = video
        by_type["LoadAudio"]["inputs"]["audio"] = speech
        by_type["LatentSyncLipSync"]["inputs"].update(face_detector="dlib", inference_steps=2,
                                                      attention_mode="standard")

        # LoadVideo -> loader -> lip sync -> SaveVideo: the audio's length and sound, the workflow embedded
        started = time.monotonic()
        entry = server.wait(server.queue(prompt, workflow))
        timings["first_run_s"] = round(time.monotonic() - started, 1)
        assert entry["status"]["status_str"] == "success", (entry["status"], server.log())
        first = _saved(entry, base)
        frames, metadata, sound = _decode(first)
        assert len(frames) == 16 and sound is not None and abs(sound - 16 / 25) < 0.05
        assert json.loads(metadata["workflow"])["nodes"] == workflow["nodes"]
        assert "LatentSyncLipSync" in metadata["prompt"]

        # the same graph again, as the frontend sends it after a run (with the node's own video preview as an input
        # value): the lip-sync comes from ComfyUI's cache. Wiring `frames` then runs it again, with frames.
        lipsync_id = next(key for key, node in prompt.items() if node["class_type"] == "LatentSyncLipSync")
        first_temp = sorted(p.name for p in (base / "temp" / "latentsync").glob("*.mp4"))
        assert len(first_temp) == 1
        previewed = json.loads(json.dumps(prompt))
        previewed[lipsync_id]["inputs"]["video-preview"] = {"params": {"filename": first_temp[0], "type": "temp"}}
        events = dict(server.wait(server.queue(previewed, workflow))["status"]["messages"])
        assert lipsync_id in events["execution_cached"]["nodes"], events
        wired = json.loads(json.dumps(previewed))
        wired["99"] = {"class_type": "PreviewImage", "inputs": {"images": [lipsync_id, 2]}}
        entry = server.wait(server.queue(wired, workflow))
        events = dict(entry["status"]["messages"])
        assert entry["status"]["status_str"] == "success" and lipsync_id not in events["execution_cached"]["nodes"]
        assert len(entry["outputs"]["99"]["images"]) == 16  # every frame, not the blocked output of the cached run
        kept = sorted(p.name for p in (base / "temp" / "latentsync").glob("*.mp4"))
        assert len(kept) == 1 and kept != first_temp  # the node's earlier result left temp/ once replaced

        # dubbing: the speech 0.2 s in (5 frames of the video first), the mouth mask previewed through MaskToImage
        dubbed = json.loads(json.dumps(prompt))
        dubbed[lipsync_id]["inputs"].update(audio_start=0.2, when_video_is_longer="keep", mouth_feather=4)
        dubbed["97"] = {"class_type": "MaskToImage", "inputs": {"mask": [lipsync_id, 3]}}
        dubbed["98"] = {"class_type": "PreviewImage", "inputs": {"images": ["97", 0]}}
        entry = server.wait(server.queue(dubbed, workflow))
        assert entry["status"]["status_str"] == "success", (entry["status"], server.log())
        placed, _, placed_sound = _decode(_saved(entry, base))
        assert len(placed) == 5 + 16 and abs(placed_sound - 21 / 25) < 0.05
        assert np.abs(placed[:5].astype(int) - _decode(base / "input" / video)[0][:5].astype(int)).mean() < 2.0
        assert len(entry["outputs"]["98"]["images"]) == 21  # a mask for every output frame

        # the IMAGE route (Get Video Components -> images and fps; frames out, so ComfyUI's own encoder writes the
        # sound in SaveVideo): the speech as loud as the VIDEO route's (0.3.64's encoder took mono as stereo, 3 dB down)
        imaged = json.loads(json.dumps(prompt))
        load_id = next(key for key, node in prompt.items() if node["class_type"] == "LoadVideo")
        imaged["96"] = {"class_type": "GetVideoComponents", "inputs": {"video": [load_id, 0]}}
        del imaged[lipsync_id]["inputs"]["video"]
        imaged[lipsync_id]["inputs"].update(images=["96", 0], fps=["96", 2], output_mode="frames")
        entry = server.wait(server.queue(imaged, workflow))
        assert entry["status"]["status_str"] == "success", (entry["status"], server.log())
        video_route, image_route = _levels(first), _levels(_saved(entry, base))
        assert abs(max(image_route) - max(video_route)) < 0.5, (video_route, image_route)

        # three prompts queued at once, different seeds: three files, three different results
        ids = []
        for seed in (11, 12, 13):
            by_type["LatentSyncLipSync"]["inputs"]["seed"] = seed
            ids.append(server.queue(json.loads(json.dumps(prompt)), workflow))
        started = time.monotonic()
        batch = [_decode(_saved(server.wait(prompt_id), base))[0] for prompt_id in ids]
        timings["batch_of_3_s"] = round(time.monotonic() - started, 1)
        assert len({_saved(server.wait(i), base) for i in ids}) == 3
        assert all(len(f) == 16 for f in batch)
        assert not np.array_equal(batch[0], batch[1]) and not np.array_equal(batch[1], batch[2])

        # "Free model and node cache", then the first prompt again: reloaded, identical pixels
        assert post(f"{server.url}/free", {"unload_models": True, "free_memory": True})[0] == 200
        time.sleep(3)  # the prompt worker acts on the flag before the next prompt
        by_type["LatentSyncLipSync"]["inputs"]["seed"] = 1247
        again = server.wait(server.queue(prompt, workflow))
        assert "LatentSync" in server.log(10 ** 6) and again["status"]["status_str"] == "success"
        assert np.array_equal(_decode(_saved(again, base))[0], frames)

        # Cancel while the node runs: an interrupted prompt, no new file anywhere
        before = sorted(p.name for p in (base / "output").rglob("*.mp4"))
        temp_before = sorted(p.name for p in (base / "temp").rglob("*") if p.is_file())
        by_type["LoadAudio"]["inputs"]["audio"] = long_speech
        by_type["LatentSyncLipSync"]["inputs"]["seed"] = 99
        prompt_id = server.queue(prompt, workflow)
        deadline = time.monotonic() + 120
        while not server.running(prompt_id):
            assert time.monotonic() < deadline, "the prompt never started"
            time.sleep(0.2)
        time.sleep(4)  # loading, aligning, denoising the first of 8 chunks by now
        interrupted = time.monotonic()
        assert post(f"{server.url}/interrupt", {})[0] == 200
        entry = server.wait(prompt_id)
        timings["interrupt_to_stop_s"] = round(time.monotonic() - interrupted, 1)
        events = dict(entry["status"]["messages"])
        assert "execution_interrupted" in events, entry["status"]
        assert events["execution_interrupted"]["node_type"] == "LatentSyncLipSync"
        assert sorted(p.name for p in (base / "output").rglob("*.mp4")) == before
        assert sorted(p.name for p in (base / "temp").rglob("*") if p.is_file()) == temp_before

        # bad inputs: one sentence each, naming the fix; a wrong graph is refused when queued, before anything runs
        no_video = json.loads(json.dumps(prompt))
        del no_video[lipsync_id]["inputs"]["video"]
        status, answer = post(f"{server.url}/prompt", {"prompt": no_video})
        assert status == 400 and "connect exactly one of `video`" in json.dumps(answer["node_errors"][lipsync_id])
        audio_as_video = json.loads(json.dumps(prompt))
        audio_as_video[lipsync_id]["inputs"]["video"] = audio_as_video[lipsync_id]["inputs"]["audio"]
        status, answer = post(f"{server.url}/prompt", {"prompt": audio_as_video})
        assert status == 400 and "video, received_type(AUDIO) mismatch input_type(VIDEO)" in json.dumps(
            answer["node_errors"])  # ComfyUI's own check of the schema's types
        blip = json.loads(json.dumps(prompt))
        next(n for n in blip.values() if n["class_type"] == "LoadAudio")["inputs"]["audio"] = too_short
        message = _error(server.wait(server.queue(blip)))
        assert "shorter than one video frame" in message and "\n" not in message
        print(f"\nreal ComfyUI integration: {json.dumps(timings)}")
