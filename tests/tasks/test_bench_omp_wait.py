"""scripts/bench_omp_wait.py: every wait setting trains the same numbers (maft.omp's premise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wait_settings_give_bit_identical_losses_and_a_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_omp_wait.py")]
    cmd += ["--experiment", "world_quick", "--settings", "spin10000", "passive"]
    cmd += ["--rounds", "1", "--steps", "2", "--warmup", "1", "--out", str(out)]
    cmd += ["--override", f"paths.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # a worker thread to wait: the settings matter
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert set(runs) == {"spin10000", "passive"}
    for (run,) in runs.values():
        assert len(run["proposal_s"]) == len(run["proposal_losses"]) == 2
        assert len(run["maft_s"]) == len(run["maft_losses"]) == 2
        assert all(s > 0 for s in run["proposal_s"] + run["maft_s"])
        assert run["threads"] == 2
    # the premise of maft.omp: the wait changes the time, never a number
    assert runs["spin10000"][0]["proposal_losses"] == runs["passive"][0]["proposal_losses"]
    assert runs["spin10000"][0]["maft_losses"] == runs["passive"][0]["maft_losses"]
    assert result["summary"]["losses_equal"] is True
    assert "losses equal bit for bit across settings: True" in proc.stdout
    ratio = result["summary"]["passive"]["proposal_vs_spin10000"]
    s = result["summary"]
    assert ratio == s["passive"]["proposal"] / s["spin10000"]["proposal"]
