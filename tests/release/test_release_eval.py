"""``maft.eval`` on official release files: the cross-dataset protocol, the paper row beside ours.

The release-format dev file (``maft_dev/weights.pth``, official key names, reduced sizes) is copied
under the released file names, so the report picks the paper row of ``MAFT_Vitb.pt`` or
``freeseg_model.pt`` by name; the data are tiny synthetic benchmarks in their real on-disk layouts.
The two end-to-end runs take about a minute each on 2 CPU cores (the text embeddings of the 1535
class names of the five test sets dominate), so they are marked slow.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from maft.config import compose
from maft.data.synthetic import write_benchmark
from maft.models.release import release_settings
from maft.reports import markdown_tables
from maft.runner import run_eval
from maft.tasks.release import paper_row, release_hparams

#: The five cross-dataset test sets of ``conf/experiment/coco_cross.yaml``, in report order.
BENCHMARKS = ["ade20k_847", "ade20k_150", "pcontext_459", "pcontext_59", "pas_20"]
#: The papers' mIoU rows (MAFT Tab. / FreeSeg), as printed.
PAPER_MAFT_VITB = {
    "ade20k_847": 10.25,
    "ade20k_150": 29.14,
    "pcontext_459": 12.85,
    "pcontext_59": 53.33,
    "pas_20": 90.44,
}
PAPER_FREESEG = {
    "ade20k_847": 7.1,
    "ade20k_150": 17.9,
    "pcontext_459": 6.4,
    "pcontext_59": 34.4,
    "pas_20": 85.6,
}
ROW_LABELS = {"frozen_ip_clip": "frozen CLIP (IP-CLIP)", "maft": "MAFT"}
TINY_EVAL = [
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.test_short_side=64",
    "trainer=smoke",
    "logger=none",
    "callbacks=none",
]


# ---------------------------------------------------------------------------------------- helpers
def freeseg_state_dict(maft_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """freeseg_dev's weights: maft_dev's minus ``IPCLIP.*``/``T.*``, a 172-entry loss buffer."""
    sd = {k: v for k, v in maft_sd.items() if not k.startswith(("IPCLIP.", "T."))}
    empty = torch.ones(172)
    empty[-1] = 0.1
    sd["criterion.empty_weight"] = empty
    return sd


def report_table(report: str, bench: str) -> dict[str, dict[str, str]]:
    """The Markdown table of ``bench`` in ``report.md``: row label -> {column: cell}."""
    assert f"### {bench}\n" in report, f"no table for {bench}"
    block = report.split(f"### {bench}\n", 1)[1].strip().split("\n\n", 1)[0]
    head, _, *rows = block.splitlines()
    columns = [c.strip() for c in head.strip("|").split("|")]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0]] = dict(zip(columns[1:], cells[1:]))
    return table


def run_release_eval(
    weights: Path, config: Path, experiment: str, data_root: Path, out: Path
) -> tuple[dict, str, dict]:
    """``maft.eval experiment=<experiment> ckpt_path=<weights>``: (returned, report, metrics)."""
    cfg = compose(
        [
            f"experiment={experiment}",
            f"ckpt_path={weights}",
            f"release_config={config}",
            f"paths.data_root={data_root}",
            f"paths.cache_dir={out.parent / 'cache'}",
            *TINY_EVAL,
        ],
        config_name="eval",
        output_dir=out,
    )
    returned = run_eval(cfg)
    assert (out / "report.md").is_file() and (out / "metrics.json").is_file()
    report = (out / "report.md").read_text("utf-8")
    metrics = json.loads((out / "metrics.json").read_text("utf-8"))
    return returned, report, metrics


def assert_paper_beside_ours(
    report: str, metrics: dict, rows: list[str], paper_name: str, paper: dict[str, float]
) -> None:
    """Each benchmark's table: our rows (their mIoU as in metrics.json), then the paper's mIoU."""
    assert set(metrics["results"]) == set(rows)
    for bench in BENCHMARKS:
        table = report_table(report, bench)
        assert list(table) == [ROW_LABELS[r] for r in rows] + [f"paper ({paper_name})"], table
        for row in rows:
            miou = metrics["results"][row][bench]["miou"]
            assert math.isfinite(miou) and 0.0 <= miou <= 100.0, (row, bench, miou)
            assert table[ROW_LABELS[row]]["mIoU"] == f"{miou:.2f}"
        paper_cells = table[f"paper ({paper_name})"]
        assert paper_cells["mIoU"] == f"{paper[bench]:.2f}", (bench, paper_cells)
        assert set(paper_cells.values()) - {paper_cells["mIoU"]} == {"–"}  # only mIoU published


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cross_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The five cross-dataset test sets (2 val images each) under one MAFT_DATA_ROOT."""
    root = tmp_path_factory.mktemp("cross_data")
    for bench in BENCHMARKS:
        write_benchmark(root, bench, n_images=2, size=(48, 64), seed=1, splits=("val",))
    return root


# ---------------------------------------------------------------------------------------- tests
def test_paper_row_by_name_else_kind_and_width(maft_dev: dict) -> None:
    """The dev file's own name has no paper row (CLIP width 128); the released names do."""
    maft_settings = release_settings(maft_dev["state_dict"], maft_dev["config"])
    assert maft_settings.kind == "maft"
    assert maft_settings.clip_arch["vision_cfg"]["width"] == 128
    assert paper_row(maft_settings, "weights.pth") is None
    assert paper_row(maft_settings, "MAFT_Vitb.pt") == ("MAFT_Vitb.pt", PAPER_MAFT_VITB)
    release = release_hparams(maft_settings, maft_dev["weights"])["release"]
    assert release["paper_row_name"] is None and release["paper_row"] is None
    fs_settings = release_settings(freeseg_state_dict(maft_dev["state_dict"]))
    assert fs_settings.kind == "freeseg" and fs_settings.num_train_classes == 171
    assert paper_row(fs_settings, "freeseg_dev.pth") == ("freeseg_model.pt", PAPER_FREESEG)
    results = {"maft": {b: {"miou": 1.0, "pacc": 2.0} for b in BENCHMARKS}}
    without = markdown_tables(results, {"paper_row": release["paper_row"]})
    assert "paper (" not in without
    named = release_hparams(maft_settings, "MAFT_Vitb.pt")["release"]
    meta = {"paper_row": named["paper_row"], "paper_row_name": named["paper_row_name"]}
    table = report_table(markdown_tables(results, meta), "pas_20")
    assert table["paper (MAFT_Vitb.pt)"] == {"mIoU": "90.44", "pAcc": "–"}


@pytest.mark.slow
def test_eval_maft_release_coco_cross(
    maft_dev: dict, cross_data_root: Path, tmp_path: Path
) -> None:
    """``experiment=coco_cross`` on a MAFT release file: both rows, MAFT_Vitb.pt's paper row."""
    weights = tmp_path / "MAFT_Vitb.pt"
    shutil.copyfile(maft_dev["weights"], weights)
    returned, report, metrics = run_release_eval(
        weights, maft_dev["config"], "coco_cross", cross_data_root, tmp_path / "run"
    )
    assert_paper_beside_ours(
        report, metrics, ["frozen_ip_clip", "maft"], "MAFT_Vitb.pt", PAPER_MAFT_VITB
    )
    meta = metrics["meta"]
    assert meta["release file"] == "MAFT_Vitb.pt"
    assert meta["release settings"] == str(maft_dev["config"])
    assert meta["paper_row_name"] == "MAFT_Vitb.pt" and meta["paper_row"] == PAPER_MAFT_VITB
    assert meta["checkpoint"] == str(weights) and meta["generator"] == "freeseg"
    assert meta["lambda"] == 0.0 and meta["experiment"] == "coco_cross"
    assert "- **release file**: MAFT_Vitb.pt" in report
    assert returned["meta"] == meta
    for row in ("frozen_ip_clip", "maft"):
        ours = {b: returned["results"][row][b]["miou"] for b in BENCHMARKS}
        assert ours == {b: metrics["results"][row][b]["miou"] for b in BENCHMARKS}


@pytest.mark.slow
def test_eval_freeseg_release_freeseg_cross(
    maft_dev: dict, freeseg_dev: dict, cross_data_root: Path, tmp_path: Path
) -> None:
    """``experiment=freeseg_cross`` on a FreeSeg release: its frozen row, FreeSeg's paper row."""
    weights = tmp_path / "freeseg_model.pt"
    torch.save({"model": freeseg_state_dict(maft_dev["state_dict"]), "iteration": 0}, weights)
    _, report, metrics = run_release_eval(
        weights, freeseg_dev["config"], "freeseg_cross", cross_data_root, tmp_path / "run"
    )
    assert_paper_beside_ours(report, metrics, ["frozen_ip_clip"], "freeseg_model.pt", PAPER_FREESEG)
    meta = metrics["meta"]
    assert meta["release file"] == "freeseg_model.pt"
    assert meta["release settings"] == str(freeseg_dev["config"])
    assert meta["paper_row_name"] == "freeseg_model.pt" and meta["paper_row"] == PAPER_FREESEG
    assert meta["experiment"] == "freeseg_cross" and meta["checkpoint"] == str(weights)
