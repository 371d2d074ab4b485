"""Shared test fixtures: where the read-only reference vectors and media live."""

import os
from pathlib import Path

import pytest

# Under pytest-xdist (the README's command runs two workers) each worker computes on one core: torch's default pool
# per worker would put two threads on each of the machine's cores. Set before torch is imported; subprocesses of the
# tests (the command line, Ray workers) inherit it, so outputs compared across processes are computed alike.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="session")
def vram_models(tmp_path_factory):
    """The VRAM model of each version at full size, its counts shared by the session and its workers (counted once,
    in seconds)."""
    from latentsync.vram import ModelShapes, VramModel

    root = tmp_path_factory.getbasetemp()
    cache = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "vram-counts.json"  # all workers
    return {version: VramModel(ModelShapes.of_version(version), cache) for version in ("1.6", "1.5")}
