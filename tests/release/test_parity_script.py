"""scripts/release_parity.py: the figures docs/release.md quotes come from a command."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "release_parity.py"


def test_script_reports_every_stage_within_tolerance(maft_dev: dict, tmp_path: Path) -> None:
    out = tmp_path / "parity.json"
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main(["--golden", str(maft_dev["dir"]), "--out", str(out)]) == 0
    errors = json.loads(out.read_text())["errors"]
    assert {"backbone_res5", "pred_masks", "A_c", "sem_seg_scores"} <= set(errors)
    assert errors["dec_attn_mask_cells_differing"] == 0
    assert all(v < 1e-4 for k, v in errors.items() if k != "dec_attn_mask_cells_differing")
