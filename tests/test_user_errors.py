"""What a first user gets wrong: each mistake is one sentence naming the flag or file and the fix, found before any
model loads, and nothing is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentsync.audio import WhisperCheckpointError, WhisperEncoder
from latentsync.checkpoints import MissingCheckpointError, locate

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("HF_HUB_OFFLINE", None)  # a run must not try the network whether or not it is offline
    return subprocess.run([sys.executable, "-m", "latentsync", "--quiet", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture
def inputs(media_dir, tmp_path):
    return ["--video", str(media_dir / "demo1_video.mp4"), "--audio", str(media_dir / "demo1_audio.wav")]


def one_sentence(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stderr
    message = done.stderr.strip()
    assert "Traceback" not in message and message.count("\n") == 0, message
    return message


def test_output_path_that_is_a_folder(inputs, tmp_path):
    (tmp_path / "out").mkdir()
    message = one_sentence(cli(*inputs, "--out", str(tmp_path / "out"), cwd=tmp_path))
    assert "--out" in message and "is a folder" in message and "synced.mp4" in message
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_unet_config_names_the_flag(inputs, tmp_path):
    message = one_sentence(cli(*inputs, "--out", str(tmp_path / "o.mp4"), "--unet-config",
                               str(tmp_path / "nope.yaml"), cwd=tmp_path))
    assert message == f"error: --unet-config: no such file: {tmp_path / 'nope.yaml'}"


def test_mistyped_checkpoints_folder_downloads_nothing_and_creates_nothing(inputs, tmp_path):
    typo = tmp_path / "chekpoints"
    message = one_sentence(cli(*inputs, "--out", str(tmp_path / "o.mp4"), "--checkpoints", str(typo), cwd=tmp_path))
    assert "--checkpoints: no such folder" in message and "-m latentsync.checkpoints download" in message
    assert not typo.exists() and not (tmp_path / "o.mp4").exists()


def test_values_are_checked_before_models_load(inputs, tmp_path):
    """An empty checkpoints folder and a bad value: the value is reported (the check comes before loading)."""
    (tmp_path / "empty").mkdir()
    message = one_sentence(cli(*inputs, "--out", str(tmp_path / "o.mp4"), "--checkpoints", str(tmp_path / "empty"),
                               "--vram-fraction", "2", cwd=tmp_path))
    assert message == "error: --vram-fraction must be between 0.0 and 0.95, got 2.0"  # named as typed


def test_a_run_never_downloads_a_missing_checkpoint(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("a run downloaded"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(MissingCheckpointError, match="-m latentsync.checkpoints download"):
        locate("1.6", tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


class Payload:
    """Not a tensor: a weights-only load refuses it."""


def test_whisper_checkpoint_that_is_not_weights_only(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save({"dims": {}, "model_state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(WhisperCheckpointError) as error:
        WhisperEncoder.from_checkpoint(path)
    message = str(error.value)
    assert "Python objects besides its weights" in message and "weights_only=False" not in message
    assert "\n" not in message


def test_error_types_have_a_short_name_inside_comfyui():
    """ComfyUI registers a custom node pack under its disk path; the error type it shows is module + class."""
    import importlib

    from test_node import load_as_comfyui

    load_as_comfyui("latentsync-errors-check")  # the pack as ComfyUI loads it (a dashed package name), on its own
    checkpoints = importlib.import_module("latentsync-errors-check.latentsync.checkpoints")
    error = checkpoints.MissingCheckpointError("x")
    assert f"{type(error).__module__}.{type(error).__qualname__}" == "latentsync.MissingCheckpointError"
