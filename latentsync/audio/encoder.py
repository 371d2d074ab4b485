"""The Whisper encoder stage: openai-whisper checkpoint -> (T50, n_layer+1, d) audio features.

What the published LatentSync does (its ``Audio2Feature`` on a patched whisper ``transcribe``), reproduced here:

* log-mel of the whole track at once (whisper's clamp ``max(log_spec, log_spec.max() - 8)`` uses the maximum
  over the whole track);
* the encoder runs on consecutive windows of ``2 * n_audio_ctx`` mel frames (3000 = 30 s), the last window
  zero-padded in log-mel space (``whisper.pad_or_trim``);
* per window it keeps the input embedding (conv, gelu, conv, gelu, + positional embedding: what enters block 0)
  and every block's output, before ``ln_post``: ``n_layer + 1`` layers;
* from a window with ``m`` mel frames it keeps the first ``m // 2`` steps; the windows are concatenated.

The mel is computed in blocks (same frames, same filters as ``whisper.log_mel_spectrogram``, the clamp
applied once with the global maximum), so a long track never holds its whole STFT; the encoder sees one
window (or ``window_batch`` windows) at a time and writes into the preallocated feature tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WhisperCheckpointError, torch_load_detail, unsafe_pickle  # noqa: F401 (raised here)
from .loading import SAMPLE_RATE

HOP_LENGTH = 160
N_FFT = 400
_MEL_BLOCK_FRAMES = 30000  # 5 minutes of mel frames per STFT block



def _whisper():
    try:
        import whisper.audio
        import whisper.model
    except ImportError as error:  # pragma: no cover - a listed requirement
        raise ImportError("the audio stage needs openai-whisper: pip install 'openai-whisper>=20240930'") from error
    return whisper


# -- checkpoints --------------------------------------------------------------------------------------------------

def _read_checkpoint(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"Whisper checkpoint not found: {path} (expected an openai-whisper .pt file "
                                "such as whisper/tiny.pt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if unsafe_pickle(error):  # torch's own text would suggest an unsafe load: never ours
            raise WhisperCheckpointError(
                f"Whisper checkpoint {path} holds Python objects besides its weights, which are never loaded here "
                "(they could run code): use the official openai-whisper tiny.pt, e.g. python -m "
                "latentsync.checkpoints download") from None
        detail = torch_load_detail(error)
        raise WhisperCheckpointError(f"Whisper checkpoint {path} could not be read ({type(error).__name__}: "
                                     f"{detail}); it is corrupt or not an openai-whisper .pt file: download it "
                                     "again") from error
    if not isinstance(checkpoint, dict) or "dims" not in checkpoint or "model_state_dict" not in checkpoint:
        found = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WhisperCheckpointError(f"Whisper checkpoint {path} is not in the openai-whisper format (a dict with "
                                     f"'dims' and 'model_state_dict'); found {found}")
    return checkpoint


# -- the encoder ----------------------------------------------------------------------------------------------

class WhisperEncoder:
    """The audio encoder of an openai-whisper checkpoint, producing LatentSync's layered audio features."""

    def __init__(self, model: nn.Module, dims, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, path: Path | None = None):
        # weights stay float32, as openai-whisper keeps them: its Linear/Conv1d cast them to the input's dtype
        # and its LayerNorm computes in float32, so fp16/bf16 runs need float32 parameters
        self.model = model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        self.dims = dims
        self.device = torch.device(device)
        self.dtype = dtype
        self.path = path

    @property
    def num_layers(self) -> int:
        """Layers per feature step: the input embedding plus every block (``n_audio_layer + 1``)."""
        return self.dims.n_audio_layer + 1

    @property
    def dim(self) -> int:
        return self.dims.n_audio_state

    @property
    def window_frames(self) -> int:
        """Mel frames per encoder window (3000 = 30 s for every published Whisper)."""
        return 2 * self.dims.n_audio_ctx

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "WhisperEncoder":
        """Load the encoder of an openai-whisper ``.pt`` (``weights_only``, strict keys; the decoder is skipped).

        ``dtype`` is the compute dtype of the encoder's activations (float16/bfloat16 on a GPU); the weights stay
        float32 as in openai-whisper, which casts them per layer and runs its layer norms in float32.
        """
        whisper = _whisper()
        path = Path(path)
        checkpoint = _read_checkpoint(path)
        try:
            dims = whisper.model.ModelDimensions(**checkpoint["dims"])
        except TypeError as error:
            raise WhisperCheckpointError(f"Whisper checkpoint {path} has unusable dims {checkpoint['dims']!r}: "
                                         f"{error}") from error
        prefix = "encoder."
        weights = {name[len(prefix):]: tensor for name, tensor in checkpoint["model_state_dict"].items()
                   if name.startswith(prefix)}
        # built on the CPU (the "meta" device would pull in torch's decomposition tables: seconds of import)
        encoder = whisper.model.AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                             dims.n_audio_head, dims.n_audio_layer)
        expected = set(encoder.state_dict())
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        if missing or unexpected:
            raise WhisperCheckpointError(
                f"Whisper checkpoint {path} does not match its dims: missing encoder tensors "
                f"{_names(missing, prefix)}, unexpected {_names(unexpected, prefix)}")
        try:
            encoder.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            detail = " ".join(str(error).split())[:400]
            raise WhisperCheckpointError(f"Whisper checkpoint {path} does not match its dims: {detail}") from error
        return cls(encoder, dims, device=device, dtype=dtype, path=path)

    # -- mel ---------------------------------------------------------------------------------------------------

    def log_mel(self, audio: np.ndarray | torch.Tensor, block_frames: int = _MEL_BLOCK_FRAMES) -> torch.Tensor:
        """Whisper's log-mel ``(n_mels, samples // 160)`` of the whole track, float32 on the CPU.

        Equal to ``whisper.log_mel_spectrogram(audio)`` (same reflect-padded frames, window and filters, the
        clamp taken over the whole track), computed ``block_frames`` frames at a time.
        """
        whisper = _whisper()
        samples = _as_tensor(audio)
        num = samples.shape[0]
        if num <= N_FFT // 2:
            raise ValueError(f"the audio ({num} samples at 16 kHz) is too short for a spectrogram")
        num_frames = num // HOP_LENGTH
        filters = whisper.audio.mel_filters(torch.device("cpu"), self.dims.n_mels)
        window = torch.hann_window(N_FFT)
        half = N_FFT // 2
        mel = torch.empty(self.dims.n_mels, num_frames, dtype=torch.float32)
        for first in range(0, num_frames, block_frames):
            last = min(first + block_frames, num_frames)
            # frame j covers padded samples [j*160, j*160 + 400) = audio [j*160 - 200, j*160 + 200)
            block = _reflect_slice(samples, first * HOP_LENGTH - half, (last - 1) * HOP_LENGTH + half)
            stft = torch.stft(block, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
            power = stft.abs() ** 2
            mel[:, first:last] = torch.clamp(filters @ power, min=1e-10).log10()
        mel = torch.maximum(mel, mel.max() - 8.0)
        return (mel + 4.0) / 4.0

    # -- features ----------------------------------------------------------------------------------------------

    def num_steps(self, num_samples: int) -> int:
        """Feature steps (T50) produced for ``num_samples`` of 16 kHz audio."""
        frames = num_samples // HOP_LENGTH
        full, rest = divmod(frames, self.window_frames)
        return full * (self.window_frames // 2) + rest // 2

    @torch.inference_mode()
    def features(self, audio: np.ndarray | torch.Tensor, *, out_device: str | torch.device = "cpu",
                 out_dtype: torch.dtype = torch.float32, window_batch: int = 1, seamless: bool = False
                 ) -> torch.Tensor:
        """Audio features ``(T50, n_layer+1, d)`` at 50 steps/s of a float mono 16 kHz waveform.

        ``T50 = sum over 30 s windows of (mel frames in the window) // 2`` (``samples // 320`` up to window
        rounding). The encoder runs on ``self.device`` / ``self.dtype``, ``window_batch`` windows per call; the
        result is stored on ``out_device`` in ``out_dtype``.

        ``seamless``: windows every 15 s instead of every 30 s, each step the cross-faded mix of the two windows
        that hold it (``_seamless``), so no feature jumps where one window ends; audio of one window (30 s or
        less) gives the published features unchanged.
        """
        whisper = _whisper()
        self.model.to(self.device)  # back from the CPU if a memory tier put it there (``offload``)
        samples = _as_tensor(audio)
        if samples.shape[0] < 2 * HOP_LENGTH:
            raise ValueError(f"the audio ({samples.shape[0] / SAMPLE_RATE * 1000:.1f} ms) is too short: it needs at "
                             "least one 20 ms feature step, and one video frame of audio for any output")
        mel = self.log_mel(samples)
        total_frames, size = mel.shape[1], self.window_frames
        if seamless and total_frames > size:
            return self._seamless(mel, window_batch).to(device=out_device, dtype=out_dtype)
        out = torch.empty(self.num_steps(samples.shape[0]), self.num_layers, self.dim, dtype=out_dtype,
                          device=out_device)
        starts = list(range(0, total_frames, size))
        step = 0
        for group in range(0, len(starts), max(1, int(window_batch))):
            seeks = starts[group:group + max(1, int(window_batch))]
            batch = torch.stack([whisper.audio.pad_or_trim(mel[:, seek:seek + size], size) for seek in seeks])
            layers = self._encode(batch.to(device=self.device, dtype=self.dtype))
            for row, seek in enumerate(seeks):
                keep = (min(seek + size, total_frames) - seek) // 2
                for index, layer in enumerate(layers):
                    out[step:step + keep, index] = layer[row, :keep].to(device=out_device, dtype=out_dtype)
                step += keep
        assert step == out.shape[0]
        return out

    def offload(self) -> None:
        """Weights to the CPU until the next ``features`` (the memory tiers that keep the GPU for the UNet)."""
        self.model.to("cpu")

    def _seamless(self, mel: torch.Tensor, window_batch: int) -> torch.Tensor:
        """Features from windows that overlap by half (a new one every 15 s while the last one ends before the
        audio), cross-faded with sin^2 / cos^2 weights that sum to 1: a window's steps enter with weight 0 where
        the window starts and leave with weight 0 where it ends, so its edges (where the positions restart) never
        show. The first window's first half and the last window's second half have no partner and weigh 1.
        Float32 sums on the CPU; time and memory linear in the audio's length (about twice the encoder work)."""
        whisper = _whisper()
        total_frames, size = mel.shape[1], self.window_frames
        hop, steps = size // 2, size // 2  # mel frames between windows; feature steps per full window
        starts = [0]
        while starts[-1] + size < total_frames:
            starts.append(starts[-1] + hop)
        out = torch.zeros(total_frames // 2, self.num_layers, self.dim, dtype=torch.float32)
        position = torch.arange(steps, dtype=torch.float64)
        rising = torch.sin(torch.pi * (position + 0.5) / steps) ** 2  # sin^2 + its shift by half = 1
        batch = max(1, int(window_batch))
        for group in range(0, len(starts), batch):
            seeks = starts[group:group + batch]
            windows = torch.stack([whisper.audio.pad_or_trim(mel[:, seek:seek + size], size) for seek in seeks])
            layers = torch.stack(self._encode(windows.to(device=self.device, dtype=self.dtype)), dim=2)
            for row, seek in enumerate(seeks):
                keep = (min(seek + size, total_frames) - seek) // 2
                weight = rising.clone()
                if seek == 0:
                    weight[:steps // 2] = 1.0
                if seek == starts[-1]:
                    weight[steps // 2:] = 1.0
                weight = weight[:keep].to(torch.float32)[:, None, None]
                out[seek // 2:seek // 2 + keep] += weight * layers[row, :keep].to(device="cpu", dtype=torch.float32)
        return out

    def _encode(self, mel: torch.Tensor) -> list[torch.Tensor]:
        """Input embedding and every block output, each (batch, n_audio_ctx, d), for mel (batch, n_mels, 3000)."""
        encoder = self.model
        x = F.gelu(encoder.conv1(mel))
        x = F.gelu(encoder.conv2(x))
        x = x.permute(0, 2, 1)
        x = (x + encoder.positional_embedding).to(x.dtype)
        layers = [x]
        for block in encoder.blocks:
            x = block(x)
            layers.append(x)
        return layers

    def __repr__(self) -> str:
        return (f"WhisperEncoder(path={str(self.path)!r}, layers={self.num_layers}, dim={self.dim}, "
                f"device={self.device}, dtype={self.dtype})")


def _names(names: list[str], prefix: str) -> str:
    if not names:
        return "none"
    shown = ", ".join(prefix + name for name in names[:6])
    return shown + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _as_tensor(audio) -> torch.Tensor:
    samples = audio.detach().cpu() if isinstance(audio, torch.Tensor) else torch.from_numpy(np.asarray(audio))
    samples = samples.to(torch.float32)
    if samples.ndim != 1:
        raise ValueError(f"the audio must be a mono 16 kHz waveform (samples,), got shape {tuple(samples.shape)}: "
                         "use load_audio() to downmix and resample")
    return samples.contiguous()


def _reflect_slice(samples: torch.Tensor, begin: int, end: int) -> torch.Tensor:
    """``samples[begin:end]`` where indices outside ``[0, n)`` reflect about the ends (as ``F.pad(mode="reflect")``)."""
    num = samples.shape[0]
    parts = []
    if begin < 0:
        parts.append(samples[1:1 - begin].flip(0))
    parts.append(samples[max(begin, 0):min(end, num)])
    if end > num:
        parts.append(samples[num - 1 - (end - num):num - 1].flip(0))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


__all__ = ["WhisperEncoder", "WhisperCheckpointError"]
