"""The sd-vae-ft-mse autoencoder, loaded with diffusers from a local folder."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import torch_load_detail, unsafe_pickle

# stabilityai/sd-vae-ft-mse's config.json: the VAE every LatentSync version uses
SD_VAE_FT_MSE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
                 "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
                 "layers_per_block": 2, "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32,
                 "sample_size": 512, "scaling_factor": 0.18215}


def load_vae(vae_dir: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """``AutoencoderKL`` from ``vae_dir`` (config.json + diffusion_pytorch_model.safetensors), in eval mode."""
    from diffusers import AutoencoderKL

    vae_dir = Path(vae_dir)
    try:
        vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as error:
        from .checkpoints import download_command

        command = download_command(None, vae_dir.parent)
        if unsafe_pickle(error):
            raise ValueError(f"the VAE at {vae_dir} is not a safe checkpoint: it holds Python objects besides its "
                             f"weights, which are never loaded here (they could run code); download the official "
                             f"one with: {command}") from None
        detail = torch_load_detail(error)
        raise ValueError(f"VAE at {vae_dir} could not be loaded ({detail}); re-download it with: {command}") from error
    return vae.to(device).eval().requires_grad_(False)
