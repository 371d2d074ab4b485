"""The compiled path's cost and gain, and its cache across processes: the UNet compiled with inductor.

    python bench/bench_compile.py [--attention flash] [--out bench/results/compile.json]

Runs the same measurement in two fresh processes that share one new inductor cache folder
(``TORCHINDUCTOR_CACHE_DIR``): the first compiles from nothing, the second should find the compiled code on disk.
Each process: eager UNet call ms (best of 3), the first compiled call's seconds (compile included), compiled call
ms (best of 3), and the largest difference from eager. On the tiny reference UNet (``../shared/reference``) on the
CPU by default; ``--size full --device cuda`` measures the real 1.6 UNet (random weights) on a GPU. JSON out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import REPO


def best_ms(call, reps: int = 3) -> float:
    import torch

    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return round(best * 1e3, 2)


def measure(args) -> dict:
    """One process's figures."""
    import torch

    from latentsync.attention.selection import create_backend
    from latentsync.compiled import StaticShapes

    device = torch.device(args.device)
    if args.size == "tiny":
        from safetensors.torch import load_file

        from latentsync.models.loading import load_unet

        reference = REPO.parent / "shared" / "reference"
        unet = load_unet(reference / "unet_tiny.safetensors", reference / "unet_tiny_config.json")
        tensors = load_file(str(reference / "unet_tiny.safetensors"))
        sample, audio, dtype = tensors["sample"], tensors["audio"], torch.float32
    else:
        from latentsync.checkpoints import get_version
        from latentsync.models.loading import load_unet_config
        from latentsync.models.unet import UNet3DConditionModel

        dtype = torch.float16
        torch.manual_seed(0)
        unet = UNet3DConditionModel(**load_unet_config(get_version("1.6").unet_config))
        sample, audio = torch.randn(2, 13, 16, 64, 64), torch.randn(32, 50, 384)
    unet = unet.eval().to(device, dtype)
    sample, audio, t = sample.to(device, dtype), audio.to(device, dtype), torch.tensor(500, device=device)
    unet.set_attention_backend(create_backend(args.attention, device, dtype))
    with torch.no_grad():
        eager_ms = best_ms(lambda: unet(sample, t, encoder_hidden_states=audio))
        eager = unet(sample, t, encoder_hidden_states=audio)
        call = StaticShapes(unet, "default", "the UNet")
        started = time.perf_counter()
        got = call(sample, t, encoder_hidden_states=audio)
        first = time.perf_counter() - started
        compiled_ms = best_ms(lambda: call(sample, t, encoder_hidden_states=audio))
    return {"eager_ms": eager_ms, "first_compiled_call_s": round(first, 2), "compiled_ms": compiled_ms,
            "max_abs_diff": float((got.float() - eager.float()).abs().max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention", default="flash")
    parser.add_argument("--size", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one process's part
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "compile.json"))
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)))
        return 0
    from common import write_report

    runs = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for process in ("first", "second"):
            command = [sys.executable, __file__, "--measure", "--attention", args.attention, "--size", args.size,
                       "--device", args.device]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            runs.append({"process": process, **json.loads(done.stdout.strip().splitlines()[-1])})
            print(runs[-1], file=sys.stderr)
    write_report({"benchmark": "UNet through torch.compile (inductor), two processes sharing one cache",
                  "size": args.size, "device": args.device, "attention": args.attention, "runs": runs,
                  "second_process_compile_speedup": round(runs[0]["first_compiled_call_s"]
                                                          / max(runs[1]["first_compiled_call_s"], 1e-9), 2)},
                 args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
