"""The sd-vae-ft-mse autoencoder, loaded with diffusers from a local folder."""

from __future__ import annotations

from pathlib import Path

import torch


def load_vae(vae_dir: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """``AutoencoderKL`` from ``vae_dir`` (config.json + diffusion_pytorch_model.safetensors), in eval mode."""
    from diffusers import AutoencoderKL

    vae_dir = Path(vae_dir)
    try:
        vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"VAE at {vae_dir} could not be loaded ({error}); re-download it with: "
                         f"python -m latentsync.checkpoints download --dir {vae_dir.parent}") from error
    return vae.to(device).eval().requires_grad_(False)
