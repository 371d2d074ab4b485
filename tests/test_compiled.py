"""The compiled path (``compile`` option): no graph break in the UNet, compiled equal to eager, static shapes.

Graphs are captured by dynamo as on a GPU; the code is generated with the "aot_eager" backend rather than inductor,
which takes minutes per shape on a 2-core CPU (``bench/bench_compile.py`` measures inductor: its compile seconds, a
second process reusing its cache, and compiled against eager).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latentsync import LipSyncModels, LipSyncPipeline, PipelineOptions, compiled
from latentsync.attention.selection import create_backend
from latentsync.models.loading import load_unet
from helpers import make_audio, make_clip


@pytest.fixture(autouse=True)
def _quick_backend(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")


@pytest.fixture(scope="module")
def reference_unet(reference_dir: Path):
    unet = load_unet(reference_dir / "unet_tiny.safetensors", reference_dir / "unet_tiny_config.json").eval()
    return unet, load_file(str(reference_dir / "unet_tiny.safetensors"))


@pytest.mark.parametrize("attention", ["flash", "standard"])
def test_unet_compiles_whole_and_equals_eager(reference_unet, attention):
    """One graph, no break (compiled with fullgraph), the same output within float32 tolerance."""
    unet, tensors = reference_unet
    unet.set_attention_backend(create_backend(attention, "cpu", torch.float32, strict=True))
    sample, audio, t = tensors["sample"], tensors["audio"], torch.tensor(500)
    with torch.no_grad():
        call = compiled.StaticShapes(unet, "default", "the UNet")  # fullgraph: a graph break would raise
        eager = unet(sample, t, encoder_hidden_states=audio)
        got = call(sample, t, encoder_hidden_states=audio)
        torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
        # another shape (a run's last, shorter group) runs eagerly: no recompile, eager's own bits
        shorter = call(sample[:1], t, encoder_hidden_states=audio[:len(audio) // 2])
        assert call.calls == 1 and call.shape == tuple(sample.shape)
        assert torch.equal(shorter, unet(sample[:1], t, encoder_hidden_states=audio[:len(audio) // 2]))


def test_whole_run_compiled_equals_eager(tmp_path, media_dir, tiny_set):
    # its own models: the compiled run compiles their UNet and VAE decoder
    models = LipSyncModels.load("1.6", tiny_set.checkpoints, unet_config=tiny_set.config, device="cpu")
    clip, audio = make_clip(media_dir, tmp_path, 1.0, Fraction(25)), make_audio(media_dir, tmp_path, 0.9)

    def frames(option: str) -> np.ndarray:
        options = PipelineOptions(steps=2, detector="dlib", attention="flash", compile=option)
        return np.concatenate([batch.copy() for batch in LipSyncPipeline(models, options).frames(clip, audio)])

    eager, with_compile = frames("off"), frames("on")
    calls = models.compiled("on")
    assert calls.unet.calls == 2 and calls.decode.calls >= 1  # the first group's 2 steps; the second group is eager
    assert eager.shape == with_compile.shape
    assert np.abs(eager.astype(int) - with_compile.astype(int)).max() <= 1  # uint8 frames, float tolerance
