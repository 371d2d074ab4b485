"""Shared test fixtures: where the read-only reference vectors and media live."""

from pathlib import Path

import pytest

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
    """The VRAM model of each version at full size, its counts shared by the session (counted once, in seconds)."""
    from latentsync.vram import ModelShapes, VramModel

    cache = tmp_path_factory.mktemp("vram") / "counts.json"
    return {version: VramModel(ModelShapes.of_version(version), cache) for version in ("1.6", "1.5")}
