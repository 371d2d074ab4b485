"""Many jobs: the batch command against a shell loop over the single-run command, and Ray with 2 workers against 1.

    python bench/bench_batch.py [--jobs 4] [--seconds 0.64]

Each job lip-syncs the first ``--seconds`` of demo1 at half size (540x960) with its own seed, tiny checkpoints,
dlib, one step, on the CPU. The shell loop starts `python -m latentsync` once per job (models loaded every time);
the batch command loads them once. Ray runs the same jobs on a local cluster with 1, then 2 workers. JSON out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, tiny_cli_inputs, write_report


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {done.stderr[-2000:]}")
    return round(time.perf_counter() - started, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.64)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "batch.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="latentsync-batch-bench-") as tmp:
        folder = Path(tmp)
        video, audio, common, env = tiny_cli_inputs(folder, args.seconds)
        cli = [sys.executable, "-m", "latentsync"]
        loop = sum(timed(cli + ["--video", str(video), "--audio", str(audio), "--out", str(folder / f"loop{i}.mp4"),
                                "--seed", str(i)] + common, env) for i in range(args.jobs))
        results = {"shell loop over the CLI (baseline)": loop}
        for name, extra in (("batch command", []), ("Ray, 1 worker", ["--ray", "--workers", "1"]),
                            ("Ray, 2 workers", ["--ray", "--workers", "2"])):
            jobs = folder / f"{name.replace(' ', '_').replace(',', '')}.csv"
            jobs.write_text("video,audio,output,seed\n" + "".join(
                f"{video},{audio},{jobs.stem}_{i}.mp4,{i}\n" for i in range(args.jobs)))
            results[name] = timed(cli + ["batch", str(jobs)] + common + extra, env)
    report = {"benchmark": f"{args.jobs} jobs of {args.seconds:g} s (demo1 at 540x960), tiny models, 1 step, dlib, "
                           "CPU, torch on one thread per process",
              "seconds": results, "jobs_per_minute": {k: round(60 * args.jobs / v, 2) for k, v in results.items()},
              "batch_speedup_over_loop": round(loop / results["batch command"], 2),
              "ray_2_over_1_workers": round(results["Ray, 1 worker"] / results["Ray, 2 workers"], 2)}
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
