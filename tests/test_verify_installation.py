"""verify_installation.py as a user runs it: a table, or JSON, and an exit code that means something."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path



SCRIPT = Path(__file__).resolve().parents[1] / "verify_installation.py"


def run(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_json_report_of_a_working_setup(tiny_set):
    folder, config = tiny_set
    done = run("--json", "--checkpoints", folder, "--unet-config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["problems"] == []
    rows = {row["name"]: row for row in report["attention"]}
    assert rows["standard"]["available"] and rows["flash"]["available"]
    assert rows["flash"]["max_rel_err"] < 1e-3
    assert Path(report["ffmpeg"]["ffmpeg"]).exists()
    assert report["detectors"]["dlib"]["available"]
    assert report["checkpoints"]["files"]["unet"]["loadable"] is True
    assert report["checkpoints"]["files"]["whisper"]["loadable"] is True


def test_missing_and_mismatched_checkpoints_fail_with_the_fix(tiny_set, tmp_path):
    folder, config = tiny_set
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "whisper" / "tiny.pt").unlink()
    done = run("--checkpoints", broken)  # the 1.6 config does not fit the tiny UNet either
    assert done.returncode == 1
    assert "Problems:" in done.stdout and "MISSING" in done.stdout
    assert f"{broken / 'whisper' / 'tiny.pt'} missing" in done.stdout
    assert "does not match the LatentSync UNet config" in done.stdout
    assert f'-m latentsync.checkpoints download --version 1.6 --dir "{broken}"' in done.stdout
    assert "attention backend" in done.stdout and "standard" in done.stdout


def test_a_truncated_vae_is_reported_and_no_gpu_is_said_plainly(tiny_set, tmp_path):
    import torch

    folder, config = tiny_set
    broken = tmp_path / "truncated"
    shutil.copytree(folder, broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    done = run("--checkpoints", broken, "--unet-config", config)
    assert done.returncode == 1
    assert "DOES NOT LOAD" in done.stdout and f"{weights} not loadable" in done.stdout
    assert "Everything the default path needs works here" not in done.stdout
    if torch.cuda.is_available():
        assert "No GPU is usable here" not in done.stdout
    else:
        assert "No GPU is usable here: the models would run on the CPU" in done.stdout


def test_onnxruntime_build_is_kept_or_chosen_for_the_machine():
    """An installed onnxruntime build (this test environment has the CPU one) is kept: nothing to install. Only a
    Python without any build gets one, the GPU build where torch sees CUDA."""
    import verify_installation
    from latentsync.tools.choose_onnxruntime import installed_builds, requirement

    assert "onnxruntime" in installed_builds()
    done = subprocess.run([sys.executable, "-m", "latentsync.tools.choose_onnxruntime"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0 and done.stdout == ""  # what the install scripts read: keep it
    assert requirement(["onnxruntime-gpu"], cuda=False) is None and requirement(["onnxruntime"], cuda=True) is None
    assert requirement([], cuda=True) == "onnxruntime-gpu>=1.16" and requirement([], cuda=False) == "onnxruntime>=1.16"
    report = verify_installation.onnxruntime_report()
    assert report["builds"] == ["onnxruntime"] and "CPUExecutionProvider" in report["providers"]
    assert "problem" not in report
