"""Seeded latent denoising of aligned faces: the numerical core of LatentSync inference.

Reproduces the published pipeline's math and its order of random draws exactly:
one initial noise draw ``(1, 4, 1, h, w)`` shared by every frame; then per 16-frame chunk, first the sample of
the masked faces' latent distribution, then the sample of the reference faces' one; DDIM (eta 0, no further
draws); classifier-free guidance against all-zero audio when ``guidance_scale > 1`` (the halves' shared part
computed once, the unconditional cross-attentions exactly their output bias: ``GuidedAudio``, the same bits);
mouth paste-back (``mouth_feather`` softens only it).

Several chunks may share one UNet call (``chunks_per_call``): the draws still happen chunk by chunk in order,
so the result does not depend on batching.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from .compiled import CompiledCalls
from .mask import feathered
from .models.deepcache import DeepCacheState
from .models.transformer import GuidedAudio

# The reference hard-codes these for sd-vae-ft-mse, whatever the VAE's own config says.
VAE_SCALING_FACTOR = 0.18215
VAE_SHIFT_FACTOR = 0.0


@dataclass(frozen=True)
class DenoiseSettings:
    steps: int = 20
    guidance_scale: float = 1.5
    seed: int = 1247
    chunk_size: int = 16  # frames per motion-module window (the checkpoints' num_frames)
    chunks_per_call: int = 1  # how many full chunks go through the UNet together
    vae_batch: int = 16  # frames per VAE encode/decode call
    # Opt-in DeepCache, OFF by default because it changes the output (not the reference result): with N > 1 the
    # whole UNet runs on steps 0, N, 2N, ... of each chunk batch, the steps between reuse its deep features.
    # The published LatentSync's --enable_deepcache is N = 3. 0 or 1 = off (exact).
    deepcache_interval: int = 0
    # pixels over which the generated mouth fades into the original face in the final blend (0 = the published
    # hard blend); what the UNet sees never changes
    mouth_feather: int = 0
    # guidance's two halves through the UNet one after the other (the unconditional one with all-zero audio, as
    # published) instead of as one batch of two: about half the activations, the same result within float16
    # tolerance (a batch's size can change a kernel's summation order)
    guidance_in_sequence: bool = False
    offload_vae: bool = False  # the VAE's weights on the CPU while the UNet runs (the next batch moves them back)

    def __post_init__(self):  # the user's values come checked (PipelineOptions); these are the engine's own
        if self.chunk_size < 1 or self.chunks_per_call < 1 or self.vae_batch < 1:
            raise ValueError("chunk_size, chunks_per_call and vae_batch must be positive")
        if self.deepcache_interval < 0:
            raise ValueError(f"deepcache_interval must be 0 (off) or positive, got {self.deepcache_interval}")


@dataclass
class Chunk:
    """One chunk of aligned faces, uint8-valued (F, 3, R, R) in 0..255, and their audio windows (F, T, d)."""

    faces: torch.Tensor
    audio: torch.Tensor


StepCallback = Callable[[int, int], None]  # (steps done in this call, total steps of this call)


class LipSyncDenoiser:
    """Turns aligned faces + per-frame audio embeddings into lip-synced faces."""

    def __init__(self, unet: torch.nn.Module, vae: AutoencoderKL, scheduler_config: dict, mouth_mask: torch.Tensor,
                 settings: DenoiseSettings, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 compiled: CompiledCalls | None = None):
        self.unet = unet
        self.vae = vae
        self.compiled = compiled  # the compiled UNet call and VAE decode (``compile`` option), or None
        self.settings = settings
        self.device = torch.device(device)
        self.dtype = dtype
        self.scheduler = DDIMScheduler.from_config(scheduler_config)
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        self.steps = ddim_steps(self.scheduler)  # every coefficient of the loop, read before it starts
        self.resolution = int(mouth_mask.shape[-1])
        self.latent_size = self.resolution // (2 ** (len(vae.config.block_out_channels) - 1))
        # mask: (3, R, R), 0 on the mouth; the UNet gets channel 0 at latent size (nearest), like the reference.
        # the final blend's: the same mask, or its edge feathered (``mouth_feather``)
        self.paste_mask = torch.from_numpy(feathered(mouth_mask.cpu().numpy(), settings.mouth_feather)).to(
            self.device, dtype)
        self.float_mask = mouth_mask.to(self.device, torch.float32)  # the masked faces are made in float32
        self.latent_mask = F.interpolate(mouth_mask[None, :1].float(), size=(self.latent_size,) * 2)[0].to(
            self.device, dtype)
        self.generator: torch.Generator | None = None
        self.initial_noise: torch.Tensor | None = None

    @property
    def guided(self) -> bool:
        return self.settings.guidance_scale > 1.0

    def start(self, seed: int | None = None) -> None:
        """Begin a new video: seed the generator and draw the shared initial noise."""
        seed = self.settings.seed if seed is None else seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        shape = (1, self.vae.config.latent_channels, 1, self.latent_size, self.latent_size)
        noise = torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)
        self.initial_noise = noise * self.scheduler.init_noise_sigma

    def resize(self, chunks_per_call: int, vae_batch: int, guidance_in_sequence: bool = False) -> None:
        """Smaller batches (after an out-of-memory error); the draws, and so the result, do not change."""
        self.settings = replace(self.settings, chunks_per_call=chunks_per_call, vae_batch=vae_batch,
                                guidance_in_sequence=guidance_in_sequence or self.settings.guidance_in_sequence)

    def generator_state(self) -> torch.Tensor:
        """The random generator's state: restored with ``rewind``, a chunk redone gets the same noise."""
        return self.generator.get_state()

    def rewind(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def skip(self, frames: int) -> None:
        """Advance the generator past ``frames`` that are not generated here (no face in them, or made by another
        worker), so later chunks get the same noise: the draws of ``run``, chunk by chunk and of the same shapes
        (a CUDA generator advances by an amount that depends on the shape, not only on the number of values)."""
        for start in range(0, frames, self.settings.chunk_size):
            count = min(self.settings.chunk_size, frames - start)
            shape = (count, self.vae.config.latent_channels, self.latent_size, self.latent_size)
            for _ in range(2):  # masked-face sample, reference-face sample
                torch.randn(shape, generator=self.generator, device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def run(self, chunks: Sequence[Chunk], on_step: StepCallback | None = None) -> list[torch.Tensor]:
        """Denoise consecutive chunks of one video; returns the synced faces per chunk, (F, 3, R, R) in [-1, 1].

        Chunks of equal length are batched through the UNet together; random draws stay in video order.
        """
        if self.generator is None:
            raise RuntimeError("call start(seed) before run()")
        conditions = [self._prepare(chunk) for chunk in chunks]  # draws happen here, in order
        outputs: list[torch.Tensor] = []
        group: list[dict] = []
        for cond in conditions:
            if group and cond["frames"] != group[0]["frames"]:
                outputs += self._denoise_group(group, on_step)
                group = []
            group.append(cond)
        if group:
            outputs += self._denoise_group(group, on_step)
        return outputs

    def _prepare(self, chunk: Chunk) -> dict:
        faces = chunk.faces.to(self.device)
        pixels, masked = normalised_faces(faces, self.float_mask, self.dtype)
        masked_latents = self._encode(masked)
        reference_latents = self._encode(pixels)
        return {
            "frames": faces.shape[0],
            "pixels": pixels,
            "masked_latents": masked_latents,
            "reference_latents": reference_latents,
            "audio": chunk.audio.to(self.device, self.dtype),
        }

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """VAE-encode (F, 3, R, R) in sub-batches, then draw one sample for the whole chunk (reference order)."""
        batch = self.settings.vae_batch
        moments = torch.cat([self.vae.encode(images[i:i + batch]).latent_dist.parameters
                             for i in range(0, images.shape[0], batch)])
        latents = DiagonalGaussianDistribution(moments).sample(generator=self.generator)
        return (latents - VAE_SHIFT_FACTOR) * VAE_SCALING_FACTOR

    def _denoise_group(self, group: list[dict], on_step: StepCallback | None) -> list[torch.Tensor]:
        per_call = self.settings.chunks_per_call
        results = []
        for start in range(0, len(group), per_call):
            results += self._denoise_batch(group[start:start + per_call], on_step)
        return results

    def _denoise_batch(self, batch: list[dict], on_step: StepCallback | None) -> list[torch.Tensor]:
        frames = batch[0]["frames"]
        n = len(batch)

        def to_video(latents):  # (F, C, h, w) -> (1, C, F, h, w)
            return latents.permute(1, 0, 2, 3).unsqueeze(0)

        condition = torch.cat([
            torch.cat([self.latent_mask.expand(frames, -1, -1, -1).permute(1, 0, 2, 3).unsqueeze(0),
                       to_video(c["masked_latents"]), to_video(c["reference_latents"])], dim=1)
            for c in batch])  # (n, 9, F, h, w)
        audio = torch.cat([c["audio"] for c in batch])  # (n*F, T, d)
        latents = self.initial_noise.expand(n, -1, frames, -1, -1).clone()

        # The UNet calls of a step, each with its audio and its own DeepCache state (fresh per batch: chunks never
        # reuse another batch's features). Guidance: the halves as one batch of two, the unconditional half's
        # all-zero audio never built (its cross-attention is exactly a bias, the halves' shared part computed once:
        # the same bits); or, ``guidance_in_sequence``, two calls, the first with the published all-zero audio.
        interval = self.settings.deepcache_interval
        in_sequence = self.guided and self.settings.guidance_in_sequence
        if in_sequence:
            audios = [torch.zeros_like(audio), audio]
        elif self.guided:
            condition, audios = torch.cat([condition, condition]), [GuidedAudio(audio)]
        else:
            audios = [audio]
        calls = [(call_audio, DeepCacheState(interval) if interval > 1 else None) for call_audio in audios]
        unet = self.compiled.unet if self.compiled is not None and interval <= 1 else self.unet
        if self.settings.offload_vae:
            self.vae.to("cpu")

        # Nothing in this loop waits for the device (no value of it is read on the host): on CUDA the host queues
        # the steps ahead of the GPU. DDIM's scale_model_input is the identity.
        for index, step in enumerate(self.steps):
            t = step.timestep
            model_input = torch.cat([latents, latents]) if self.guided and not in_sequence else latents
            model_input = torch.cat([model_input, condition], dim=1)
            noises = [_sample(unet(model_input, t, encoder_hidden_states=call_audio,
                                   **({} if cache is None else {"deep_cache": cache.step(index)})))
                      for call_audio, cache in calls]  # DeepCache off: the exact UNet call
            if self.guided:
                unconditional, conditional = noises if in_sequence else noises[0].chunk(2)
                noise = unconditional + self.settings.guidance_scale * (conditional - unconditional)
            else:
                noise = noises[0]
            latents = step.update(noise, latents)
            if on_step is not None:
                on_step(index + 1, len(self.steps))

        outputs = []
        if self.settings.offload_vae:
            self.vae.to(self.device)
        for i, cond in enumerate(batch):
            decoded = self._decode(latents[i].permute(1, 0, 2, 3))
            # keep the generated mouth (mask 0), the original face elsewhere
            outputs.append(decoded * (1 - self.paste_mask) + cond["pixels"] * self.paste_mask)
        return outputs

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents / VAE_SCALING_FACTOR + VAE_SHIFT_FACTOR
        batch = self.settings.vae_batch
        decode = self.compiled.decode if self.compiled is not None else (lambda z: self.vae.decode(z).sample)
        return torch.cat([decode(latents[i:i + batch]) for i in range(0, latents.shape[0], batch)])


def _sample(output):
    return getattr(output, "sample", output)


def normalised_faces(faces: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 faces -> (faces, masked faces) in [-1, 1] as ``dtype``, computed in float32 and then cast, as the
    published pipeline does (its image processor normalises in float32; the UNet's dtype comes after): normalising
    in float16 itself would round twice (140 of the 256 byte values then land one float16 ulp away)."""
    pixels = faces.to(torch.float32) / 255.0 * 2.0 - 1.0  # the reference's Normalize([0.5], [0.5]), same bits
    return pixels.to(dtype), (pixels * mask).to(dtype)


@dataclass(frozen=True)
class DDIMStep:
    """One step of diffusers' ``DDIMScheduler.step`` with eta 0 and epsilon prediction, its coefficients computed
    before the loop as diffusers computes them (0-d float32 tensors on the CPU): the update then reads nothing from
    the device (diffusers' step indexes ``alphas_cumprod`` with the device's timestep and tests it on the host)."""

    timestep: torch.Tensor  # on the device: the UNet's input
    beta_sqrt: torch.Tensor  # (1 - alpha_t) ** 0.5
    alpha_sqrt: torch.Tensor  # alpha_t ** 0.5
    alpha_prev_sqrt: torch.Tensor  # alpha_{t-1} ** 0.5
    direction: torch.Tensor  # (1 - alpha_{t-1} - sigma_t ** 2) ** 0.5, sigma_t = 0 * variance ** 0.5

    def update(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The previous sample, in diffusers' order of operations (the same bits)."""
        pred_original_sample = (sample - self.beta_sqrt * model_output) / self.alpha_sqrt
        return self.alpha_prev_sqrt * pred_original_sample + self.direction * model_output


def ddim_steps(scheduler: DDIMScheduler) -> list[DDIMStep]:
    """The steps of ``scheduler`` (after ``set_timesteps``), eta 0, epsilon prediction, no clipping."""
    config = scheduler.config
    if config.prediction_type != "epsilon" or config.clip_sample or config.thresholding:
        raise ValueError("the DDIM update here is diffusers' for epsilon prediction without clipping or thresholding")
    stride = config.num_train_timesteps // scheduler.num_inference_steps
    alphas = scheduler.alphas_cumprod
    steps = []
    for timestep in scheduler.timesteps:
        t = int(timestep)  # once, before the loop
        alpha_t = alphas[t]
        alpha_prev = alphas[t - stride] if t - stride >= 0 else scheduler.final_alpha_cumprod
        beta_t = 1 - alpha_t
        variance = ((1 - alpha_prev) / beta_t) * (1 - alpha_t / alpha_prev)
        sigma = 0.0 * variance ** 0.5
        steps.append(DDIMStep(timestep, beta_t ** 0.5, alpha_t ** 0.5, alpha_prev ** 0.5,
                              (1 - alpha_prev - sigma ** 2) ** 0.5))
    return steps

