"""The project as a Python package: a wheel built from pyproject.toml carries the library with its configs and mask,
and gives a working `latentsync` command (installed apart from this checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_has_the_library_its_data_and_the_command(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("latentsync_memsafe-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("latentsync/pipeline.py", "latentsync/assets/mask.png", "latentsync/configs/scheduler_config.json",
                   "latentsync/configs/unet/stage2.yaml", "latentsync/configs/unet/stage2_512.yaml"):
        assert needed in names, needed
    assert not any(name.startswith(("tests/", "bench/", "comfyui/")) for name in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "latentsync = latentsync.cli:entry" in zipfile.ZipFile(wheel).read(entry).decode()

    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = dict(os.environ, PYTHONPATH=str(target))  # the installed copy, not this checkout
    check = ("import latentsync.checkpoints as c; assert c.SCHEDULER_CONFIG.is_file(); "
             "assert c.VERSIONS['1.6'].unet_config.is_file(); print(c.__file__)")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(target))
    command = subprocess.run([str(target / "bin" / "latentsync"), "--help"], capture_output=True, text=True, env=env,
                             cwd=tmp_path)
    assert command.returncode == 0 and "--video" in command.stdout and "--face" in command.stdout


def test_one_version_and_the_registry_metadata():
    """The registry and ComfyUI-Manager read pyproject.toml; the library says the same version."""
    import tomllib

    from latentsync import __version__

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["version"] == __version__
    assert project["project"]["urls"]["Repository"].startswith("https://github.com/")
    comfy = project["tool"]["comfy"]
    assert comfy["requires-comfyui"] == ">=0.3.64" and comfy["Icon"].endswith("/docs/icon.png")
    assert (REPO / "docs" / "icon.png").is_file()
    runtime = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert all(not line or ">=" in line for line in runtime), runtime  # lower bounds only, never a pinned torch
    assert not any(line.startswith("torch") for line in runtime)
