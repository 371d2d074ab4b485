"""The nodes as a ComfyUI user meets them: a real ComfyUI server driven from a real browser (Chromium + Playwright).

Skipped unless COMFYUI_DIR points to a ComfyUI checkout with its frontend package installed (COMFYUI_PYTHON, as in
tests/test_comfyui_integration.py) and Chromium and Playwright are here (Debian's chromium, playwright from PyPI):
ComfyUI is not on the package index, so CI has neither. Screenshots go to $LATENTSYNC_SCREENSHOTS (or the test's
temporary folder) and are meant to be looked at.

Covered: the shipped template opens naming its input files (not the first file listed) with the few per-run widgets in view and the rest folded as advanced inputs;
the node is found by typing "lip sync" in the node search; Run from the toolbar makes a saved video; an unchanged
rerun comes from the cache; Cancel leaves the node saying it was cancelled, not a stale stage; an error's dialog.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from comfyui_server import REPO, comfyui_server, get, post
from helpers import make_audio, write_clip

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TEMPLATE = REPO / "example_workflows" / "Lip sync a talking-head video to speech (LatentSync).json"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file() or CHROMIUM is None,
    reason="set COMFYUI_DIR to a ComfyUI checkout (COMFYUI_PYTHON to its Python) and install chromium and playwright "
           "to drive the nodes from a browser")


def _wait_history(url: str, count: int, seconds: float = 600) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        history = get(f"{url}/history")
        done = [e for e in history.values() if e.get("status", {}).get("completed")
                or e.get("status", {}).get("status_str") in ("error", "success")]
        if len(done) >= count and all(e["status"].get("completed") or e["status"]["status_str"] == "error"
                                      for e in done):
            return history
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} finished prompts in {seconds} s")


def test_a_user_runs_the_template_in_the_browser(tmp_path, media_dir):
    from playwright.sync_api import sync_playwright

    from latentsync.tools.make_tiny_checkpoints import make_tiny_checkpoints

    shots = Path(os.environ.get("LATENTSYNC_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    base = tmp_path / "comfy-base"
    (base / "input").mkdir(parents=True)
    tiny = tmp_path / "tiny-checkpoints"
    config = make_tiny_checkpoints(tiny)
    # the files the template names, and a video whose name sorts first (Load Audio lists videos too)
    write_clip(media_dir, base / "input", "a_first_clip.mp4", 0.64, scale=2)
    write_clip(media_dir, base / "input", "talking_head.mp4", 0.64, scale=2)
    make_audio(media_dir, base / "input", 0.64, "speech.wav")
    long_speech = make_audio(media_dir, base / "input", 12.0, "speech_long.wav").name
    blip = make_audio(media_dir, base / "input", 0.02, "speech_blip.wav").name
    env = {"LATENTSYNC_CHECKPOINTS": str(tiny), "LATENTSYNC_UNET_CONFIG": str(config), "HF_HUB_OFFLINE": "1"}
    workflow = json.loads(TEMPLATE.read_text())
    by_type = {node["type"]: node for node in workflow["nodes"]}
    lipsync = by_type["LatentSyncLipSync"]["widgets_values"]
    lipsync[3] = 2  # inference_steps: two steps keep the CPU run short
    lipsync[12] = "dlib"  # face_detector: the tiny set has no InsightFace models
    with comfyui_server(COMFYUI_DIR, base, env, os.environ.get("COMFYUI_PYTHON")) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.add_init_script("""window.__latentsync_texts = [];""")
        post(f"{server.url}/settings/Comfy.TutorialCompleted", True)  # no template browser on the first start
        page.goto(server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.app.graph._nodes", timeout=120_000)
        page.evaluate("""() => window.app.api.addEventListener("progress_text",
            e => window.__latentsync_texts.push(e.detail.text))""")
        page.wait_for_timeout(1500)

        # search: the node library's search box, with what a user types
        page.get_by_role("button", name=re.compile(r"^Nodes?( Library)?", re.I)).first.click()
        page.get_by_placeholder(re.compile("Search", re.I)).first.fill("lip sync")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(shots / "1-search.png"))
        assert page.get_by_text("Lip Sync, Talking Head Dubbing (LatentSync)").first.is_visible()
        page.keyboard.press("Escape")

        # the template (an old saved workflow) opens with its values; in the classic canvas every widget is drawn,
        # in Nodes 2.0 the advanced ones are folded behind the node's "show advanced inputs"
        page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(shots / "2-template-classic.png"))
        chosen = page.evaluate("""() => Object.fromEntries(["LoadVideo", "LoadAudio"].map(type =>
            [type, window.app.graph._nodes.find(n => n.type === type).widgets[0].value]))""")
        assert chosen == {"LoadVideo": "talking_head.mp4", "LoadAudio": "speech.wav"}  # not the first file listed
        widgets = page.evaluate("""() => {
            const node = window.app.graph._nodes.find(n => n.type === "LatentSyncLipSync");
            return Object.fromEntries(node.widgets.map(w => [w.name, [w.value, !!(w.options || {}).advanced]]));
        }""")
        assert widgets["inference_steps"][0] == 2 and widgets["face_detector"][0] == "dlib"
        assert {name for name, (_, advanced) in widgets.items() if not advanced} >= {
            "seed", "lips_expression", "inference_steps", "face"}
        assert widgets["vram_fraction"][1] and widgets["audio_start"][1] and not widgets["seed"][1]
        nodes_2 = page.evaluate("""() => {  // a frontend with Nodes 2.0 (ComfyUI 0.10 and newer) knows this setting
            try { return window.app.extensionManager.setting.get("Comfy.VueNodes.Enabled") !== undefined; }
            catch (error) { return false; } }""")
        version = get(f"{server.url}/system_stats")["system"]["comfyui_version"]
        if nodes_2 and tuple(int(part) for part in version.split(".")[:2]) >= (0, 10):  # advanced inputs: 0.10 on
            page.evaluate("() => window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true)")
            page.wait_for_timeout(2500)
            page.screenshot(path=str(shots / "3-template-nodes-2.png"))
            assert page.get_by_text("lips_expression", exact=True).count() >= 1
            assert page.get_by_text("vram_fraction", exact=True).count() == 0

        # Run, from the toolbar, as a user does
        page.get_by_role("button", name=re.compile(r"^(Run|Queue)", re.I)).first.click()
        history = _wait_history(server.url, 1)
        entry = next(iter(history.values()))
        assert entry["status"]["status_str"] == "success", entry["status"]
        page.wait_for_timeout(2000)
        page.screenshot(path=str(shots / "4-done.png"))
        assert any(text.startswith("done: 16 frames") for text in page.evaluate("window.__latentsync_texts"))

        # the same graph again: served from the cache (the preview the frontend adds does not rerun it)
        page.get_by_role("button", name=re.compile(r"^(Run|Queue)", re.I)).first.click()
        history = _wait_history(server.url, 2)
        second = [e for e in history.values() if e is not entry][-1]
        cached = dict(second["status"]["messages"]).get("execution_cached", {}).get("nodes", [])
        assert str(by_type["LatentSyncLipSync"]["id"]) in cached, second["status"]

        # a long speech, then Cancel: the node says it was cancelled, where
        page.evaluate("""name => {
            const node = window.app.graph._nodes.find(n => n.type === "LoadAudio");
            node.widgets.find(w => w.name === "audio").value = name;
        }""", long_speech)
        page.evaluate("() => { window.__latentsync_texts = []; }")
        page.get_by_role("button", name=re.compile(r"^(Run|Queue)", re.I)).first.click()
        page.wait_for_function("() => window.__latentsync_texts.some(t => t.startsWith('lip-sync'))",
                               timeout=300_000)
        assert post(f"{server.url}/interrupt", {})[0] == 200
        page.wait_for_function("() => window.__latentsync_texts.some(t => t.startsWith('cancelled at'))",
                               timeout=120_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shots / "5-cancelled.png"))
        texts = page.evaluate("window.__latentsync_texts")
        assert re.match(r"cancelled at lip-sync \d+/\d+$", texts[-1]), texts[-5:]

        # an error: the dialog a user reads (a speech shorter than one frame)
        page.evaluate("""name => {
            const node = window.app.graph._nodes.find(n => n.type === "LoadAudio");
            node.widgets.find(w => w.name === "audio").value = name;
        }""", blip)
        page.get_by_role("button", name=re.compile(r"^(Run|Queue)", re.I)).first.click()
        page.get_by_text(re.compile("shorter than one video frame")).first.wait_for(timeout=120_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shots / "6-error.png"))
        browser.close()
