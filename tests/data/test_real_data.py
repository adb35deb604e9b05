"""Real benchmarks under MAFT_DATA_ROOT: image counts and a first sample (skipped without data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from maft.data import SemSegDataset
from maft.data.layouts import SUBFOLDERS
from maft.data.vocabulary import benchmark_info

BENCHMARKS = ["coco_stuff_171", "voc_20", "ade20k_847", "ade20k_150", "pcontext_59", "pcontext_459"]


@pytest.mark.real_data
@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_real_val_split(benchmark):
    data_root = os.environ.get("MAFT_DATA_ROOT")
    root = Path(data_root or "/nonexistent") / SUBFOLDERS[benchmark]
    if not root.is_dir():
        pytest.skip(f"{root} not found (set MAFT_DATA_ROOT)")
    ds = SemSegDataset(benchmark, root, "val")
    assert len(ds) == int(benchmark_info(benchmark)["num_images"]["val"])
    item = ds[0]
    labels = item["label"][item["label"] != ds.vocabulary.ignore_index]
    assert item["image"].dtype == torch.uint8 and int(labels.max()) < ds.vocabulary.num_classes
