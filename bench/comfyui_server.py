"""Drive a real ComfyUI server over its HTTP API (the integration test and bench/bench_comfyui_memory.py).

The server runs on the CPU on a free loopback port, with a private base directory (custom_nodes, input, output,
temp, user, models) so the ComfyUI checkout is not written to; this repository is symlinked into its custom_nodes
under a name with a dash, as a git clone would be.
"""

from __future__ import annotations

import contextlib
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

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-LatentSync-MEMSAFE"
STARTUP_SECONDS = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post(url: str, payload: dict, timeout: float = 30):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class Server:
    def __init__(self, process: subprocess.Popen, url: str, base: Path, log_path: Path):
        self.process, self.url, self.base, self.log_path = process, url, base, log_path

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def queue(self, prompt: dict, workflow: dict | None = None) -> str:
        """POST /prompt as the browser does (the UI graph rides along in extra_pnginfo); the prompt id."""
        extra = {"extra_pnginfo": {"workflow": workflow}} if workflow is not None else {}
        status, answer = post(f"{self.url}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex,
                                                     "extra_data": extra})
        if status != 200 or answer.get("node_errors"):
            raise AssertionError(f"prompt rejected: {answer}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, seconds: float = 900) -> dict:
        """The history entry of a finished prompt (success or error), polling /history (bounded)."""
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            entry = get(f"{self.url}/history/{prompt_id}").get(prompt_id)
            state = (entry or {}).get("status", {})
            if state.get("completed") or state.get("status_str") == "error":
                return entry
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI died during the run:\n{self.log()}")
            time.sleep(0.5)
        raise AssertionError(f"no result in {seconds} s:\n{self.log()}")

    def running(self, prompt_id: str) -> bool:
        return any(item[1] == prompt_id for item in get(f"{self.url}/queue")["queue_running"])


@contextlib.contextmanager
def comfyui_server(comfyui_dir: str, base: Path, env: dict, python: str | None = None):
    """A ComfyUI server on the CPU with ``base`` as its base directory; stopped when the block ends."""
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models/latentsync"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    port = _free_port()
    log_path = base / "comfyui.log"
    command = [python or sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), "--user-directory", str(base / "user"),
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=comfyui_dir, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                                   stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", base, log_path)
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise AssertionError(f"ComfyUI exited with {process.returncode}:\n{server.log()}")
            try:
                get(f"{server.url}/object_info/LoadVideo", timeout=30)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() - started > STARTUP_SECONDS:
                    raise AssertionError(f"ComfyUI did not start in {STARTUP_SECONDS} s:\n{server.log()}")
                time.sleep(1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def widget_names(spec: dict) -> list[str | None]:
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
        if node["type"] not in object_info:  # the frontend's own nodes (a Note) are not sent
            continue
        spec = object_info[node["type"]]
        inputs = {}
        for name, value in zip(widget_names(spec), list(node.get("widgets_values") or [])):
            if name is not None:
                inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, source, source_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(source), source_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
