"""What each dubbing mode costs against the default on the same clip, the mouth seam for each feather width, and the
audio features' jump at Whisper's 30 s window edge for both audio contexts.

    python bench/bench_dubbing.py [--seconds 4] [--steps 2] [--scale 2]
    python bench/bench_dubbing.py --scene-seconds 60

``--scene-seconds S`` instead: a take of S seconds (demo1 looped) dubbed with 3 lines, one after another, each 40 %
silence (two pauses of a fifth of it) and 60 % speech from long_speech_39s.wav; ``sync_only_speech`` against
syncing every frame of the lines, in the same process: wall seconds, frames through the model, the speed-up.

Models: the tiny real-format set (``make_tiny_checkpoints``) loaded as version 1.6 (its face size), so the time is
the engine's (decode, detect, align, restore, encode) more than the UNet's; demo1 at 1/``scale`` size, the dlib
detector, H.264 out. Runs, each timed end to end (decode to encoded file):
* baseline: ``--seconds`` of video, 3/4 of it in speech (cut: the output ends with the speech);
* audio_start (the speech starts 1/4 in, the frames before passed through), keep (the tail passed through);
* speech 1.5x the video: pingpong (the baseline of the three), loop, hold;
* mouth_feather 4, 8, 16 against 0: the seam, the mean gradient magnitude of the output frames on the mouth edge
  (the pixels of the feather-0 run's mouth mask at the 50 % level with a neighbour below it), over the synced
  frames; and the time of feather 8;
* audio_context: the encoder on long_speech_39s.wav (the random-weight Whisper of ../shared/reference), windows
  against seamless: seconds, and the change between consecutive feature steps across the 30 s edge over the 99th
  percentile of those changes elsewhere (all layers together, and the largest of the layers).
JSON out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import REPO, write_report  # first: puts the repository on the path
from latentsync.audio import WhisperEncoder, load_audio
from latentsync.pipeline import LipSyncModels, LipSyncPipeline, PipelineOptions
from latentsync.tools.make_tiny_checkpoints import make_tiny_checkpoints
from latentsync.video import VideoWriter, iter_frame_batches
from bench_memory import looped_speech

SHARED = REPO.parent / "shared"
MEDIA = SHARED / "media"


def clip(folder: Path, seconds: float, scale: int) -> Path:
    """demo1 at 1/``scale`` size, played again from its start until ``seconds`` are written."""
    out = folder / "clip.mp4"
    count = int(seconds * 25)
    with VideoWriter(out, 1080 // scale, 1920 // scale, 25) as writer:
        while writer.frames_written < count:
            for batch in iter_frame_batches(MEDIA / "demo1_video.mp4", 25):
                if scale > 1:
                    batch = batch[:, ::scale, ::scale]
                writer.write(batch[:count - writer.frames_written])
                if writer.frames_written >= count:
                    break
    return out


def scene_lines(folder: Path, seconds: float) -> list:
    """3 lines filling ``seconds``, each: speech 30 %, silence 20 %, speech 30 %, silence 20 %."""
    import soundfile

    from latentsync.scene import Line

    speech, rate = soundfile.read(MEDIA / "long_speech_39s.wav", dtype="float32")
    length = seconds / 3
    part, pause = int(0.3 * length * rate), np.zeros(int(0.2 * length * rate), np.float32)
    lines = []
    for k in range(3):
        words = np.resize(speech[k * rate:], 2 * part)  # (looped where a line wants more than the track has)
        path = folder / f"line{k}.wav"
        soundfile.write(path, np.concatenate([words[:part], pause, words[part:], pause]), rate)
        lines.append(Line(path, k * length))
    return lines


def scene_runs(models, folder: Path, seconds: float, steps: int, scale: int) -> dict:
    video, lines = clip(folder, seconds, scale), scene_lines(folder, seconds)
    rows = {}
    for name, only_speech in (("every frame of the lines", False), ("sync_only_speech", True)):
        options = PipelineOptions(steps=steps, detector="dlib", sync_only_speech=only_speech,
                                  when_video_is_longer="keep")
        pipeline = LipSyncPipeline(models, options)
        synced = sum(stretch.frames for stretch in pipeline.scene(video, lines).stretches)
        started = time.perf_counter()
        result = pipeline.run(video, lines, folder / f"scene_{only_speech}.mp4")
        wall = time.perf_counter() - started
        rows[name] = {"frames": result.output_frames, "frames_synced": synced, "wall_seconds": round(wall, 1)}
    rows["speed-up"] = round(rows["every frame of the lines"]["wall_seconds"] / rows["sync_only_speech"]["wall_seconds"],
                             2)
    return rows


def timed(models, options: dict, video: Path, audio: Path, out: Path, steps: int, masks: list | None = None) -> dict:
    pipeline = LipSyncPipeline(models, PipelineOptions(steps=steps, detector="dlib", **options))
    started = time.perf_counter()
    frames = []
    result = pipeline.run(video, audio, out, frame_sink=frames.append if masks is not None else None,
                          mask_sink=masks.append if masks is not None else None)
    wall = time.perf_counter() - started
    row = {"options": options, "frames": result.output_frames, "wall_seconds": round(wall, 3),
           "frames_per_second": round(result.output_frames / wall, 3)}
    return (row, np.concatenate(frames)) if masks is not None else row


def relative(rows: dict, baseline: str) -> dict:
    for row in rows.values():
        row["time_vs_baseline"] = round(row["wall_seconds"] / rows[baseline]["wall_seconds"], 3)
    return rows


def seam(frames: np.ndarray, edge: np.ndarray) -> float:
    """The mean gradient magnitude of ``frames`` (n, H, W, 3) at the ``edge`` pixels (n, H, W)."""
    image = frames.astype(np.float32).mean(axis=-1)
    dy, dx = np.zeros_like(image), np.zeros_like(image)
    dy[:, 1:-1] = (image[:, 2:] - image[:, :-2]) / 2
    dx[:, :, 1:-1] = (image[:, :, 2:] - image[:, :, :-2]) / 2
    return float(np.hypot(dx, dy)[edge].mean())


def mouth_edge(masks: np.ndarray) -> np.ndarray:
    inside = masks >= 128
    below = np.zeros_like(inside)
    below[:, 1:] |= ~inside[:, :-1]
    below[:, :-1] |= ~inside[:, 1:]
    below[:, :, 1:] |= ~inside[:, :, :-1]
    below[:, :, :-1] |= ~inside[:, :, 1:]
    return inside & below


def edge_jump(features: torch.Tensor, edge: int = 1500) -> dict:
    change = (features[1:] - features[:-1])
    every = [change.flatten(1).norm(dim=-1)] + [change[:, layer].norm(dim=-1) for layer in range(change.shape[1])]
    ratios = []
    for series in every:
        others = torch.cat([series[:edge - 1], series[edge:]])
        ratios.append(float(series[edge - 1] / others.quantile(0.99)))
    return {"all_layers": round(ratios[0], 3), "largest_layer": round(max(ratios[1:]), 3)}


def audio_contexts() -> dict:
    encoder = WhisperEncoder.from_checkpoint(SHARED / "reference" / "whisper_tiny_random.pt")
    samples = load_audio(MEDIA / "long_speech_39s.wav")
    encoder.features(samples[:16000])  # first-call costs out of both
    rows = {}
    for mode in ("windows", "seamless"):
        started = time.perf_counter()
        features = encoder.features(samples, seamless=mode == "seamless")
        rows[mode] = {"seconds": round(time.perf_counter() - started, 3),
                      "jump_at_30s_over_p99_elsewhere": edge_jump(features)}
    rows["seamless"]["time_vs_windows"] = round(rows["seamless"]["seconds"] / rows["windows"]["seconds"], 3)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="of video")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--scale", type=int, default=2, help="demo1 (1080x1920) downscaled by this")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "dubbing.json"))
    parser.add_argument("--scene-seconds", type=float, default=None, help="instead: a scene of this length")
    args = parser.parse_args()
    seconds = args.seconds
    with tempfile.TemporaryDirectory(prefix="latentsync-dubbing-") as tmp:
        folder = Path(tmp)
        config = make_tiny_checkpoints(folder / "checkpoints")
        models = LipSyncModels.load("1.6", folder / "checkpoints", unet_config=config, device="cpu")
        if args.scene_seconds:
            report = {"benchmark": f"a scene: {args.scene_seconds:g} s of demo1 at 1/{args.scale} size, 3 lines "
                                   f"with 40 % silence, tiny models at {models.resolution} px faces, {args.steps} "
                                   f"steps, dlib, H.264, CPU ({torch.get_num_threads()} threads)",
                      "torch": torch.__version__,
                      "runs": scene_runs(models, folder, args.scene_seconds, args.steps, args.scale)}
            write_report(report, args.out)
            return 0
        video = clip(folder, seconds, args.scale)
        short, long = looped_speech(0.75 * seconds, folder), looped_speech(1.5 * seconds, folder)
        timed(models, {}, video, short, folder / "warmup.mp4", 1)  # first-call costs out of every run
        placing = relative({
            "baseline (cut)": timed(models, {}, video, short, folder / "a.mp4", args.steps),
            "audio_start": timed(models, {"audio_start": seconds / 4}, video, short, folder / "b.mp4", args.steps),
            "keep": timed(models, {"when_video_is_longer": "keep"}, video, short, folder / "c.mp4", args.steps),
        }, "baseline (cut)")
        revisiting = relative({mode: timed(models, {"when_audio_is_longer": mode}, video, long,
                                           folder / f"{mode}.mp4", args.steps)
                               for mode in ("pingpong", "loop", "hold")}, "pingpong")
        feathers, frames, edge = {}, {}, None
        for width in (0, 4, 8, 16):
            masks = []
            feathers[width], frames[width] = timed(models, {"mouth_feather": width}, video, short,
                                                   folder / f"feather{width}.mp4", args.steps, masks)
            if edge is None:
                edge = mouth_edge(np.concatenate(masks))
        for width, row in feathers.items():
            row["seam_mean_gradient"] = round(seam(frames[width], edge), 3)
            row["seam_vs_hard_edge"] = round(row["seam_mean_gradient"] / feathers[0]["seam_mean_gradient"], 3)
        relative(feathers, 0)
    report = {"benchmark": f"dubbing modes: tiny models at {models.resolution} px faces, demo1 at 1/{args.scale} "
                           f"size, {seconds:g} s of video, {args.steps} steps, dlib, H.264, CPU "
                           f"({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "placing the speech": placing, "speech longer than the video": revisiting,
              "mouth_feather": {str(width): row for width, row in feathers.items()},
              "audio_context (long_speech_39s.wav)": audio_contexts()}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
