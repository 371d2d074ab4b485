"""One long video over several workers: ``batch --ray --split`` with 2 workers against the same job on 1 worker.

    python bench/bench_split.py [--seconds 6]

The job lip-syncs the first ``--seconds`` of demo1 at half size (540x960) to as much speech, tiny checkpoints,
dlib, one step, on the CPU, written lossless (FFV1) so the two outputs are also compared frame for frame. Both
runs start their own local Ray cluster (its start-up is in both figures); torch runs on one thread per worker.
JSON out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, tiny_cli_inputs, write_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "split.json"))
    args = parser.parse_args()
    import numpy as np

    from latentsync.video import iter_frame_batches

    with tempfile.TemporaryDirectory(prefix="latentsync-split-bench-") as tmp:
        folder = Path(tmp)
        video, audio, common, env = tiny_cli_inputs(folder, args.seconds)
        common += ["--codec", "ffv1", "--ray"]
        seconds, records = {}, {}
        for name, extra in (("1 worker, whole job (baseline)", ["--workers", "1"]),
                            ("2 workers, --split", ["--workers", "2", "--split"])):
            stem = "split" if "--split" in extra else "whole"
            jobs = folder / f"{stem}.csv"
            jobs.write_text(f"video,audio,output\n{video},{audio},{stem}.mkv\n")
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "latentsync", "batch", str(jobs), *common, *extra], env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
            seconds[name] = round(time.perf_counter() - started, 2)
            records[name] = json.loads((folder / f"{stem}.manifest.jsonl").read_text().splitlines()[-1])
        outputs = [np.concatenate(list(iter_frame_batches(folder / f"{stem}.mkv", 16))) for stem in ("whole", "split")]
    baseline, split = seconds
    report = {"benchmark": f"one job of {args.seconds:g} s (demo1 at 540x960), tiny models, 1 step, dlib, CPU, "
                           "lossless output, torch on one thread per worker",
              "frames": records[split]["frames"], "segments": records[split]["segments"],
              "seconds": seconds, "job_seconds_in_manifest": {k: r["seconds"] for k, r in records.items()},
              "split_speedup": round(seconds[baseline] / seconds[split], 2),
              "outputs_identical": bool(outputs[0].shape == outputs[1].shape and np.array_equal(*outputs))}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
