"""ZeroShotSegMetrics (docs/method.md §7): dataset-level accumulation, keys, DDP summation."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from maft.errors import ConfigError, LabelValueError
from maft.metrics import ZeroShotSegMetrics

NUM_CLASSES = 6
SEEN = torch.tensor([True, True, True, False, False, True])


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four random images; class 5 never in GT, a fifth of the pixels ignored."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 5, (4, 10, 12), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    preds = torch.randint(0, NUM_CLASSES, target.shape, generator=g)
    return preds, target


@pytest.mark.parametrize("rule", ["gt_or_pred", "gt_present"])
def test_batches_accumulate_to_dataset_level_numbers(reference, rule: str) -> None:
    preds, target = _data()
    m = ZeroShotSegMetrics(NUM_CLASSES, seen=SEEN, ignore_index=255, rule=rule)
    m.update(preds[:1], target[:1])
    m.update(preds[1:], target[1:])
    got = m.compute()
    ref = reference(preds.numpy(), target.numpy(), NUM_CLASSES, 255, SEEN.numpy(), rule)
    assert set(got) == {*ref, "rule"}
    assert got["rule"] == rule
    for key in ("miou", "pacc", "macc", "fwiou", "miou_seen", "miou_unseen", "hiou"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12), key
        assert isinstance(got[key], float)
    np.testing.assert_allclose(got["iou_per_class"], ref["iou_per_class"], equal_nan=True)
    # the dataset-level mIoU is not the mean of per-image mIoUs
    per_image = []
    for i in range(4):
        one = ZeroShotSegMetrics(NUM_CLASSES, ignore_index=255, rule=rule)
        one.update(preds[i : i + 1], target[i : i + 1])
        per_image.append(one.compute()["miou"])
    assert abs(np.mean(per_image) - got["miou"]) > 1e-6


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_no_split_omits_subset_keys_and_reset_clears() -> None:
    preds, target = _data(1)
    m = ZeroShotSegMetrics(NUM_CLASSES)
    m.update(preds, target)
    assert {"miou_seen", "miou_unseen", "hiou"}.isdisjoint(m.compute())
    m.reset()
    assert int(m.confmat.sum()) == 0
    assert math.isnan(m.compute()["miou"])


def test_uint16_targets_with_65535_ignore() -> None:
    preds, target = _data(2)
    wide = target.clone()
    wide[wide == 255] = 65535
    a = ZeroShotSegMetrics(NUM_CLASSES, SEEN, ignore_index=65535)
    a.update(preds.to(torch.uint8), wide.to(torch.uint16))
    b = ZeroShotSegMetrics(NUM_CLASSES, SEEN, ignore_index=255)
    b.update(preds, target)
    assert torch.equal(a.confmat, b.confmat)
    with pytest.raises(LabelValueError, match="65535"):
        b.update(preds, wide.to(torch.int32))


def test_constructor_errors() -> None:
    with pytest.raises(ConfigError, match="gt_present"):
        ZeroShotSegMetrics(3, rule="per_image")
    with pytest.raises(ConfigError, match="num_classes is 3"):
        ZeroShotSegMetrics(3, seen=torch.tensor([True, False]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One process of the 2-process gloo run: update with its half, compute (syncs), save."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        preds, target = _data()
        m = ZeroShotSegMetrics(NUM_CLASSES, seen=SEEN, ignore_index=255)
        m.update(preds[rank::world], target[rank::world])
        torch.save(m.compute(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(tmp_path) -> None:
    preds, target = _data()
    single = ZeroShotSegMetrics(NUM_CLASSES, seen=SEEN, ignore_index=255)
    single.update(preds, target)
    expected = single.compute()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for key, val in expected.items():
            if key == "iou_per_class":
                np.testing.assert_allclose(got[key], val, equal_nan=True)
            else:
                assert got[key] == pytest.approx(val, nan_ok=True), key
