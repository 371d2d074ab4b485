"""The node pack inside a real ComfyUI server, driven over its HTTP API with the shipped example workflow.

Skipped unless COMFYUI_DIR points to a ComfyUI checkout (a folder with main.py). COMFYUI_PYTHON names the
python that has ComfyUI's requirements and this package's (default: this interpreter).

The server runs on the CPU on a free loopback port, with a private base directory (custom_nodes, input, output,
temp, user) in a temp folder, so the checkout is not written to: this repository is symlinked into its
custom_nodes under a name with a dash, the tiny checkpoints are pointed at with LATENTSYNC_CHECKPOINTS /
LATENTSYNC_UNET_CONFIG, and a 0.64 s clip of the demo media is put in its input folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from test_node import CLIP_SCALE, CLIP_SECONDS, REPO, library

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
PACK_NAME = "ComfyUI-LatentSync-MEMSAFE"  # dashes, as a git clone into custom_nodes would be named
WORKFLOW = REPO / "example_workflows" / "latentsync_memsafe.json"
API_WORKFLOW = REPO / "example_workflows" / "latentsync_memsafe_api.json"
STARTUP_SECONDS = 300
RUN_SECONDS = 900
LONG_AUDIO = "latentsync_test_speech_long.wav"  # 5 UNet chunks (ping-pong over the clip): room to interrupt

pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
    reason="set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to a python with its requirements and this "
           "package's) to run the real-ComfyUI integration test")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _post(url: str, payload: dict, timeout: float = 30):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _write_media(folder: Path, media: Path) -> tuple[str, str, str]:
    """A short, half-size copy of demo1's video, the same length of demo1's speech, and a 5x longer speech."""
    import av
    import soundfile

    video_name, audio_name = "latentsync_test_clip.mp4", "latentsync_test_speech.wav"
    with av.open(str(media / "demo1_video.mp4")) as source, av.open(str(folder / video_name), mode="w") as out:
        stream = source.streams.video[0]
        fps = int(round(float(stream.average_rate)))
        encoder = out.add_stream("libx264", rate=fps)
        encoder.width, encoder.height = stream.width // CLIP_SCALE, stream.height // CLIP_SCALE
        encoder.pix_fmt = "yuv420p"
        count = int(round(CLIP_SECONDS * fps))
        for index, frame in enumerate(source.decode(stream)):
            if index == count:
                break
            image = frame.reformat(width=encoder.width, height=encoder.height, format="rgb24").to_ndarray()
            for packet in encoder.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in encoder.encode():
            out.mux(packet)
    samples, rate = soundfile.read(str(media / "demo1_audio.wav"), dtype="float32")
    soundfile.write(str(folder / audio_name), samples[: int(CLIP_SECONDS * rate)], rate)
    soundfile.write(str(folder / LONG_AUDIO), samples[: int(5 * CLIP_SECONDS * rate)], rate)
    return video_name, audio_name, LONG_AUDIO


def _widget_names(spec: dict) -> list[str]:
    """The widget inputs of a node (from /object_info), in the order the frontend stores widgets_values."""
    names = []
    for section in ("required", "optional"):
        for name, entry in spec["input"].get(section, {}).items():
            kind = entry[0]
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                names.append(name)
                options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
                if kind == "INT" and (name in ("seed", "noise_seed") or options.get("control_after_generate")):
                    names.append(None)  # the "control after generate" widget's value
    return names


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """What the ComfyUI frontend does on Queue: the UI-format graph -> the API-format prompt of POST /prompt."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        spec = object_info[node["type"]]
        inputs = {}
        values = list(node.get("widgets_values") or [])
        for name, value in zip(_widget_names(spec), values):
            if name is not None:
                inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, source, source_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(source), source_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def _run_prompt(url: str, prompt: dict, server, log_path: Path) -> tuple[dict, float]:
    """POST /prompt, poll /history/<id> until it finished (bounded); the history entry and the seconds taken."""
    status, answer = _post(f"{url}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert status == 200 and not answer.get("node_errors"), answer
    prompt_id = answer["prompt_id"]
    queued = time.monotonic()
    while time.monotonic() - queued < RUN_SECONDS:
        entry = _get(f"{url}/history/{prompt_id}").get(prompt_id)
        state = (entry or {}).get("status", {})
        if state.get("completed") or state.get("status_str") == "error":
            assert state["status_str"] == "success", (state, log_path.read_text(errors="replace")[-6000:])
            return entry, round(time.monotonic() - queued, 1)
        if server.poll() is not None:
            pytest.fail(f"ComfyUI died during the run:\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(1)
    pytest.fail(f"no result in {RUN_SECONDS} s:\n{log_path.read_text(errors='replace')[-4000:]}")


def _probe(path: Path) -> tuple[int, bool]:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0])), bool(container.streams.audio)


def test_example_workflow_in_real_comfyui(tmp_path, media_dir):
    ok, reason = library("face.detectors").DlibDetector.available()
    if not ok:
        pytest.skip(f"the offline dlib face detector is not usable here: {reason}")
    base = tmp_path / "comfy-base"
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models/latentsync"):
        (base / sub).mkdir(parents=True)
    (base / "custom_nodes" / PACK_NAME).symlink_to(REPO, target_is_directory=True)
    checkpoints = tmp_path / "tiny-checkpoints"
    config = library("tools.make_tiny_checkpoints").make_tiny_checkpoints(checkpoints)
    video_name, audio_name, long_audio = _write_media(base / "input", media_dir)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LATENTSYNC_CHECKPOINTS": str(checkpoints), "LATENTSYNC_UNET_CONFIG": str(config),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "comfyui.log"
    command = [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), "--user-directory", str(base / "user"),
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=COMFYUI_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    timings = {}
    try:
        object_info = None
        while time.monotonic() - started < STARTUP_SECONDS:
            if server.poll() is not None:
                pytest.fail(f"ComfyUI exited with {server.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                object_info = _get(f"{url}/object_info", timeout=30)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(1)
        assert object_info is not None, \
            f"ComfyUI did not start in {STARTUP_SECONDS} s:\n{log_path.read_text()[-4000:]}"
        timings["startup_s"] = round(time.monotonic() - started, 1)
        server_log = log_path.read_text(errors="replace")
        assert "IMPORT FAILED" not in server_log, server_log[-4000:]
        assert "LatentSyncMemsafe" in object_info, f"the node pack did not load:\n{server_log[-4000:]}"
        assert object_info["LatentSyncMemsafe"]["display_name"] == "🎬 LatentSync 1.6 (MEMSAFE)"

        # the UI workflow and the shipped API prompt are the same graph
        workflow = json.loads(WORKFLOW.read_text())
        shipped = json.loads(API_WORKFLOW.read_text())
        converted = ui_to_api(workflow, object_info)
        assert converted == {key: {"class_type": node["class_type"], "inputs": node["inputs"]}
                             for key, node in shipped.items()}

        prompt = json.loads(json.dumps(shipped))
        by_type = {node["class_type"]: node for node in prompt.values()}
        by_type["LoadVideo"]["inputs"]["file"] = video_name
        by_type["LoadAudio"]["inputs"]["audio"] = audio_name
        by_type["LatentSyncMemsafe"]["inputs"].update(face_detector="dlib", inference_steps=2,
                                                      attention_mode="standard")
        entry, timings["run_s"] = _run_prompt(url, prompt, server, log_path)

        node_id = next(key for key, node in prompt.items() if node["class_type"] == "LatentSyncMemsafe")
        saved = entry["outputs"][node_id]["images"]
        assert len(saved) == 1 and saved[0]["type"] == "output" and saved[0]["subfolder"] == "latentsync"
        video = base / "output" / saved[0]["subfolder"] / saved[0]["filename"]
        assert video.is_file(), sorted(str(p) for p in (base / "output").rglob("*"))
        frames, has_audio = _probe(video)
        assert abs(frames - int(round(CLIP_SECONDS * 25))) <= 1 and has_audio
        timings["frames"] = frames

        # ComfyUI's "Unload models" (POST /free) releases our cached models too; the next run loads them back
        status, _ = _post(f"{url}/free", {"unload_models": True, "free_memory": True})
        assert status == 200
        time.sleep(3)  # the prompt worker wakes up on the flag and unloads before the next prompt
        by_type["LatentSyncMemsafe"]["inputs"]["seed"] = 1248  # not served from ComfyUI's output cache
        by_type["LatentSyncMemsafe"]["inputs"]["output_mode"] = "video_file"
        entry, timings["second_run_s"] = _run_prompt(url, prompt, server, log_path)
        again = entry["outputs"][node_id]["images"][0]
        assert again["filename"] != saved[0]["filename"]
        assert _probe(base / "output" / again["subfolder"] / again["filename"]) == (frames, True)

        # Cancel in ComfyUI (POST /interrupt) while our node runs: an "interrupted" prompt, no file left behind
        before = sorted(p.name for p in (base / "output" / "latentsync").iterdir())
        by_type["LoadAudio"]["inputs"]["audio"] = long_audio
        by_type["LatentSyncMemsafe"]["inputs"].update(seed=1249)
        status, answer = _post(f"{url}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        assert status == 200, answer
        prompt_id = answer["prompt_id"]
        deadline = time.monotonic() + 120
        while not any(item[1] == prompt_id for item in _get(f"{url}/queue")["queue_running"]):
            assert time.monotonic() < deadline, "the prompt never started"
            time.sleep(0.5)
        time.sleep(3)  # our node is aligning / denoising the first of 5 chunks by now
        interrupted = time.monotonic()
        assert _post(f"{url}/interrupt", {})[0] == 200
        state = {}
        while time.monotonic() - interrupted < RUN_SECONDS:
            state = (_get(f"{url}/history/{prompt_id}").get(prompt_id) or {}).get("status", {})
            if state.get("status_str"):
                break
            time.sleep(0.5)
        timings["interrupt_to_stop_s"] = round(time.monotonic() - interrupted, 1)
        events = {name: body for name, body in state.get("messages", [])}
        assert state.get("status_str") == "error" and "execution_interrupted" in events, state
        assert events["execution_interrupted"]["node_type"] == "LatentSyncMemsafe", events
        assert sorted(p.name for p in (base / "output" / "latentsync").iterdir()) == before
        assert [p for p in (base / "temp").rglob("*") if p.is_file()] == []

        server_log = log_path.read_text(errors="replace")
        assert "could not hand the models" not in server_log and "could not load the models" not in server_log
        assert "ComfyUI had unloaded the models" in server_log
        print("\n".join(line for line in server_log.splitlines() if "latentsync" in line.lower()))
        print(f"real ComfyUI integration: {json.dumps(timings)}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
