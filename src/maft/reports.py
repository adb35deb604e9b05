"""Evaluation reports: `metrics.json` (everything, per-class IoU included) and `report.md` (tables).

Layout of `metrics.json`::

    {"meta": {...run facts: rule, lambda, form, merge mode, checkpoint, config hash...},
     "results": {"<model row>": {"<benchmark>": {"miou": .., "miou_seen": .., ...}}},
     "timings_s": {"<stage>": seconds}}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maft.schema import ModelCfg

#: Row labels of the report, in display order (unknown rows are appended after these).
ROW_LABELS = {
    "proposals": "proposal generator (A^p only, seen classes)",
    "frozen_merge": "frozen CLIP (merge {merge})",
    "frozen_ip_clip": "frozen CLIP (IP-CLIP)",
    "maft": "MAFT",
}

SPLIT_COLUMNS = [("miou_seen", "mIoU(S)"), ("miou_unseen", "mIoU(U)"), ("hiou", "hIoU")]
COMMON_COLUMNS = [("miou", "mIoU"), ("pacc", "pAcc")]


def config_hash(cfg_yaml: str) -> str:
    """Short stable hash of a resolved config (names the exact configuration in reports)."""
    return hashlib.sha256(cfg_yaml.encode("utf-8")).hexdigest()[:12]


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{float(x):.2f}"


def row_label(key: str, meta: Mapping[str, Any]) -> str:
    """Human label of a report row."""
    template = ROW_LABELS.get(key, key)
    return template.format(merge=str(meta.get("merge") or ModelCfg.merge).replace("_", "&"))


def markdown_tables(results: Mapping[str, Mapping[str, Mapping[str, Any]]], meta: Mapping) -> str:
    """One Markdown table per benchmark: rows = models, columns = metrics (percent)."""
    benchmarks: list[str] = []
    for per_bench in results.values():
        benchmarks += [b for b in per_bench if b not in benchmarks]
    blocks = []
    for bench in benchmarks:
        rows = [(k, v[bench]) for k, v in results.items() if bench in v]
        has_split = any("miou_unseen" in m for _, m in rows)
        cols = (SPLIT_COLUMNS if has_split else []) + COMMON_COLUMNS
        head = "| model | " + " | ".join(c for _, c in cols) + " |"
        sep = "|---|" + "---|" * len(cols)
        lines = [f"### {bench}", "", head, sep]
        for key, m in rows:
            cells = " | ".join(_fmt(m.get(k)) for k, _ in cols)
            lines.append(f"| {row_label(key, meta)} | {cells} |")
        paper = (meta.get("paper_row") or {}).get(bench)
        if paper is not None:  # a release file: the paper's number beside ours
            cells = " | ".join(_fmt(paper) if k == "miou" else "–" for k, _ in cols)
            lines.append(f"| paper ({meta.get('paper_row_name')}) | {cells} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_report(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    meta: Mapping[str, Any],
    timings: Mapping[str, float] | None = None,
) -> str:
    """The full `report.md` text."""
    facts = "\n".join(f"- **{k}**: {v}" for k, v in meta.items() if not isinstance(v, dict | list))
    text = f"# maft report\n\n{facts}\n\n{markdown_tables(results, meta)}\n"
    if (meta.get("maft_validation") or {}).get("curve"):
        text += validation_section(meta["maft_validation"])
    if timings:
        text += "\n### time per stage (s)\n\n| stage | seconds |\n|---|---|\n"
        text += "".join(f"| {k} | {v:.1f} |\n" for k, v in timings.items())
    return text


def validation_section(v: Mapping[str, Any]) -> str:
    """The report's table of MAFT's validation curve (step, value; the kept step marked)."""
    best = v.get("best_step") if v.get("kept") == "best" else None
    lines = [
        f"\n### MAFT validation curve ({v['monitor']} on split {v.get('split')!r})\n",
        "| step | value |",
        "|---|---|",
    ]
    lines += [f"| {s} | {_fmt(x)}{' (kept)' if s == best else ''} |" for s, x in v["curve"]]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, path)


def write_reports(
    out_dir: str | Path,
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    meta: Mapping[str, Any],
    timings: Mapping[str, float] | None = None,
) -> tuple[Path, Path]:
    """Write `metrics.json` and `report.md` into ``out_dir`` and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(meta), "results": results, "timings_s": dict(timings or {})}
    json_path = out / "metrics.json"
    _write_atomic(json_path, json.dumps(payload, indent=2, allow_nan=True, default=str))
    md_path = out / "report.md"
    _write_atomic(md_path, render_report(results, meta, timings))
    return json_path, md_path


def summary_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]], meta: Mapping) -> str:
    """The tables only (what the CLI prints at the end of a run)."""
    return markdown_tables(results, meta)
