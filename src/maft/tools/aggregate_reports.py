#!/usr/bin/env python
"""Turn a Hydra multirun folder into one Markdown table (rows = runs, columns = metrics).

    python scripts/aggregate_reports.py multirun/train/2026-11-26_12-00-00 [--out table.md]
    python scripts/aggregate_reports.py multirun/train/2026-11-26_12-00-00 --mean

Each run folder holds `metrics.json` (written by maft.train / maft.eval) and
`.hydra/overrides.yaml`; a row is named by the run's overrides, e.g. `model.ensemble.lambda_=0.4`.
``--mean`` instead gives one row per model row and benchmark: mean ± sample standard deviation
over the runs (e.g. the seeds of ``+sweep=seeds``), and the number of runs; ``--by KEY`` splits
those rows by the value of one override (e.g. ``--by model.clip.start_layer``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

COLUMNS = [
    ("miou", "mIoU"),
    ("miou_seen", "mIoU(S)"),
    ("miou_unseen", "mIoU(U)"),
    ("hiou", "hIoU"),
    ("pacc", "pAcc"),
]


def run_name(run_dir: Path) -> str:
    """The run's Hydra overrides joined by spaces (its folder name when there are none)."""
    f = run_dir / ".hydra" / "overrides.yaml"
    if f.is_file():
        items = [line[2:].strip() for line in f.read_text().splitlines() if line.startswith("- ")]
        if items:
            return " ".join(items)
    return run_dir.name


def collect(sweep_dir: Path) -> list[tuple[str, str, str, dict]]:
    """(run, model row, benchmark, metrics) for every metrics.json under ``sweep_dir``."""
    rows = []
    files = sorted(sweep_dir.rglob("metrics.json"), key=lambda p: (len(p.parts), str(p)))
    for path in files:
        payload = json.loads(path.read_text())
        name = run_name(path.parent)
        for model, per_bench in payload.get("results", {}).items():
            for bench, metrics in per_bench.items():
                rows.append((name, model, bench, metrics))
    return rows


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.2f}"


def table(rows: list[tuple[str, str, str, dict]]) -> str:
    """Markdown table of ``rows``; columns without any value are left out."""
    cols = [(k, c) for k, c in COLUMNS if any(k in m for *_, m in rows)]
    out = [
        "| run | model | benchmark | " + " | ".join(c for _, c in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for name, model, bench, m in rows:
        out.append(
            f"| {name} | {model} | {bench} | " + " | ".join(_fmt(m.get(k)) for k, _ in cols) + " |"
        )
    return "\n".join(out)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def override_value(run: str, key: str) -> str:
    """The value of override ``key`` in a run name (``k=v`` items), ``default`` when absent."""
    for item in run.split(" "):
        name, _, value = item.lstrip("+~").partition("=")
        if name == key:
            return value
    return "default"


def mean_table(rows: list[tuple[str, str, str, dict]], by: str | None = None) -> str:
    """Markdown table, one row per (model row, benchmark[, value of override ``by``]):
    mean ± sample std over the runs, and their number."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for run, model, bench, m in rows:
        key = (model, bench) + ((override_value(run, by),) if by else ())
        groups.setdefault(key, []).append(m)
    cols = [(k, c) for k, c in COLUMNS if any(k in m for *_, m in rows)]
    head = ["model", "benchmark"] + ([by] if by else []) + [c for _, c in cols] + ["runs"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, ms in groups.items():
        cells = list(key)
        for k, _ in cols:
            vals = [float(m[k]) for m in ms if m.get(k) is not None and not math.isnan(m[k])]
            cells.append(_mean_std(vals))
        out.append("| " + " | ".join(cells + [str(len(ms))]) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    ap.add_argument("--mean", action="store_true", help="mean ± std over the runs per model row")
    ap.add_argument("--by", default=None, help="with --mean: also group by this override's value")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"aggregate_reports: no such folder: {args.sweep_dir}", file=sys.stderr)
        return 2
    rows = collect(args.sweep_dir)
    if not rows:
        print(f"aggregate_reports: no metrics.json under {args.sweep_dir}", file=sys.stderr)
        return 2
    text = mean_table(rows, args.by) if args.mean else table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
