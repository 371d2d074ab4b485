"""The LatentSync 3D UNet, state-dict compatible with the published ``latentsync_unet.pt``.

Input ``(B, 13, F, H, W)`` latents (noisy 4 + mask 1 + masked face 4 + reference face 4), audio embeddings
``(B*F, S, cross_attention_dim)``; output the noise prediction ``(B, out_channels, F, H, W)``.
Internally every feature map is a frame stack ``(B*F, C, H, W)``: spatial layers treat frames independently,
the residual blocks' GroupNorm spans the clip, the motion modules attend over the frames.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attention.core import AttentionBackend
from .attention_layers import Attention
from .deepcache import DeepCacheState
from .embeddings import TimestepEmbedding, timestep_features
from .resnet import ClipGroupNorm, FrameGroupNorm
from .transformer import GuidedAudio
from .unet_blocks import DOWN_BLOCKS, UP_BLOCKS, BlockSettings, DownBlock3D, UNetMidBlock3DCrossAttn, UpBlock3D


def _per_block(value: int | Sequence[int], n: int) -> list[int]:
    return [value] * n if isinstance(value, int) else list(value)


class UNet3DConditionModel(nn.Module):
    """Build with the ``model:`` section of ``configs/unet/*.yaml`` as keyword arguments."""

    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 13,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Sequence[str] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        mid_block_type: str = "UNetMidBlock3DCrossAttn",
        up_block_types: Sequence[str] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 384,
        attention_head_dim: int | Sequence[int] = 8,  # the published code passes this as the number of heads
        resnet_time_scale_shift: str = "default",
        use_inflated_groupnorm: bool = False,
        use_motion_module: bool = False,
        motion_module_resolutions: Sequence[int] = (1, 2, 4, 8),
        motion_module_mid_block: bool = False,
        motion_module_decoder_only: bool = False,
        motion_module_type: str | None = None,
        motion_module_kwargs: dict | None = None,
        add_audio_layer: bool = False,
    ):
        super().__init__()
        self.config = SimpleNamespace(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        if act_fn not in ("silu", "swish"):
            raise ValueError(f"unsupported act_fn {act_fn!r}; the LatentSync UNet uses 'silu'")
        if resnet_time_scale_shift != "default":
            raise ValueError(f"unsupported resnet_time_scale_shift {resnet_time_scale_shift!r}; expected 'default'")
        if mid_block_type != "UNetMidBlock3DCrossAttn":
            raise ValueError(f"unsupported mid_block_type {mid_block_type!r}")
        unknown = [t for t in down_block_types if t not in DOWN_BLOCKS]
        unknown += [t for t in up_block_types if t not in UP_BLOCKS]
        if unknown:
            raise ValueError(f"unsupported block types {unknown}")

        n = len(block_out_channels)
        heads = _per_block(attention_head_dim, n)
        time_dim = block_out_channels[0] * 4
        settings = BlockSettings(
            temb_channels=time_dim, groups=norm_num_groups, eps=float(norm_eps),
            cross_attention_dim=cross_attention_dim, add_audio_layer=add_audio_layer,
            clip_norm=not use_inflated_groupnorm, motion_module_type=motion_module_type,
            motion_module_kwargs=dict(motion_module_kwargs or {}),
        )

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_dim)

        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()  # registered before mid_block: the checkpoint's tensor order
        cout = block_out_channels[0]
        for i, kind in enumerate(down_block_types):
            cin, cout = cout, block_out_channels[i]
            self.down_blocks.append(DownBlock3D(
                cin, cout, layers_per_block, settings, heads=heads[i] if DOWN_BLOCKS[kind] else None,
                add_downsample=i < n - 1, downsample_padding=downsample_padding,
                use_motion_module=use_motion_module and 2 ** i in motion_module_resolutions
                and not motion_module_decoder_only,
            ))

        self.mid_block = UNetMidBlock3DCrossAttn(
            block_out_channels[-1], settings, heads=heads[-1], scale=float(mid_block_scale_factor),
            use_motion_module=use_motion_module and motion_module_mid_block,
        )

        rev_channels, rev_heads = list(reversed(block_out_channels)), list(reversed(heads))
        cout = rev_channels[0]
        for i, kind in enumerate(up_block_types):
            cprev, cout = cout, rev_channels[i]
            cin = rev_channels[min(i + 1, n - 1)]
            self.up_blocks.append(UpBlock3D(
                cin, cprev, cout, layers_per_block + 1, settings, heads=rev_heads[i] if UP_BLOCKS[kind] else None,
                add_upsample=i < n - 1,
                use_motion_module=use_motion_module and 2 ** (n - 1 - i) in motion_module_resolutions,
            ))

        norm_out = FrameGroupNorm if use_inflated_groupnorm else ClipGroupNorm
        self.conv_norm_out = norm_out(norm_num_groups, block_out_channels[0], eps=float(norm_eps))
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    # ----------------------------------------------------------------------------------------------------------
    def attention_modules(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention)]

    def set_attention_backend(self, backend: AttentionBackend) -> int:
        """Install one backend object into every attention module; returns how many were set."""
        modules = self.attention_modules()
        for module in modules:
            module.set_backend(backend)
        return len(modules)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    @property
    def _first_layer_hears_audio(self) -> bool:
        """The first down block's first layer has a cross-attention to the audio (as every published config)."""
        attentions = self.down_blocks[0].attentions
        return len(attentions) > 0 and attentions[0].transformer_blocks[0].attn2 is not None

    # ----------------------------------------------------------------------------------------------------------
    def _time_embedding(self, timestep, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)
        features = timestep_features(t, self.config.block_out_channels[0], self.config.flip_sin_to_cos,
                                     self.config.freq_shift)
        return self.time_embedding(features.to(self.dtype))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor | None = None,
                deep_cache: DeepCacheState | None = None) -> torch.Tensor:
        """``sample``: (B, in_channels, F, H, W); ``timestep``: scalar or (B,); ``encoder_hidden_states``: audio
        embeddings (B*F, S, cross_attention_dim) or (B, F, S, cross_attention_dim), or ``GuidedAudio`` of the second
        half's frames when the first half is guidance's unconditional one. Returns (B, out, F, H, W).
        ``deep_cache``: opt-in DeepCache (see ``deepcache.py``; changes the output); None runs the exact UNet."""
        b, c, num_frames, h, w = sample.shape
        audio = encoder_hidden_states
        guided = isinstance(audio, GuidedAudio)  # the first half of the batch has all-zero audio
        if guided:
            audio = audio.conditional
        if audio is not None and audio.dim() == 4:
            audio = audio.reshape(-1, *audio.shape[2:])
        frames = b * num_frames // 2 if guided else b * num_frames
        if audio is not None and audio.shape[0] != frames:
            raise ValueError(f"audio embeddings cover {audio.shape[0]} frames, the latents {b}x{num_frames}")
        if audio is not None:
            audio = audio.to(self.dtype)
            audio = GuidedAudio(audio) if guided else audio
        sample = sample.to(self.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        temb_act = F.silu(self._time_embedding(timestep, b, sample.device))  # every resnet applies SiLU first
        shared = guided and self._first_layer_hears_audio  # the halves are the same until its cross-attention
        clips = b // 2 if shared else b
        x = self.conv_in(sample[:clips].transpose(1, 2).reshape(clips * num_frames, c, h, w))

        if deep_cache is not None and deep_cache.reuse:
            # Cached step: only the shallowest branch, conv_in -> last up layer, on the kept deep features.
            x = torch.cat([x, x]) if shared else x
            x = self._last_up_layer(deep_cache.cached(x), x, temb_act, audio, num_frames)
        else:
            x = self._full(x, temb_act, audio, num_frames, deep_cache, shared)

        x = self.conv_out(F.silu(self.conv_norm_out(x, num_frames), inplace=True))
        return x.view(b, num_frames, -1, h, w).transpose(1, 2).contiguous()

    def _full(self, x, temb_act, audio, num_frames, deep_cache: DeepCacheState | None, shared: bool = False
              ) -> torch.Tensor:
        """``shared``: ``x`` is the one half of a guidance batch both halves share; the first layer's transformer
        makes both."""
        skips = [torch.cat([x, x]) if shared else x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb_act, audio, num_frames)
            skips.extend(block_skips)

        x = self.mid_block(x, temb_act, audio, num_frames)

        # With DeepCache the last up block runs below, layer by layer.
        up_blocks = self.up_blocks if deep_cache is None else self.up_blocks[:-1]
        for block in up_blocks:
            block_skips = skips[-len(block.resnets):]
            del skips[-len(block.resnets):]
            # Upsample to the next skip's size (2x, or odd latent sizes that 2x would overshoot).
            size = tuple(skips[-1].shape[-2:]) if skips and block.upsamplers is not None else None
            x = block(x, block_skips, temb_act, audio, num_frames, upsample_size=size)
        if deep_cache is None:
            return x

        # DeepCache full step: the same ops as UpBlock3D.forward (the last block has no upsampler; the skips
        # left are its own, consumed last-first), keeping what enters its last layer from the deeper path.
        last = self.up_blocks[-1]
        for i in range(len(last.resnets) - 1):
            x = last.layer(i, torch.cat([x, skips.pop()], dim=1), temb_act, audio, num_frames)
        deep_cache.features = x
        return self._last_up_layer(x, skips.pop(), temb_act, audio, num_frames)

    def _last_up_layer(self, deep, shallow, temb_act, audio, num_frames) -> torch.Tensor:
        last = self.up_blocks[-1]
        return last.layer(len(last.resnets) - 1, torch.cat([deep, shallow], dim=1), temb_act, audio, num_frames)
