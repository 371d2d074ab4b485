"""The prepared device check runs on the CPU in its smoke mode, so the first GPU minutes measure instead of debug."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_device_check_smoke_mode(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import device_check

    out = tmp_path / "device_check.json"
    assert device_check.main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert 0 < checks["fp16_vs_fp32"]["rel_err"] < 0.1  # random tiny weights: 3 % measured; a broken fp16 path is far off
    attention = checks["attention"]
    assert attention["auto"] == "flash" and attention["standard"]["rel_err"] == 0.0
    assert all(row["rel_err"] < 1e-3 for name, row in attention.items()
               if isinstance(row, dict) and row.get("available"))
    assert checks["guided_vs_full"]["same_bits"] is True
    for size in ("64", "128"):  # the modelled peak of each tier, smaller as the tiers go down (no GPU: no measure)
        tiers = report["vram"][size]
        assert list(tiers) == ["default", "halves", "offload", "streamed"]
        peaks = [row["modelled_gb"] for row in tiers.values()]
        assert peaks == sorted(peaks, reverse=True) and peaks[-1] > 0 and "measured_gb" not in tiers["default"]
    e2e = report["end_to_end"]["64"]
    assert e2e["frames"] == 16 and e2e["end_to_end_frames_per_second"] > 0 and e2e["stage_seconds"]["denoise"] > 0
    for size in ("64", "128"):
        speed = report["speed"][size]
        assert speed["unet_call_ms"]["eager"] > 0 and speed["unet_call_ms"]["eager_guided"] > 0 and speed["chunk_s"] > 0
        assert speed["unet_call_ms"]["published"] == {"skipped": "no --published checkout given"}
