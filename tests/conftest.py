"""Shared test fixtures: where the read-only reference vectors and media live, and the tiny real-format checkpoint
set with its models, made and loaded once per test process (the helpers the modules share: ``helpers.py``)."""

import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

# Under pytest-xdist (the README's command runs two workers) each worker computes on one core: torch's default pool
# per worker would put two threads on each of the machine's cores. Set before torch is imported; subprocesses of the
# tests (the command line, Ray workers) inherit it, so outputs compared across processes are computed alike.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "bench"))  # what tests share with the benchmarks: a real ComfyUI server, the cv2 recipe
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"
MEDIA = SHARED / "media"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference vectors not found at {REFERENCE}: the tests need ../shared beside the repo")
    return REFERENCE


@pytest.fixture(scope="session")
def media_dir() -> Path:
    if not MEDIA.is_dir():
        pytest.fail(f"media clips not found at {MEDIA}: the tests need ../shared beside the repo")
    return MEDIA


class TinySet(NamedTuple):
    checkpoints: Path  # the folder: latentsync_unet.pt, whisper/tiny.pt, the VAE
    config: Path  # the tiny UNet's yaml


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> TinySet:
    """The tiny real-format checkpoint set (``make_tiny_checkpoints``), read-only to the tests that share it."""
    from latentsync.tools.make_tiny_checkpoints import make_tiny_checkpoints

    folder = tmp_path_factory.mktemp("tiny") / "checkpoints"
    return TinySet(folder, make_tiny_checkpoints(folder))


@pytest.fixture(scope="session")
def tiny_models(tiny_set):
    """The tiny set's 1.6 models on the CPU, loaded once: each run chooses its own options (attention, detector)."""
    from latentsync.model_set import LipSyncModels

    return LipSyncModels.load("1.6", tiny_set.checkpoints, unet_config=tiny_set.config, device="cpu")


@pytest.fixture(scope="session")
def reference_pipeline(reference_dir):
    """The published pipeline's tiny test case: its spec, tensors, UNet and VAE (``pipeline_tiny.*``)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    from latentsync.models.loading import load_unet

    spec = json.loads((reference_dir / "pipeline_tiny.json").read_text())
    tensors = load_file(str(reference_dir / "pipeline_tiny.safetensors"))
    vae = AutoencoderKL(**{k: v for k, v in spec["vae_config"].items() if not k.startswith("_")})
    vae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("vae.")}, strict=True)
    config = json.loads((reference_dir / "unet_tiny_config.json").read_text())
    unet = load_unet(reference_dir / spec["unet"], config)
    return spec, tensors, unet, vae.eval()


@pytest.fixture(scope="session")
def vram_models(tmp_path_factory):
    """The VRAM model of each version at full size, its counts shared by the session and its workers (counted once,
    in seconds)."""
    from latentsync.vram import ModelShapes, VramModel

    root = tmp_path_factory.getbasetemp()
    cache = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "vram-counts.json"  # all workers
    return {version: VramModel(ModelShapes.of_version(version), cache) for version in ("1.6", "1.5")}
