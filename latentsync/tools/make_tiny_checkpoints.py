"""Write a complete, real-format, tiny LatentSync checkpoint set for tests and smoke runs.

    python -m latentsync.tools.make_tiny_checkpoints DIR

DIR receives the published layout of both versions (see latentsync/checkpoints.py) with random weights small
enough for a CPU: ``latentsync_unet.pt`` (1.6) and ``1.5/latentsync_unet.pt`` (a dict with ``state_dict``, as
published), their yaml ``unet_tiny.yaml``, ``whisper/tiny.pt`` (openai-whisper format), ``vae/`` (diffusers
AutoencoderKL folder). Outputs are noise, but every loader, shape and code path is the real one. Run the pipeline
with ``--unet-config DIR/unet_tiny.yaml``: ``--resolution 512`` (1.6) or ``256`` (1.5) picks the version and the
face size; the library alone uses the yaml's face size, ``--resolution`` here (default 128, fast on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Mapping

import torch
import yaml

from ..checkpoints import WHISPER_FILE
from ..mask import MASK_PATH

TINY_RESOLUTION = 128  # face crops; latents 16 x 16
TINY_AUDIO_DIM = 24  # whisper width = UNet cross-attention width
TINY_WHISPER_LAYERS = 4  # 4 blocks + input embedding = 5 layers; 10 steps x 5 = 50 audio tokens, as published

TINY_UNET = {
    "act_fn": "silu", "add_audio_layer": True, "attention_head_dim": 8, "block_out_channels": [32, 64, 64, 64],
    "center_input_sample": False, "cross_attention_dim": TINY_AUDIO_DIM,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 13, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32, "out_channels": 4, "sample_size": 16,
    "resnet_time_scale_shift": "default", "use_motion_module": True, "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": False, "motion_module_decoder_only": False, "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 8, "num_transformer_block": 1, "attention_block_types": ["Temporal_Self"] * 2,
        "temporal_position_encoding": True, "temporal_position_encoding_max_len": 24,
        "temporal_attention_dim_div": 1, "zero_initialize": False},  # non-zero: the motion modules do something
}

TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1,
    "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 4, "sample_size": TINY_RESOLUTION,
    "scaling_factor": 0.18215,
}


def _dims_dict(dims) -> dict:
    if dataclasses.is_dataclass(dims):
        return dataclasses.asdict(dims)
    return {key: int(value) for key, value in dict(dims).items()}


def save_whisper_checkpoint(path: str | Path, dims, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Write an openai-whisper format checkpoint ``{"dims": {...}, "model_state_dict": {...}}`` atomically (what
    ``WhisperEncoder.from_checkpoint`` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"dims": _dims_dict(dims),
               "model_state_dict": {name: tensor.detach().cpu().contiguous().clone()
                                    for name, tensor in state_dict.items()}}
    handle, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(payload, temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def make_tiny_whisper_checkpoint(path: str | Path, seed: int = 0, *, n_audio_state: int = 64,
                                 n_audio_layer: int = 2, n_audio_head: int | None = None, n_mels: int = 80,
                                 n_text_layer: int = 1, n_vocab: int = 51865) -> Path:
    """Write a small, randomly initialised, complete openai-whisper checkpoint (encoder and decoder).

    Seeded and independent of the global RNG state. ``n_audio_head`` defaults to 4 (or the largest of 2, 1
    that divides ``n_audio_state``).
    """
    import whisper

    if n_audio_state % 2:
        raise ValueError(f"n_audio_state must be even (sinusoidal positions), got {n_audio_state}")
    if n_audio_head is None:
        n_audio_head = next(h for h in (4, 2, 1) if n_audio_state % h == 0)
    dims = whisper.model.ModelDimensions(
        n_mels=n_mels, n_audio_ctx=1500, n_audio_state=n_audio_state, n_audio_head=n_audio_head,
        n_audio_layer=n_audio_layer, n_vocab=n_vocab, n_text_ctx=448, n_text_state=n_audio_state,
        n_text_head=n_audio_head, n_text_layer=n_text_layer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = whisper.model.Whisper(dims)
        with torch.no_grad():  # the decoder's positional embedding is created uninitialised
            model.decoder.positional_embedding.normal_(0.0, 0.01)
    return save_whisper_checkpoint(path, dims, model.state_dict())


def write_tiny_unet(folder: Path, seed: int, resolution: int = TINY_RESOLUTION) -> Path:
    from ..models.unet import UNet3DConditionModel

    torch.manual_seed(seed)
    model = UNet3DConditionModel(**TINY_UNET)
    for name in ("latentsync_unet.pt", "1.5/latentsync_unet.pt"):  # the 1.6 and the 1.5 layout
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "global_step": 0}, folder / name)
    config = {"data": {"resolution": resolution, "num_frames": 16, "mask_image_path": str(MASK_PATH),
                       "audio_sample_rate": 16000, "video_fps": 25},
              "run": {"inference_steps": 20, "guidance_scale": 1.5, "seed": 1247},
              "model": TINY_UNET}
    path = folder / "unet_tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_tiny_vae(folder: Path, seed: int) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(**TINY_VAE).save_pretrained(str(folder / "vae"), safe_serialization=True)


def make_tiny_checkpoints(folder: str | Path, seed: int = 0, resolution: int = TINY_RESOLUTION) -> Path:
    """Write the tiny set into ``folder``; returns the path of the tiny UNet yaml (faces at ``resolution`` px)."""

    folder = Path(folder)
    (folder / "whisper").mkdir(parents=True, exist_ok=True)
    config = write_tiny_unet(folder, seed, resolution)
    write_tiny_vae(folder, seed)
    make_tiny_whisper_checkpoint(folder / WHISPER_FILE, seed=seed, n_audio_state=TINY_AUDIO_DIM,
                                 n_audio_layer=TINY_WHISPER_LAYERS)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentsync.tools.make_tiny_checkpoints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=TINY_RESOLUTION,
                        help="the yaml's face size in px, a multiple of 64 (the library's default for this set; the "
                             "command line's --resolution overrides it)")
    args = parser.parse_args(argv)
    config = make_tiny_checkpoints(args.folder, args.seed, args.resolution)
    print(f"tiny checkpoints written to {args.folder}; UNet config: {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
