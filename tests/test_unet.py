"""The LatentSync UNet: checkpoint layout, exactness against the published implementation, strict loading,
attention backend wiring."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentsync.attention.core import ROLES, StandardAttention
from latentsync.models import (CheckpointCorruptError, CheckpointMismatchError, UNet3DConditionModel, load_unet,
                               load_unet_config)
from latentsync.models.motion_module import PositionalEncoding
from latentsync.models.resnet import ClipGroupNorm

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(reference_dir):
    return json.loads((reference_dir / "unet_stage2_keys.json").read_text())


@pytest.fixture(scope="module")
def tiny_config(reference_dir):
    return json.loads((reference_dir / "unet_tiny_config.json").read_text())


@pytest.fixture(scope="module")
def tiny_tensors(reference_dir):
    return load_file(str(reference_dir / "unet_tiny.safetensors"))


@pytest.fixture(scope="module")
def tiny_unet(reference_dir, tiny_config):
    return load_unet(reference_dir / "unet_tiny.safetensors", tiny_config)


@pytest.fixture(scope="module")
def tiny_state_dict(tiny_tensors):
    return {k[len("model."):]: v for k, v in tiny_tensors.items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def full_meta_model(manifest):
    """The full-size (1.27 B parameter) model without storage."""
    with torch.device("meta"):
        return UNet3DConditionModel(**manifest["config"]).eval()


def test_full_model_state_dict_matches_published_checkpoint(full_meta_model, manifest):
    ours = [[name, list(t.shape)] for name, t in full_meta_model.state_dict().items()]
    assert ours == manifest["tensors"]  # names, shapes and order
    assert len(ours) == 1246


@pytest.mark.parametrize("latent_size", [64, 36])  # 512 px faces; a size that is not a multiple of 8
def test_full_model_forward_shapes_on_meta(full_meta_model, latent_size):
    with torch.device("meta"), torch.no_grad():
        sample = torch.empty(2, 13, 16, latent_size, latent_size)
        audio = torch.empty(2 * 16, 50, 384)
        out = full_meta_model(sample, torch.tensor(999), encoder_hidden_states=audio)
    assert out.shape == (2, 4, 16, latent_size, latent_size)


@pytest.mark.parametrize("name, resolution", [("stage2.yaml", 256), ("stage2_512.yaml", 512)])
def test_configs_match_published(manifest, reference_dir, name, resolution):
    path = REPO / "latentsync" / "configs" / "unet" / name
    assert load_unet_config(path) == manifest["config"]
    import yaml
    full = yaml.safe_load(path.read_text())
    assert full["data"]["resolution"] == resolution and full["data"]["num_frames"] == 16
    assert full["run"]["inference_steps"] == 20 and full["run"]["guidance_scale"] == 1.5
    assert (REPO / full["data"]["mask_image_path"]).is_file()
    scheduler = json.loads((REPO / "latentsync" / "configs" / "scheduler_config.json").read_text())
    assert scheduler == json.loads((reference_dir / "pipeline_tiny.json").read_text())["scheduler"]


@pytest.mark.parametrize("timestep", [999, 500, 1])
def test_tiny_unet_matches_reference(tiny_unet, tiny_tensors, timestep):
    with torch.no_grad():
        out = tiny_unet(tiny_tensors["sample"], torch.tensor(timestep), encoder_hidden_states=tiny_tensors["audio"])
    expected = tiny_tensors[f"out_t{timestep}"]
    assert out.shape == expected.shape == (2, 4, 8, 16, 16)
    assert (out - expected).abs().max().item() <= 1e-4


def test_loaded_in_float64_casts_inputs(reference_dir, tiny_config, tiny_tensors):
    model = load_unet(reference_dir / "unet_tiny.safetensors", tiny_config, dtype=torch.float64)
    assert model.dtype == torch.float64 and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        out = model(tiny_tensors["sample"], 1, encoder_hidden_states=tiny_tensors["audio"])  # float32 inputs
    assert out.dtype == torch.float64
    assert (out - tiny_tensors["out_t1"]).abs().max().item() <= 1e-4


def test_clip_group_norm_equals_video_group_norm():
    torch.manual_seed(0)
    b, c, f, h, w = 2, 8, 3, 5, 4
    video = torch.randn(b, c, f, h, w)
    reference = torch.nn.GroupNorm(4, c, eps=1e-5)
    torch.nn.init.normal_(reference.weight)
    torch.nn.init.normal_(reference.bias)
    ours = ClipGroupNorm(4, c, eps=1e-5)
    ours.load_state_dict(reference.state_dict())
    frames = video.transpose(1, 2).reshape(b * f, c, h, w)
    got = ours(frames, f).view(b, f, c, h, w).transpose(1, 2)
    torch.testing.assert_close(got, reference(video), atol=1e-5, rtol=1e-5)


def test_position_encoding_covers_max_len_frames(tiny_state_dict):
    stored = next(t for name, t in tiny_state_dict.items() if name.endswith("pos_encoder.pe"))
    pe = PositionalEncoding(stored.shape[2], max_len=stored.shape[1])
    assert torch.equal(pe.pe, stored)  # the table we compute is the one in the checkpoint
    assert pe(torch.zeros(3, 24, stored.shape[2])).shape == (3, 24, stored.shape[2])
    with pytest.raises(ValueError, match="at most 24"):
        pe(torch.zeros(3, 25, stored.shape[2]))


# ---------------------------------------------------------------------------------------------- strict loading
def test_load_published_pt_format_and_bare_state_dict(tmp_path, tiny_state_dict, tiny_config, tiny_unet):
    wrapped, bare = tmp_path / "latentsync_unet.pt", tmp_path / "bare.pt"
    torch.save({"global_step": 7, "state_dict": tiny_state_dict}, wrapped)
    torch.save(tiny_state_dict, bare)
    expected = tiny_unet.state_dict()
    for path in (wrapped, bare):
        model = load_unet(path, tiny_config)
        assert not model.training
        loaded = model.state_dict()
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_mismatched_checkpoint_names_the_bad_keys(tmp_path, tiny_state_dict, tiny_config):
    bad = dict(tiny_state_dict)
    removed = "mid_block.resnets.1.conv2.bias"
    reshaped = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    del bad[removed]
    bad["extra.weight"] = torch.zeros(3)
    bad[reshaped] = torch.zeros(64, 768)
    path = tmp_path / "wrong_unet.pt"
    torch.save({"state_dict": bad}, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_unet(path, tiny_config)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(path) in message
    assert "1 missing" in message and removed in message
    assert "1 unexpected" in message and "extra.weight" in message
    assert "1 mis-shaped" in message and reshaped in message
    assert info.value.missing == [removed] and info.value.unexpected == ["extra.weight"]


def test_wrong_config_lists_counts(tmp_path, tiny_state_dict, manifest):
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny_state_dict}, path)
    with pytest.raises(CheckpointMismatchError, match=r"mis-shaped key\(s\): .*\(\d+ more\)"):
        load_unet(path, manifest["config"])  # the tiny weights against the full-size config


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupt_checkpoint_gives_clear_error(tmp_path, tiny_config, content):
    path = tmp_path / "latentsync_unet.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointCorruptError) as info:
        load_unet(path, tiny_config)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) and "re-download" in str(info.value)


def test_missing_checkpoint_names_the_path(tmp_path, tiny_config):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_unet(tmp_path / "nowhere.pt", tiny_config)


# ------------------------------------------------------------------------------------------ attention backends
def expected_attention_modules(config) -> int:
    """Spatial transformers carry self + audio attention; motion modules one attention per block type."""
    n, layers = len(config["block_out_channels"]), config["layers_per_block"]
    res = config["motion_module_resolutions"]
    transformers = sum(layers for t in config["down_block_types"] if t.startswith("CrossAttn"))
    transformers += sum(layers + 1 for t in config["up_block_types"] if t.startswith("CrossAttn")) + 1  # + mid
    motion = sum(layers for i in range(n) if 2 ** i in res)
    motion += sum(layers + 1 for i in range(n) if 2 ** (n - 1 - i) in res)
    kwargs = config["motion_module_kwargs"]
    per_motion = kwargs["num_transformer_block"] * len(kwargs["attention_block_types"])
    return transformers * (1 + config["add_audio_layer"]) + motion * per_motion


class RecordingBackend(StandardAttention):
    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, *, role, hw=None):
        self.calls.append((role, hw, tuple(q.shape), tuple(k.shape)))
        return super().__call__(q, k, v, role=role, hw=hw)


def test_backend_installed_everywhere_and_sees_every_role(tiny_config, tiny_state_dict, tiny_tensors, manifest):
    assert expected_attention_modules(manifest["config"]) == 72
    model = UNet3DConditionModel(**tiny_config).eval()
    model.load_state_dict(tiny_state_dict)
    backend = RecordingBackend()
    count = model.set_attention_backend(backend)
    assert count == expected_attention_modules(tiny_config) == len(model.attention_modules())
    assert all(m.backend is backend for m in model.attention_modules())
    assert not any("backend" in name for name in model.state_dict())

    sample, audio = tiny_tensors["sample"], tiny_tensors["audio"]
    b, _, frames, h, w = sample.shape
    with torch.no_grad():
        out = model(sample, 500, encoder_hidden_states=audio)
    assert (out - tiny_tensors["out_t500"]).abs().max().item() <= 1e-4
    assert len(backend.calls) == count  # each attention module runs once per forward
    assert {role for role, *_ in backend.calls} == set(ROLES)
    grids = {(h >> s, w >> s) for s in range(len(tiny_config["block_out_channels"]))}
    for role, hw, q_shape, k_shape in backend.calls:
        if role == "temporal_self":
            assert hw is None and q_shape[2] == k_shape[2] == frames
        else:
            assert hw in grids and q_shape[0] == b * frames and q_shape[2] == hw[0] * hw[1]
            assert k_shape[2] == (audio.shape[1] if role == "audio_cross" else q_shape[2])
