"""World CLIP pretraining: loss, schedule, pool, the script on a micro budget, and the cache."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from maft.models.clip import build_clip
from maft.world.pretrain import (
    _lr_factor,
    build_pool,
    config_key,
    contrastive_loss,
    ensure_world_clip,
)
from maft.world.scenes import masked_crop

ROOT = Path(__file__).resolve().parents[2]
MICRO = dict(
    budget_s=None, steps=2, batch_size=8, pool_size=12, eval_images=16, eval_scenes=2,
    progress=False,
)  # fmt: skip


def _reference_loss(img: np.ndarray, txt: np.ndarray, scale: float, keys: list[int]) -> float:
    """Float64 loop: mean over rows of -sum_j t_ij log softmax_j, both directions, averaged."""
    n = len(keys)
    logits = scale * img @ txt.T
    total = 0.0
    for mat in (logits, logits.T):
        for i in range(n):
            pos = [j for j in range(n) if keys[j] == keys[i]]
            lse = math.log(sum(math.exp(v) for v in mat[i]))
            total += -sum(mat[i, j] - lse for j in pos) / len(pos) / n
    return total / 2


def test_contrastive_loss_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    keys = [3, 5, 3, 9, 5, 3]
    got = contrastive_loss(img, txt, torch.tensor(7.0, dtype=torch.float64), torch.tensor(keys))
    ref = _reference_loss(img.numpy(), txt.numpy(), 7.0, keys)
    assert got.item() == pytest.approx(ref, rel=1e-9)


def test_lr_schedule() -> None:
    assert _lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert _lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert _lr_factor(0.55, 0.1) == pytest.approx(0.5)
    assert _lr_factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)


def test_masked_crop_fills_outside_with_mean() -> None:
    img = np.full((8, 8, 3), 200, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2] = True
    mask[2, 2:6] = True  # an L shape: the box holds non-mask pixels
    out = masked_crop(img, mask, np.array([10, 20, 30], np.uint8))
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[0, 0], [200, 200, 200])  # top-left corner is mask
    np.testing.assert_array_equal(out[-1, -1], [10, 20, 30])  # bottom-right is fill


def test_pool_sizes_and_keys() -> None:
    pool = build_pool(10, size=32, seed=0, crop_frac=0.5, mask_frac=0.3)
    assert pool.images.shape == (10 + 5 + 3, 3, 32, 32) and pool.images.dtype == torch.uint8
    assert pool.tokens.shape == (18, 20) and pool.keys.shape == (18,)
    assert bool((pool.keys > 0).all())


def test_default_pool_is_whole_scenes_only() -> None:
    """The default recipe (OpenAI CLIP's): every pool item is a whole scene with its own caption."""
    from maft.world.pretrain import _key, world_tokenizer
    from maft.world.scenes import generate_scene, scene_rng

    pool = build_pool(6, size=32, seed=2)
    assert pool.images.shape == (6, 3, 32, 32)
    for i in range(6):
        sc = generate_scene(scene_rng(2, "pool", i), 32)
        np.testing.assert_array_equal(pool.images[i].permute(1, 2, 0).numpy(), sc.image)
        assert int(pool.keys[i]) == _key(sc.classes)
        assert torch.equal(pool.tokens[i], world_tokenizer()([sc.caption])[0])


def test_ablation_recipes_keep_their_cache_keys() -> None:
    """world_zoom / world_masked name their pool fractions, so their cached CLIPs stay valid."""
    from maft.config import compose

    def key(clip: str) -> str:
        cfg = compose(["experiment=world", f"model/clip={clip}"])
        return config_key(**dict(cfg.model.clip.world_pretrain))  # as ensure_world_clip keys it

    default, zoom, masked = key("world"), key("world_zoom"), key("world_masked")
    assert default == config_key(0, steps=240, budget_s=None, crop_frac=0.0, mask_frac=0.0)
    assert zoom == config_key(0, steps=240, budget_s=None, crop_frac=0.3, mask_frac=0.0)
    assert masked == config_key(0, steps=240, budget_s=None, crop_frac=0.3, mask_frac=0.15)
    assert len({default, zoom, masked}) == 3


def _load_script():
    path = ROOT / "scripts" / "pretrain_world_clip.py"
    spec = importlib.util.spec_from_file_location("pretrain_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_micro_budget_writes_loadable_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "clip" / "w.pt"
    argv = [
        "--out", str(out), "--seed", "3", "--budget-s", "0", "--steps", "2", "--batch-size", "8",
        "--pool-size", "12", "--eval-images", "16", "--eval-scenes", "2", "--no-progress",
    ]  # fmt: skip
    meta = _load_script().main(argv)
    printed = capsys.readouterr().out
    assert "seed: 3" in printed and "region level" in printed and "command:" in printed
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["steps"] == 2 and side["seed"] == 3 and side == json.loads(json.dumps(meta))
    acc = side["accuracy"]
    assert 0.0 <= acc["image_seen"] <= 1.0 and 0.0 <= acc["image_unseen"] <= 1.0  # 16 images
    assert acc["n_regions"] >= 4  # 2 scenes of 2-4 regions; a split may lack regions: None
    assert all(acc[k] is None or 0.0 <= acc[k] <= 1.0 for k in ("region_seen", "region_unseen"))
    model = open_clip.create_model("maft-world", pretrained=str(out))  # plain open_clip path
    saved = torch.load(out, weights_only=True)
    assert torch.equal(model.state_dict()["visual.proj"], saved["visual.proj"])
    model2, norm = build_clip("maft-world", pretrained=str(out))
    assert norm.image_size == 64
    assert torch.equal(model2.state_dict()["text_projection"], saved["text_projection"])


def test_ensure_world_clip_caches_by_key(tmp_path: Path) -> None:
    path = ensure_world_clip(tmp_path, seed=1, **MICRO)
    stamp = path.stat().st_mtime_ns
    assert ensure_world_clip(tmp_path, seed=1, **MICRO) == path
    assert path.stat().st_mtime_ns == stamp  # cached: not retrained
    assert json.loads(path.with_suffix(".json").read_text())["key"] == config_key(1, **MICRO)
    assert config_key(2, **MICRO) != config_key(1, **MICRO)
    assert config_key(1, **{**MICRO, "lr": 1e-3}) != config_key(1, **MICRO)
    assert config_key(1, **{**MICRO, "progress": True}) == config_key(1, **MICRO)


def test_cache_files_are_keyed_by_settings(tmp_path):
    """Two settings never share a cache file (the quick run must not clobber the demo CLIP)."""
    from maft.world.pretrain import config_key, ensure_world_clip

    a = ensure_world_clip(
        tmp_path,
        seed=0,
        steps=1,
        budget_s=None,
        pool_size=16,
        eval_images=4,
        eval_scenes=4,
        progress=False,
    )
    b = ensure_world_clip(
        tmp_path,
        seed=0,
        steps=2,
        budget_s=None,
        pool_size=16,
        eval_images=4,
        eval_scenes=4,
        progress=False,
    )
    assert a != b and a.is_file() and b.is_file()
    assert (
        config_key(
            0, steps=1, budget_s=None, pool_size=16, eval_images=4, eval_scenes=4, progress=False
        )
        in a.name
    )
