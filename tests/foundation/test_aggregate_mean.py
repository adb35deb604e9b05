"""aggregate_reports --mean / --by: mean ± sample std over runs, grouped by an override."""

from __future__ import annotations

import json
from pathlib import Path

from maft.tools.aggregate_reports import collect, main, mean_table, override_value


def _run(root: Path, name: str, overrides: list[str], rows: dict[str, float]) -> None:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    results = {row: {"world": {"miou_unseen": v, "hiou": 2 * v}} for row, v in rows.items()}
    (d / "metrics.json").write_text(json.dumps({"results": results}))


def test_mean_and_sample_std_per_row(tmp_path: Path) -> None:
    for i, (a, b) in enumerate([(10.0, 1.0), (20.0, 2.0), (30.0, 6.0)]):
        _run(tmp_path, str(i), [f"seed={i}"], {"maft": a, "frozen_ip_clip": b})
    text = mean_table(collect(tmp_path))
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    # 10, 20, 30: mean 20, sample std 10; hIoU doubles both
    assert "| 20.0 ± 10.0 | 40.0 ± 20.0 | 3 |" in lines["maft"]
    # 1, 2, 6: mean 3, sample std sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7) = 2.65
    assert "| 3.0 ± 2.6 | 6.0 ± 5.3 | 3 |" in lines["frozen_ip_clip"]


def test_by_override_splits_groups(tmp_path: Path, capsys) -> None:
    for seed in (0, 1):
        for layer, v in ((0, 50.0 + seed), (2, 30.0 + 3 * seed)):
            _run(
                tmp_path,
                f"s{seed}_l{layer}",
                [f"ckpt_path=run{seed}/final.ckpt", f"model.clip.start_layer={layer}"],
                {"frozen_ip_clip": v},
            )
    assert main([str(tmp_path), "--mean", "--by", "model.clip.start_layer"]) == 0
    out = capsys.readouterr().out
    assert "| frozen_ip_clip | world | 0 | 50.5 ± 0.7 |" in out
    assert "| frozen_ip_clip | world | 2 | 31.5 ± 2.1 |" in out
    assert override_value("a=1 +b=2", "b") == "2" and override_value("a=1", "c") == "default"
