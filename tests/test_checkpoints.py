"""Finding, downloading and reporting the weights (real tiny files, no network)."""

import io
import shutil
import zipfile

import torch

import pytest

from latentsync import checkpoints
from latentsync.checkpoints import MissingCheckpointError, locate, search_dirs


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LATENTSYNC_CHECKPOINTS", raising=False)


def test_locate_finds_the_published_layout(tiny_set):
    folder, _ = tiny_set
    found = locate("1.6", folder)
    assert found.root == folder
    assert found.unet == folder / "latentsync_unet.pt"
    assert found.whisper == folder / "whisper" / "tiny.pt"
    assert found.vae_dir == folder / "vae"
    assert found.unet_config.name == "stage2_512.yaml"


def test_offline_missing_file_names_path_and_download_command(tmp_path, tiny_set):
    shutil.copytree(tiny_set[0], tmp_path / "ckpt")
    (tmp_path / "ckpt" / "whisper" / "tiny.pt").unlink()
    with pytest.raises(MissingCheckpointError) as error:
        locate("1.6", tmp_path / "ckpt")
    message = str(error.value)
    assert str(tmp_path / "ckpt" / "whisper" / "tiny.pt") in message
    assert f'-m latentsync.checkpoints download --version 1.6 --dir "{tmp_path / "ckpt"}"' in message
    assert "\n" not in message


def test_version_15_lives_in_its_own_folder(tmp_path, tiny_set):
    shutil.copytree(tiny_set[0], tmp_path / "ckpt")
    found = locate("1.5", tmp_path / "ckpt")  # the tiny set has both layouts
    assert found.unet == tmp_path / "ckpt" / "1.5" / "latentsync_unet.pt"
    shutil.rmtree(tmp_path / "ckpt" / "1.5")
    with pytest.raises(MissingCheckpointError, match=r"1\.5/latentsync_unet\.pt"):
        locate("1.5", tmp_path / "ckpt")
    (tmp_path / "ckpt" / "1.5").mkdir()
    shutil.copy(tmp_path / "ckpt" / "latentsync_unet.pt", tmp_path / "ckpt" / "1.5" / "latentsync_unet.pt")
    found = locate("1.5", tmp_path / "ckpt")
    assert found.root == tmp_path / "ckpt" and found.unet.parent.name == "1.5"
    assert found.version.resolution == 256


def test_search_order_named_folders_then_env_then_package(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSYNC_CHECKPOINTS", str(tmp_path / "env"))
    assert search_dirs(tmp_path / "explicit") == [tmp_path / "explicit", tmp_path / "env",
                                                  checkpoints.DEFAULT_CHECKPOINTS]
    # several folders (ComfyUI's latentsync model folders, extra_model_paths.yaml included), in their order
    several = search_dirs([tmp_path / "a", str(tmp_path / "b")])
    assert several[:3] == [tmp_path / "a", tmp_path / "b", tmp_path / "env"]


def test_a_set_is_found_in_a_later_folder_and_nothing_is_downloaded(tmp_path, tiny_set, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("locate must never download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    shutil.copytree(tiny_set[0], tmp_path / "second")
    found = locate("1.6", [tmp_path / "first", tmp_path / "second"])
    assert found.root == tmp_path / "second"
    assert not (tmp_path / "first").exists()  # nothing was created where the files are missing


def test_download_fetches_the_official_files_into_the_layout(tmp_path, tiny_set, monkeypatch):
    """The download step asks huggingface_hub for the official repos and files; locate then finds them."""
    import huggingface_hub

    requested = []
    sources = {"latentsync_unet.pt": tiny_set[0] / "latentsync_unet.pt",
               "whisper/tiny.pt": tiny_set[0] / "whisper" / "tiny.pt",
               "config.json": tiny_set[0] / "vae" / "config.json",
               "diffusion_pytorch_model.safetensors": tiny_set[0] / "vae" / "diffusion_pytorch_model.safetensors"}

    def fake_hub_download(repo_id, filename, local_dir):  # stands in for the network only
        requested.append((repo_id, filename))
        target = tmp_path / "ckpt" / local_dir.split(str(tmp_path / "ckpt"))[1].strip("/") / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sources[filename], target)
        return str(target)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(checkpoints, "_reachable", lambda host, timeout=5.0: True)  # the network's stand-in
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub_download)
    checkpoints.download_missing("1.6", tmp_path / "ckpt")
    found = locate("1.6", tmp_path / "ckpt")
    assert sorted(requested) == sorted([
        ("ByteDance/LatentSync-1.6", "latentsync_unet.pt"), ("ByteDance/LatentSync-1.6", "whisper/tiny.pt"),
        ("stabilityai/sd-vae-ft-mse", "config.json"),
        ("stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.safetensors")])
    assert found.unet.stat().st_size == sources["latentsync_unet.pt"].stat().st_size


def test_describe_file_flags_truncated_official_files(tmp_path):
    small = tmp_path / "latentsync_unet.pt"
    small.write_bytes(b"x" * 1000)
    info = checkpoints.describe_file(small)
    assert info["present"] and not info["plausible"]
    assert checkpoints.describe_file(tmp_path / "nope.pt")["present"] is False


def test_download_command_offline_says_so_once_fast_and_creates_nothing(tmp_path, monkeypatch, capsys):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE")
    asked = []
    monkeypatch.setattr(checkpoints, "_reachable", lambda host, timeout=5.0: asked.append(host) and False)
    started = time.monotonic()
    assert checkpoints.main(["download", "--dir", str(tmp_path / "typo")]) == 1
    assert time.monotonic() - started < 5
    error = capsys.readouterr().err.strip()
    assert error.count("offline") == 1 and "\n" not in error and "huggingface.co" in error
    assert not (tmp_path / "typo").exists() and asked == ["huggingface.co", "github.com"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert checkpoints.main(["download", "--dir", str(tmp_path / "typo")]) == 1
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().err and not (tmp_path / "typo").exists()


def test_the_download_command_of_messages_runs_from_any_folder(tmp_path):
    """Pasted where a ComfyUI user is (ComfyUI's folder, where ``latentsync`` is not importable), the command the
    messages give reaches the downloader: here it stops at the offline switch, not at "No module named"."""
    import os
    import subprocess

    elsewhere = tmp_path / "ComfyUI"
    elsewhere.mkdir()
    command = checkpoints.download_command("1.6", tmp_path / "ckpt")
    done = subprocess.run(command, shell=True, cwd=elsewhere, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
    assert done.returncode == 1 and "No module named" not in done.stderr
    assert "HF_HUB_OFFLINE=1" in done.stderr and not (tmp_path / "ckpt").exists()


class _Response(io.BytesIO):
    status = 200


def _buffalo_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("buffalo_l/det_10g.onnx", b"detector bytes")
        archive.writestr("buffalo_l/2d106det.onnx", b"landmark bytes")
        archive.writestr("buffalo_l/w600k_r50.onnx", b"not needed")
    return buffer.getvalue()


def test_buffalo_download_is_checked_against_the_published_checksums(tmp_path, monkeypatch):
    import hashlib
    import urllib.request

    archive = _buffalo_zip()
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout=60: _Response(archive))
    target = tmp_path / checkpoints.BUFFALO_DIR
    with pytest.raises(checkpoints.DownloadError, match="published checksum"):  # not the real archive
        checkpoints.download_buffalo(tmp_path)
    assert sorted(p.name for p in target.parent.rglob("*") if p.is_file()) == []
    digests = {"det_10g.onnx": hashlib.sha256(b"detector bytes").hexdigest(),
               "2d106det.onnx": hashlib.sha256(b"landmark bytes").hexdigest()}
    monkeypatch.setattr(checkpoints, "BUFFALO_ZIP_SHA256", hashlib.sha256(archive).hexdigest())
    monkeypatch.setattr(checkpoints, "BUFFALO_SHA256", {**digests, "2d106det.onnx": "0" * 64})
    with pytest.raises(checkpoints.DownloadError, match="2d106det.onnx"):  # a member that does not match
        checkpoints.download_buffalo(tmp_path)
    assert not (target / "2d106det.onnx").exists()
    monkeypatch.setattr(checkpoints, "BUFFALO_SHA256", digests)
    checkpoints.download_buffalo(tmp_path)
    assert (target / "det_10g.onnx").read_bytes() == b"detector bytes"
    assert (target / "2d106det.onnx").read_bytes() == b"landmark bytes"
    assert sorted(p.name for p in target.parent.rglob("*") if p.is_file()) == ["2d106det.onnx", "det_10g.onnx"]



class _RunsCode:
    """Unpickled, it would create a file: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_holding_code_is_refused_without_advice_to_load_it_unsafely(tmp_path):
    from latentsync.audio import WhisperCheckpointError, WhisperEncoder
    from latentsync.checkpoints import get_version
    from latentsync.errors import CheckpointCorruptError
    from latentsync.models.loading import load_unet, load_unet_config

    marker = tmp_path / "ran"
    torch.save({"state_dict": {"conv_in.weight": _RunsCode(marker)}}, tmp_path / "latentsync_unet.pt")
    torch.save({"dims": {}, "model_state_dict": _RunsCode(marker)}, tmp_path / "tiny.pt")
    with pytest.raises(CheckpointCorruptError) as unet:
        load_unet(tmp_path / "latentsync_unet.pt", load_unet_config(get_version("1.6").unet_config))
    with pytest.raises(WhisperCheckpointError) as whisper:
        WhisperEncoder.from_checkpoint(tmp_path / "tiny.pt")
    assert "is not a safe checkpoint" in str(unet.value) and "latentsync.checkpoints download" in str(unet.value)
    assert "holds Python objects besides its weights" in str(whisper.value)
    for error in (unet.value, whisper.value):
        assert "weights_only" not in str(error) and "False" not in str(error)
    assert not marker.exists()
