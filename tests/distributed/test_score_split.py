"""Short-context scoring split over 2 gloo processes: each process runs a disjoint, equal
share of the windows (padding calls where the shares differ, so both make the same model
calls), and after the gather both hold exactly the short NLL one process computes alone,
for the self scorer and a frozen scorer model (``helpers/dist_score_split.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers.distributed import subprocess_env

DRIVER = Path(__file__).resolve().parents[1] / "helpers" / "dist_score_split.py"


def test_each_process_scores_half_of_the_windows_and_both_get_every_score(tmp_path):
    command = [
        sys.executable,
        *("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        str(DRIVER),
        str(tmp_path),
    ]
    proc = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name in ("self", "model"):
        alone = [r[name]["alone"] for r in reports]
        split = [r[name]["split"] for r in reports]
        total = alone[0]["windows"]
        assert alone[0] == alone[1] and total >= 6, name  # alone: every window in each
        # disjoint equal shares: together every window once, each half (+-1)
        assert split[0]["windows"] + split[1]["windows"] == total, name
        assert abs(split[0]["windows"] - split[1]["windows"]) <= 1, name
        # both processes make the same number of model calls (the short share pads)
        calls = [s["calls"] + s["padding"] for s in split]
        assert calls[0] == calls[1] < alone[0]["calls"], name
        for report in reports:
            assert report[name]["finite"], name
            assert report[name]["max_difference"] <= 1e-6, name
