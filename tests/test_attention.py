"""Attention backends: agreement with the reference math, lip focus, selection by rule and fallbacks."""

from __future__ import annotations

import importlib
import json
import logging
import math

import pytest
import torch

from latentsync.attention.backends import FlexAttention, load_mouth_mask, mouth_mask_tokens
from latentsync.attention.core import StandardAttention, relative_error
from latentsync.attention.registry import BACKENDS
from latentsync.attention.selection import (ENV_DISABLE, BackendUnavailableError, availability, backend_report,
                                            create_backend)
from latentsync.models.loading import load_unet

CPU = torch.device("cpu")

# (role, hw, q shape, k shape): non-square grid, Lq != Lk for audio (50 keys), 16 frames for temporal
CASES = [
    ("spatial_self", (6, 10), (2, 8, 60, 40), (2, 8, 60, 40)),
    ("spatial_self", (12, 5), (3, 4, 60, 80), (3, 4, 60, 80)),
    ("audio_cross", (6, 10), (2, 8, 60, 40), (2, 8, 50, 40)),
    ("audio_cross", (4, 4), (4, 2, 16, 24), (4, 2, 50, 24)),
    ("temporal_self", None, (24, 8, 16, 40), (24, 8, 16, 40)),
]


def _qkv(q_shape, k_shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*q_shape, generator=g, dtype=dtype)
    k = torch.randn(*k_shape, generator=g, dtype=dtype)
    v = torch.randn(*k_shape, generator=g, dtype=dtype)
    return q, k, v


@pytest.fixture(autouse=True)
def _fresh_selection(monkeypatch):
    monkeypatch.delenv(ENV_DISABLE, raising=False)


def _available_cpu():
    return [n for n in BACKENDS if availability(n, CPU, torch.float32)[0]]


def test_standard_and_flash_always_available_on_cpu():
    names = _available_cpu()
    assert "standard" in names and "flash" in names


@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "standard"])
@pytest.mark.parametrize("role,hw,q_shape,k_shape", CASES)
def test_backend_matches_standard(name, role, hw, q_shape, k_shape):
    if not availability(name, CPU, torch.float32)[0]:
        pytest.skip(f"{name} unavailable here: {availability(name, CPU, torch.float32)[1]}")
    backend = create_backend(name, CPU, torch.float32, strict=True)
    assert backend.name == name
    q, k, v = _qkv(q_shape, k_shape)
    out = backend(q, k, v, role=role, hw=hw)
    ref = StandardAttention()(q, k, v, role=role, hw=hw)
    assert out.shape == ref.shape == (*q_shape[:3], k_shape[3])
    assert relative_error(out, ref) < 1e-3


def test_flex_neutral_settings_exact_with_mask_given():
    mask = load_mouth_mask()
    flex = FlexAttention(lip_focus=1.0, mouth_mask=mask)
    for role, hw, qs, ks in CASES:
        q, k, v = _qkv(qs, ks, seed=3)
        assert relative_error(flex(q, k, v, role=role, hw=hw), StandardAttention()(q, k, v, role=role, hw=hw)) < 1e-5


def test_mouth_mask_convention():
    mask = load_mouth_mask()
    assert mask.dtype == torch.bool and mask.shape == (256, 256)
    # 0 = mouth in mask.png: the lower-middle of the face is mouth, the top rows (eyes) are kept
    assert mask[200, 128] and not mask[20, 128]
    tok = mouth_mask_tokens(mask, (8, 8)).reshape(8, 8)
    assert tok[6, 4] and not tok[0, 4]
    # area + threshold 0.5 on a synthetic mask: left half mouth -> left columns of any grid
    half = torch.zeros(16, 16, dtype=torch.bool)
    half[:, :8] = True
    assert mouth_mask_tokens(half, (2, 4)).reshape(2, 4).tolist() == [[True, True, False, False]] * 2


def _mouth_mass_after_focus(q, k, mouth_keys, focus):
    """Expected mouth mass, computed independently from the standard softmax."""
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    p = scores.softmax(-1)
    m = p[..., mouth_keys].sum(-1)
    return focus * m / (focus * m + (1 - m)), m


@pytest.mark.parametrize("hw", [(6, 10), (8, 8)])
@pytest.mark.parametrize("focus", [2.0, 0.5])
def test_flex_lip_focus_moves_mass_to_mouth(hw, focus):
    # synthetic mouth: a random-looking but fixed blob at mask resolution
    mask = torch.zeros(48, 48, dtype=torch.bool)
    mask[20:44, 8:40] = True
    flex = create_backend("flex", CPU, torch.float32, lip_focus=focus, mouth_mask=mask, strict=True)
    assert isinstance(flex, FlexAttention)
    mouth = mouth_mask_tokens(mask, hw)
    assert 0 < int(mouth.sum()) < mouth.numel()
    n = hw[0] * hw[1]
    q, k, _ = _qkv((2, 4, n, 32), (2, 4, n, 32), seed=5)
    v = mouth.to(torch.float32).view(1, 1, n, 1).expand(2, 4, n, 1).contiguous()  # one-hot indicator
    got = flex(q, k, v, role="spatial_self", hw=hw)[..., 0]
    expected, m = _mouth_mass_after_focus(q, k, mouth, focus)
    assert torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-5)
    assert (got.double() - m).abs().max() > 1e-3  # it did change something
    # other roles are untouched by lip_focus
    for role, hw_, qs, ks in CASES[2:]:
        q2, k2, v2 = _qkv(qs, ks, seed=6)
        assert relative_error(flex(q2, k2, v2, role=role, hw=hw_), StandardAttention()(q2, k2, v2, role=role)) < 1e-5


def test_flex_lip_focus_default_mask_and_square_inference():
    flex = create_backend("auto", CPU, torch.float32, lip_focus=2.0)
    assert isinstance(flex, FlexAttention)
    mouth = mouth_mask_tokens(load_mouth_mask(), (8, 8))
    q, k, _ = _qkv((1, 2, 64, 16), (1, 2, 64, 16), seed=9)
    v = mouth.float().view(1, 1, 64, 1).expand(1, 2, 64, 1).contiguous()
    expected, _ = _mouth_mass_after_focus(q, k, mouth, 2.0)
    with_hw = flex(q, k, v, role="spatial_self", hw=(8, 8))[..., 0]
    without_hw = flex(q, k, v, role="spatial_self")[..., 0]  # 64 tokens -> inferred 8x8
    assert torch.allclose(with_hw.double(), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(with_hw, without_hw)
    with pytest.raises(ValueError):
        flex(q, k, v, role="spatial_self", hw=(4, 8))


def test_invalid_parameters():
    with pytest.raises(ValueError):
        create_backend("nope")
    with pytest.raises(ValueError):
        FlexAttention(lip_focus=0.0)
    with pytest.raises(ValueError):
        FlexAttention(lip_focus=float("nan"))
    with pytest.raises(TypeError):
        FlexAttention(lip_focus=2.0, mouth_mask=torch.zeros(4, 4))  # not bool
    with pytest.raises(ValueError, match="flex"):
        create_backend("flash", CPU, torch.float32, lip_focus=2.0)


def test_auto_chooses_by_rule_and_logs_why_others_cannot_run(monkeypatch, caplog, tmp_path):
    """auto: the first backend of the registry's order that runs here (nothing timed), the reason of each one before
    it logged, the ones after it never probed (flex's probe would compile, and leave a compiler cache in TMPDIR);
    SDPA (flash) leads the order."""
    from latentsync.attention import selection

    monkeypatch.setattr(selection, "_probe_cache", {})
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with caplog.at_level(logging.INFO, logger="latentsync.attention"):
        assert create_backend("auto", CPU, torch.float32).name == "flash"
    assert "auto -> flash" in caplog.text
    assert [key[0] for key in selection._probe_cache] == ["flash"] and not (tmp_path / "inductor").exists()

    monkeypatch.setenv(ENV_DISABLE, "flex,xformers,flash")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="latentsync.attention"):
        assert create_backend("auto", CPU, torch.float32).name == "standard"
    text = caplog.text
    assert "flash unavailable: disabled by LATENTSYNC_DISABLE_ATTENTION" in text
    assert "xformers unavailable" in text and "flex unavailable: disabled" in text
    assert "auto -> standard" in text


def test_auto_with_lip_focus_needs_flex(monkeypatch):
    monkeypatch.setenv(ENV_DISABLE, "flex")
    with pytest.raises(BackendUnavailableError, match="flex.*disabled"):
        create_backend("auto", CPU, torch.float32, lip_focus=2.0)
    with pytest.raises(BackendUnavailableError, match="flex.*disabled"):  # never a silent fallback without the effect
        create_backend("flex", CPU, torch.float32, lip_focus=2.0)


def test_explicit_unavailable_backend_warns_and_falls_back(monkeypatch, caplog):
    monkeypatch.setenv(ENV_DISABLE, "flex")
    with caplog.at_level(logging.WARNING, logger="latentsync.attention"):
        backend = create_backend("flex", CPU, torch.float32)
    assert backend.name == "flash"
    assert any(r.levelno == logging.WARNING and "flex unavailable" in r.getMessage()
               and "falling back to flash" in r.getMessage() for r in caplog.records)
    with pytest.raises(BackendUnavailableError, match=r"'flex' unavailable.*disabled.*Available here: flash"):
        create_backend("flex", CPU, torch.float32, strict=True)
    # flex and flash gone: explicit flex lands on standard
    monkeypatch.setenv(ENV_DISABLE, "flex,flash")
    assert create_backend("flex", CPU, torch.float32).name == "standard"


def test_xformers_request_without_xformers():
    if importlib.util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed here")
    with pytest.raises(BackendUnavailableError, match="xformers is not installed"):
        create_backend("xformers", CPU, torch.float32, strict=True)
    assert create_backend("xformers", CPU, torch.float32).name == "flash"


def test_backend_report_rows():
    rows = backend_report(CPU, torch.float32)
    json.dumps(rows)  # serialisable for verify_installation
    by = {r["name"]: r for r in rows}
    assert set(by) == set(BACKENDS)
    assert by["standard"]["available"] and by["standard"]["rel_time"] == pytest.approx(1.0)
    for r in rows:
        assert set(r) >= {"name", "available", "reason", "max_rel_err", "time_ms", "rel_time"}
        if r["available"]:
            assert r["reason"] is None and r["max_rel_err"] < 1e-3 and r["time_ms"] > 0
        else:
            assert r["reason"]


# ------------------------------------------------------------------------------------------ UNet golden

@pytest.mark.parametrize("name", BACKENDS)
def test_unet_tiny_golden_per_backend(name, tiny_unet):
    if not availability(name, CPU, torch.float32)[0]:
        pytest.skip(f"{name} unavailable here: {availability(name, CPU, torch.float32)[1]}")
    unet, ref = tiny_unet
    unet.set_attention_backend(create_backend(name, CPU, torch.float32, strict=True))
    sample, audio = ref["sample"], ref["audio"]
    with torch.no_grad():
        for t in (999, 500, 1):
            out = unet(sample, t, encoder_hidden_states=audio)
            assert (out - ref[f"out_t{t}"]).abs().max().item() <= 1e-4, (name, t)

@pytest.fixture(scope="module")
def tiny_unet(reference_dir):
    """(UNet loaded from unet_tiny.safetensors, the file's tensors); tests set their own backend."""
    from safetensors.torch import load_file

    unet = load_unet(reference_dir / "unet_tiny.safetensors", reference_dir / "unet_tiny_config.json")
    return unet.eval(), load_file(str(reference_dir / "unet_tiny.safetensors"))


def test_unet_lip_focus_changes_output(tiny_unet):
    unet, ref = tiny_unet
    unet.set_attention_backend(create_backend("flex", CPU, torch.float32, lip_focus=2.0, strict=True))
    with torch.no_grad():
        out = unet(ref["sample"], 500, encoder_hidden_states=ref["audio"])
    diff = (out - ref["out_t500"]).abs().max().item()
    assert torch.isfinite(out).all() and diff > 1e-6


@pytest.mark.skipif(not __import__("os").environ.get("LATENTSYNC_TEST_COMPILE"),
                    reason="compiling flex on the CPU takes ~20-60 s; set LATENTSYNC_TEST_COMPILE=1")
def test_flex_compiled_on_cpu():
    import torch._dynamo.config as dynamo_config

    settings = {name: getattr(dynamo_config, name) for name in ("recompile_limit", "accumulated_recompile_limit")}
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[8:, 4:12] = True
    flex = FlexAttention(lip_focus=2.0, mouth_mask=mask, compile=True)
    eager = FlexAttention(lip_focus=2.0, mouth_mask=mask, compile=False)
    for role, hw, qs, ks in CASES[:3]:
        q, k, v = _qkv(qs, ks, seed=21)
        assert relative_error(flex(q, k, v, role=role, hw=hw), eager(q, k, v, role=role, hw=hw)) < 1e-5
    assert flex._compiled_keys and not flex._failed
    # the recompile limits were raised around the compiled calls only: the process keeps its own settings
    assert {name: getattr(dynamo_config, name) for name in settings} == settings


def test_recompile_room_raises_the_limits_inside_only():
    import torch._dynamo.config as dynamo_config

    from latentsync.attention.backends import recompile_room

    before = dynamo_config.recompile_limit
    with recompile_room():
        assert dynamo_config.recompile_limit >= 256
    assert dynamo_config.recompile_limit == before
