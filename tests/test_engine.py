"""The pipelined engine: frames out as a generator, stages in threads with the same output as one after another,
per-group out-of-memory retry, reused frame buffers, errors and cancels that stop every thread."""

from __future__ import annotations

import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync.frames import VideoFileSource
from latentsync.errors import Cancelled
from latentsync.pipeline import LipSyncPipeline, PipelineOptions
from latentsync.video import MediaError
from helpers import collect, make_audio, make_clip, read_stamp

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, media_dir, tiny_models):
    folder = tmp_path_factory.mktemp("engine")
    return {"folder": folder, "models": tiny_models, "clip": make_clip(media_dir, folder, 1.0, Fraction(25)),
            "short": make_audio(media_dir, folder, 0.9), "long": make_audio(media_dir, folder, 2.2)}


def pipeline(setup, overlap=True, **options):
    defaults = dict(steps=2, detector="dlib", memory_mode="balanced")
    return LipSyncPipeline(setup["models"], PipelineOptions(**{**defaults, **options}), overlap=overlap)


class CountingSource(VideoFileSource):
    """A video file whose decoded batches are counted, with the buffers they were decoded into."""

    def __init__(self, path, fail_at: int | None = None):
        super().__init__(path)
        self.batches_made, self.buffers, self.fail_at = 0, set(), fail_at

    def batches(self, batch_size, allocate=None, start=0):
        def recording(shape):
            buffer = allocate(shape)
            self.buffers.add(id(buffer))
            return buffer

        for batch in super().batches(batch_size, recording if allocate else None, start):
            if self.fail_at is not None and self.batches_made == self.fail_at:
                raise MediaError(f"decoding {self.path} failed (invalid data): the file is corrupt or truncated")
            self.batches_made += 1
            yield batch


def stage_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("latentsync-")]


@pytest.mark.parametrize("audio", ["short", "long"])  # streamed; ping-pong with cached frames and faces
def test_overlapped_stages_give_the_serial_output_bit_for_bit(setup, audio):
    serial = collect(pipeline(setup, overlap=False).frames(setup["clip"], setup[audio]))
    overlapped = pipeline(setup).frames(setup["clip"], setup[audio])
    frames = collect(overlapped)
    assert np.array_equal(frames, serial)
    assert len(frames) == overlapped.output_frames
    assert stage_threads() == []
    seconds = overlapped.result().seconds
    assert {"decode", "align", "denoise", "restore", "audio", "total"} <= set(seconds)


def test_frames_is_a_generator_the_caller_drives(setup):
    run = pipeline(setup).frames(setup["clip"], setup["short"])
    assert (run.output_frames, run.fps, run.width, run.height) == (22, 25, 1080, 1920)
    first = next(iter(run))
    assert first.shape[1:] == (1920, 1080, 3) and first.dtype == np.uint8
    assert read_stamp(first[0]) == 0
    with pytest.raises(RuntimeError, match="once"):
        iter(run)


def test_out_of_memory_redoes_only_the_failing_group_with_the_same_noise(setup, monkeypatch):
    """A forced OOM on the second group's UNet call: the batches shrink, the group is redone from its own start
    (generator rewound), nothing is decoded again, and the output is the uninterrupted run's: bit for bit before
    the retry; after it the same noise, with the VAE in smaller batches (oneDNN's sums depend on the batch size by
    ~1e-6, which can round a pixel by one level). Noise that was not rewound would change every later frame."""
    exact = collect(pipeline(setup).frames(setup["clip"], setup["long"]))
    unet = setup["models"].unet
    original, calls = unet.forward, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # 2 steps per group: the third call is the second group's first step
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", flaky)
    source = CountingSource(setup["clip"])
    run = pipeline(setup).frames(source, setup["long"])
    frames = collect(run)
    assert np.array_equal(frames[:16], exact[:16])
    difference = np.abs(frames.astype(int) - exact.astype(int))
    assert difference.max() <= 1 and np.count_nonzero(difference) < 1e-5 * difference.size
    assert source.batches_made == 2  # 25 source frames, groups of 16: decoded once, never from frame 0 again
    assert run.result().plan.vae_batch == 2 and len(calls) == 2 * 4 + 1  # the CPU plan's 4, halved once


def test_decoding_reuses_a_few_buffers(setup, tmp_path, media_dir):
    long_clip = make_clip(media_dir, tmp_path, 6.0, Fraction(25))  # 150 frames: 10 groups of 16
    source = CountingSource(long_clip)
    frames = collect(pipeline(setup).frames(source, make_audio(media_dir, tmp_path, 5.9)))
    assert len(frames) == 147 and source.batches_made == 10
    assert len(source.buffers) <= 7  # a bounded pool, reused: not one new array per batch
    assert [read_stamp(f) for f in frames] == list(range(147))


def test_an_error_in_a_stage_is_that_stages_sentence_and_stops_every_thread(setup, tmp_path):
    source = CountingSource(setup["clip"], fail_at=1)
    out = tmp_path / "never.mp4"
    with pytest.raises(MediaError, match="corrupt or truncated"):
        pipeline(setup).run(source, setup["short"], out)
    assert stage_threads() == []
    assert list(tmp_path.iterdir()) == []


def test_cancel_stops_within_a_step_and_every_thread(setup, tmp_path):
    steps = []

    def progress(stage, done, total):
        steps.append(done)

    with pytest.raises(Cancelled):
        pipeline(setup).run(setup["clip"], setup["long"], tmp_path / "c.mp4", progress=progress,
                            should_cancel=lambda: len(steps) >= 2)
    assert stage_threads() == [] and list(tmp_path.iterdir()) == []


def test_consumer_that_stops_early_stops_the_stages(setup):
    run = pipeline(setup).frames(setup["clip"], setup["long"])
    iterator = iter(run)
    next(iterator)
    iterator.close()
    assert stage_threads() == []


def test_video_io_does_not_import_the_frame_sources():
    """No import cycle: the video package stands alone; frame sources build on it."""
    code = "import sys, latentsync.video.writer; print('latentsync.frames' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def _stuck_stage(release: threading.Event, finished: threading.Event):
    """A stage whose second item takes one call that cannot be interrupted (as inductor's CPU compile)."""
    yield 0
    release.wait(30)
    finished.set()
    yield 1


def test_ctrl_c_leaves_a_stage_stuck_in_one_call_and_any_other_stop_waits_for_it(monkeypatch):
    import contextlib

    from latentsync.engine import threads

    monkeypatch.setattr(threads, "INTERRUPTED_JOIN_SECONDS", 0.2)
    release, finished = threading.Event(), threading.Event()
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C or SIGTERM in the command line: the process is going away
        with contextlib.closing(threads.in_thread(_stuck_stage(release, finished), "stuck", threading.Event())) as items:
            for _ in items:
                raise KeyboardInterrupt
    assert not finished.is_set()  # not waited for: it dies with the process (a daemon thread)
    release.set()

    release, finished = threading.Event(), threading.Event()
    threading.Timer(0.5, release.set).start()
    with pytest.raises(RuntimeError):  # a cancel in ComfyUI or an error: the call ends before the models move
        with contextlib.closing(threads.in_thread(_stuck_stage(release, finished), "stuck", threading.Event())) as items:
            for _ in items:
                raise RuntimeError("cancelled")
    assert finished.is_set()
