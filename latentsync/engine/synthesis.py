"""Stage 2: the synced faces of each group, by VAE + UNet denoising (``LipSyncDenoiser``), in video order."""

from __future__ import annotations

import contextlib
import json
from typing import Iterator

import torch

from ..checkpoints import SCHEDULER_CONFIG
from ..denoise import Chunk, DenoiseSettings, LipSyncDenoiser
from ..mask import load_mouth_mask
from ..models.streaming import streamed_weights
from .control import Group, RunBatches, RunControl, retry_smaller
from .plan import RunPlan

SYNC_STAGE = "lip-sync"
NO_FACE_YET = "lip-sync, no face found so far"  # frames without a face pass through quickly: say why


class Synthesis:
    """One denoiser for the run: its random generator is seeded once and advanced in video order, so the output
    does not depend on batching, threading or out-of-memory retries."""

    def __init__(self, models, options, plan: RunPlan, features: torch.Tensor, batches: RunBatches,
                 control: RunControl):
        self.models, self.plan, self.features = models, plan, features
        self.batches, self.control = batches, control
        memory = plan.memory
        settings = DenoiseSettings(steps=options.steps, guidance_scale=options.guidance_scale, seed=options.seed,
                                   chunk_size=models.chunk_size, chunks_per_call=memory.chunks_per_call,
                                   vae_batch=memory.vae_batch, deepcache_interval=options.deepcache_interval,
                                   mouth_feather=options.mouth_feather,
                                   guidance_in_sequence=memory.guidance_in_sequence, offload_vae=memory.offload)
        mask = torch.from_numpy(load_mouth_mask(models.resolution).copy())
        self.denoiser = LipSyncDenoiser(models.unet, models.vae, json.loads(SCHEDULER_CONFIG.read_text()), mask,
                                        settings, models.device, models.dtype,
                                        None if memory.streamed else models.compiled(options.compile))

    def groups(self, groups: Iterator[Group]) -> Iterator[Group]:
        streamed = self.plan.memory.streamed  # (compiled calls are not used then: hooks move the weights)
        with contextlib.closing(groups), (streamed_weights(self.models.unet, self.models.device) if streamed
                                          else contextlib.nullcontext()):
            yield from self._groups(groups)  # (the input closed with this stage: its thread joins now)

    def _groups(self, groups: Iterator[Group]) -> Iterator[Group]:
        from ..audio import frame_windows

        plan, times = self.plan, self.control.times
        self.denoiser.start()
        self.denoiser.skip(plan.speech_start)  # a segment's noise: the draws a whole run makes before its frames
        device = torch.device(self.models.device)
        sync = torch.cuda.current_stream(device).synchronize if device.type == "cuda" else None
        faces_found = False
        for group in groups:
            count = len(group.frames)
            start = group.speech_start
            window = frame_windows(self.features, float(plan.fps), start=start, stop=start + count)
            with times.measure("denoise", sync):
                group.synced = self._synced(group, window)
            faces_found = faces_found or group.synced is not None
            self.control.report(SYNC_STAGE if faces_found else NO_FACE_YET, start + count - plan.speech_start,
                                plan.frames_to_sync)
            yield group

    def _synced(self, group: Group, audio: torch.Tensor) -> torch.Tensor | None:
        """Synced faces for a group, or None when no frame of it has a face. Out of memory: smaller batches, the
        generator rewound to the group's start, the group redone (the same draws: the same result)."""
        denoiser, has_face = self.denoiser, group.aligned.has_face
        if not bool(has_face.any()):
            denoiser.skip(len(group.frames))
            return None
        face_pixels = fill_missing_faces(group.aligned.faces, has_face)
        size, count = denoiser.settings.chunk_size, len(group.frames)
        chunks = [Chunk(face_pixels[i:i + size], audio[i:i + size]) for i in range(0, count, size)]
        done_before, total = group.speech_start - self.plan.speech_start, self.plan.frames_to_sync

        def on_step(step: int, steps: int) -> None:  # progress; cancel and stop within one denoising step
            self.control.check()
            self.control.report(SYNC_STAGE, done_before + count * step / steps, total)

        def attempt() -> torch.Tensor:
            state = denoiser.generator_state()
            try:
                return torch.cat(denoiser.run(chunks, on_step=on_step))
            except BaseException:
                denoiser.rewind(state)
                raise

        def smaller(error: BaseException) -> None:
            plan = self.batches.shrink("denoise", error)
            denoiser.resize(plan.chunks_per_call, plan.vae_batch, plan.guidance_in_sequence)

        return retry_smaller(attempt, smaller)


def fill_missing_faces(faces: torch.Tensor, has_face: torch.Tensor) -> torch.Tensor:
    """Give frames without a face the nearest face of the group, so the chunk stays a coherent clip.

    Their outputs are discarded (those frames pass through unchanged); only their neighbours see them.
    """
    if bool(has_face.all()):
        return faces
    valid = torch.nonzero(has_face.cpu()).flatten()
    positions = torch.arange(len(has_face))
    nearest = valid[(positions[:, None] - valid[None, :]).abs().argmin(dim=1)]
    return faces[nearest.to(faces.device)]
