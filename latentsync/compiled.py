"""The compiled path (opt-in, ``compile`` option): the UNet and the VAE decoder through ``torch.compile``.

Shapes are static: each function is compiled for the first input shape it sees (the memory plan's full batch) and
every other shape (a run's last, shorter group) runs eagerly, so no video ever triggers a recompile and the compiled
code is reused by every later run of the same model set. ``cudagraphs`` also captures CUDA graphs (torch's
"reduce-overhead"); it needs the step loop free of host syncs, which it is. DeepCache runs eagerly (its state changes
from step to step). Compiled output equals eager within float tolerance, not bit for bit: off by default.

Nothing global is changed: torch.compile wraps the functions given; inductor keeps its compiled code in its own disk
cache (``TORCHINDUCTOR_CACHE_DIR``), so a second process reuses it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger("latentsync.compiled")

MODES = {"on": "default", "cudagraphs": "reduce-overhead"}  # the option's values (besides off) -> torch's modes
BACKEND = "inductor"  # the tests use "aot_eager": the same graph capture without code generation


class StaticShapes:
    """``function`` compiled for the first input shape it is called with; any other shape runs ``function`` itself."""

    def __init__(self, function: Callable, mode: str, name: str):
        self.function, self.name = function, name
        self.compiled = torch.compile(function, dynamic=False, fullgraph=True, mode=mode, backend=BACKEND)
        self.shape: tuple | None = None
        self.calls = 0  # compiled calls made
        self._lock = threading.Lock()

    def __call__(self, sample: torch.Tensor, *args, **kwargs):
        with self._lock:
            if self.shape is None:
                self.shape = tuple(sample.shape)
                log.info("compiling %s for inputs shaped %s", self.name, self.shape)
            static = tuple(sample.shape) == self.shape
        if not static:
            return self.function(sample, *args, **kwargs)
        self.calls += 1
        return self.compiled(sample, *args, **kwargs)


@dataclass
class CompiledCalls:
    """What the denoiser calls instead of the modules themselves."""

    unet: StaticShapes  # (sample, timestep, encoder_hidden_states=...) -> noise
    decode: StaticShapes  # latents -> pixels


def compile_calls(unet: torch.nn.Module, vae, option: str, device: torch.device) -> CompiledCalls:
    """The compiled UNet call and VAE decode for the ``compile`` option's value ``option`` (not "off")."""
    mode = MODES[option]
    if mode == "reduce-overhead" and torch.device(device).type != "cuda":
        mode = "default"  # CUDA graphs are CUDA's

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(latents).sample

    return CompiledCalls(StaticShapes(unet, mode, "the UNet"), StaticShapes(decode, mode, "the VAE decoder"))
