"""What the two commands (``python -m latentsync`` and its ``batch``) share: the run options as flags, the check of
``--device``, the progress bars, and SIGTERM taken as Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import re
import signal

from .options import LOAD, RUN, Option

CHOICES = (*LOAD.values(), *RUN.values())  # what a run lets the user choose: every one of them has a flag


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a run, shared by a single run and a batch (where they are every job's defaults): one flag per
    schema entry, kept as typed (``read_choices`` reads them), and the paths of the weights."""
    for option in CHOICES:
        words = list(option.words or option.choices or ()) or None
        parser.add_argument(option.flag, dest=option.field, default=option.typed_default, choices=words,
                            metavar=None if words else option.kind.__name__.upper(), help=_help(option))
    parser.add_argument("--checkpoints", default=None, help="checkpoints folder (default: ./checkpoints)")
    parser.add_argument("--unet-config", default=None, help="UNet yaml (default: the one of the version)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu ... (default: best available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _help(option: Option) -> str:
    limits = f"; {option.min}-{option.max}" if option.min is not None else ""
    return f"{option.help} (default {option.typed_default}{limits})"


def read_choices(args) -> dict:
    """Option field -> its checked value, from the flags as typed; a sentence naming the flag otherwise."""
    return {option.field: option.parse(getattr(args, option.field), option.flag) for option in CHOICES}


def in_flags(message: str) -> str:
    """A library sentence that starts with an option's name as the node calls it, with the flag instead."""
    for option in CHOICES:
        if option.node and option.flag and re.match(rf"{option.node}\b", message):
            return option.flag + message[len(option.node):]
    return message


class TqdmProgress:
    """One tqdm bar per stage."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            if done <= 0:  # a stage only announced (the node shows its name): a bar frozen at 0 % would stay
                return
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="frame" if total > 10 else "step")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self):
        for bar in self.bars.values():
            bar.close()


DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")


def check_device(device: str | None, here: bool = True) -> None:
    """``--device``: a device name, and (``here``; Ray's workers may have other GPUs) one this torch has; one
    sentence naming the flag otherwise (torch is imported only to ask it about a GPU)."""
    if device is None or device == "cpu":
        return
    if not DEVICE.fullmatch(device):
        raise ValueError(f"--device {device}: give cpu, cuda, cuda:N (the N-th GPU) or mps")
    if not here:
        return
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: this torch ({torch.__version__}) has no CUDA, or sees no GPU: "
                               "install the CUDA build of torch for your GPU (pytorch.org), or use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0")
    elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("--device mps: this machine or torch has no Apple GPU (MPS); use --device cpu")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (docker stop, schedulers, kill) ends a run as Ctrl-C does: partial files and caches removed,
    nothing half-written. Only the first SIGTERM or Ctrl-C interrupts: one more while the run cleans up (a second
    docker stop, an impatient Ctrl-C) is ignored, so the cleanup is never cut short. The handlers that were there
    before are put back afterwards."""
    interrupted = False

    def interrupt(signum, frame):
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    try:
        previous = {name: signal.signal(name, interrupt) for name in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: the host handles its signals
        yield
        return
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)
