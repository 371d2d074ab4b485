"""What the test modules share: stamped frames, decoding, the demo clip and speech cut to size, sounds of files.

Frames stamped with ``stamp`` carry a binary stamp of their index in the top-left corner (far from the face), so
each output frame tells which source frame it was made from: loops, cuts and frame-rate handling are checked
exactly. The tiny checkpoint set and models loaded from it are session fixtures (``conftest.py``).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile

from latentsync.video import VideoWriter, iter_frame_batches

BITS, CELL = 8, 16  # stamp: 8 cells of 16x16 px, white = 1


def stamp(frame: np.ndarray, index: int) -> np.ndarray:
    frame = frame.copy()
    for bit in range(BITS):
        frame[:CELL, bit * CELL:(bit + 1) * CELL] = 255 if (index >> bit) & 1 else 0
    return frame


def read_stamp(frame: np.ndarray) -> int:
    cells = [frame[2:CELL - 2, b * CELL + 2:(b + 1) * CELL - 2].mean() for b in range(BITS)]
    return sum(1 << b for b, value in enumerate(cells) if value > 127)


def decode(path: Path) -> np.ndarray:
    return np.concatenate(list(iter_frame_batches(path, 64)))


def sound_of(path) -> tuple[np.ndarray, int]:
    """A file's first audio stream decoded: the channels' mean, and its sample rate."""
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].sample_rate
        return np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)]), rate


def stream_info(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio
        frames = sum(1 for _ in container.decode(video=0))
        return {"frames": frames, "rate": Fraction(video.average_rate), "audio_streams": len(audio),
                "audio_seconds": float(audio[0].duration * audio[0].time_base) if audio and audio[0].duration
                else None, "width": video.width, "height": video.height}


def make_clip(media_dir: Path, folder: Path, seconds: float, fps: Fraction) -> Path:
    """The start of demo1 resampled to ``fps`` (nearest frame in time), every frame stamped with its index."""
    source = decode_first(media_dir / "demo1_video.mp4", int(seconds * 25) + 2)
    count = int(seconds * fps)
    out = folder / f"clip_{float(fps):.2f}.mp4"
    with VideoWriter(out, source.shape[2], source.shape[1], fps) as writer:
        for i in range(count):
            writer.write(stamp(source[min(len(source) - 1, int(i * 25 / fps))], i))
    return out


def decode_first(path: Path, count: int) -> np.ndarray:
    frames = []
    for batch in iter_frame_batches(path, 16):
        frames.append(batch)
        if sum(len(b) for b in frames) >= count:
            break
    return np.concatenate(frames)[:count]


def make_audio(media_dir: Path, folder: Path, seconds: float, name: str | None = None) -> Path:
    """The first ``seconds`` of the 39 s speech track (16-bit PCM, as the source) in ``folder``."""
    speech, rate = soundfile.read(media_dir / "long_speech_39s.wav", dtype="int16")
    path = folder / (name or f"speech_{seconds:.2f}.wav")
    soundfile.write(path, speech[: int(seconds * rate)], rate, subtype="PCM_16")
    return path


def collect(run) -> np.ndarray:
    """Every batch of a run (a ``frames()`` or ``scene()`` result), copied out of its reused buffers."""
    return np.concatenate([batch.copy() for batch in run])


def write_clip(media: Path, folder: Path, name: str, seconds: float, scale: int = 1) -> Path:
    """The first ``seconds`` of demo1's video (optionally downscaled) as an H.264 mp4 in ``folder``."""
    with av.open(str(media / "demo1_video.mp4")) as source, av.open(str(folder / name), mode="w") as out:
        stream = source.streams.video[0]
        fps = int(round(float(stream.average_rate)))
        encoder = out.add_stream("libx264", rate=fps)
        encoder.width, encoder.height = stream.width // scale, stream.height // scale
        encoder.pix_fmt = "yuv420p"
        count = int(round(seconds * fps))
        for index, frame in enumerate(source.decode(stream)):
            if index == count:
                break
            image = frame.reformat(width=encoder.width, height=encoder.height, format="rgb24").to_ndarray()
            for packet in encoder.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in encoder.encode():
            out.mux(packet)
    return folder / name


def make_denoiser(reference_pipeline, **overrides):
    """A denoiser on the reference pipeline's UNet and VAE with its settings (``overrides`` changed)."""
    from latentsync.denoise import DenoiseSettings, LipSyncDenoiser

    spec, tensors, unet, vae = reference_pipeline
    settings = DenoiseSettings(steps=spec["inference_steps"], guidance_scale=spec["guidance_scale"],
                               seed=spec["seed"], chunk_size=spec["num_frames"], **overrides)
    return LipSyncDenoiser(unet, vae, spec["scheduler"], tensors["mask"], settings)


def chunks_of(tensors, size):
    """The reference's faces and audio windows in chunks of ``size`` frames."""
    from latentsync.denoise import Chunk

    faces, audio = tensors["faces"], tensors["audio_embeds"]
    return [Chunk(faces[i:i + size], audio[i:i + size]) for i in range(0, faces.shape[0], size)]
