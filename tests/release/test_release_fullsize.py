"""Full-size release files (MAFT_Vitb.pt, MAFT_Vitl.pt, freeseg_model.pt) with random weights.

The key lists of the real files (``fullsize_keys_*.txt``: every key, shape and dtype, in order) are
turned into random release-format checkpoints; loading them must consume every key (or ignore it
for its documented reason) and put every official tensor, unchanged, where the mapping table of
``maft.models.release`` says. ViT-B and FreeSeg also segment one image on CPU.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from maft.errors import CheckpointError
from maft.models.release import (
    CLIP_MEAN,
    CLIP_STD,
    IGNORED_PREFIXES,
    map_release_state_dict,
    read_release_file,
)
from maft.predictor import Predictor
from maft.tasks.release import PAPER_ROWS, maft_task_from_release

pytestmark = pytest.mark.slow

#: Released file name, key count, kind, CLIP vision width and whether to run a prediction.
CASES: dict[str, dict] = {
    "vitb": {"file": "MAFT_Vitb.pt", "keys": 1465, "kind": "maft", "width": 768, "predict": True},
    "vitl": {"file": "MAFT_Vitl.pt", "keys": 1897, "kind": "maft", "width": 1024, "predict": False},
    "freeseg": {
        "file": "freeseg_model.pt",
        "keys": 1161,
        "kind": "freeseg",
        "width": 768,
        "predict": True,
    },
}
IGNORED_SINGLE = ("criterion.empty_weight", "clip_adapter.pixel_mean", "clip_adapter.pixel_std")
VISUAL = "clip_adapter.clip_model.visual."
TEXT = "clip_adapter.clip_model."
NAMES = ["person", "sky", "grass", "zebra crossing", "teapot"]
IMAGE_SIZE = (600, 800)  # short side 640: resized to 640x853, padded to 640x864


# ---------------------------------------------------------------------------------------- helpers
def read_key_list(path: Path) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """``name<TAB>[shape]<TAB>dtype`` lines -> (name, shape, dtype), in file order."""
    out = []
    for line in path.read_text("utf-8").splitlines():
        name, shape, dtype = line.split("\t")
        dims = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
        out.append((name, dims, getattr(torch, dtype)))
    return out


def fake_value(name: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator | None):
    """A plausible tensor for one official key (random unless ``gen`` is None: zeros)."""
    leaf = name.rsplit(".", 1)[-1]
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    if name == "criterion.empty_weight":
        t = torch.ones(shape)
        t[-1] = 0.1
    elif name == "clip_adapter.pixel_mean":
        t = torch.tensor(CLIP_MEAN).view(shape)
    elif name == "clip_adapter.pixel_std":
        t = torch.tensor(CLIP_STD).view(shape)
    elif leaf == "logit_scale":
        t = torch.full(shape, float(np.log(100.0)))
    elif gen is None:
        t = torch.zeros(shape)
    elif leaf == "running_var":
        t = 1.0 + 0.1 * torch.rand(shape, generator=gen)
    elif leaf == "weight" and len(shape) == 1:  # LayerNorm / GroupNorm / FrozenBN scales
        t = 1.0 + 0.02 * torch.randn(shape, generator=gen)
    else:
        t = 0.02 * torch.randn(shape, generator=gen)
    return t.to(dtype)


def fake_release_state_dict(keys: list, seed: int | None = 0) -> dict[str, torch.Tensor]:
    """Release state dict of the key list; ``T.*`` copies the frozen tower as in the real files."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    sd = {}
    for name, shape, dtype in keys:
        if name.startswith("T.") and VISUAL + name[2:] in sd:
            sd[name] = sd[VISUAL + name[2:]].clone()
        else:
            sd[name] = fake_value(name, shape, dtype, gen)
    return sd


def documented_targets(key: str, kind: str) -> list[str]:
    """MaftTask keys of one non-ignored official key, per the table of ``maft.models.release``."""
    if key.startswith(("backbone.", "sem_seg_head.")):
        return ["generator." + key]
    if key == "clip_adapter.non_object_embedding":
        return ["generator.void_embedding"]
    if key.startswith(VISUAL):
        rest = key[len(VISUAL) :]
        return ["teacher_visual." + rest] + (
            ["clip_model.visual." + rest] if kind == "freeseg" else []
        )
    if key.startswith(TEXT):
        return ["clip_model." + key[len(TEXT) :]]
    if key.startswith("IPCLIP.") and kind == "maft":
        return ["clip_model.visual." + key[len("IPCLIP.") :]]
    raise AssertionError(f"{key} is outside the documented groups")


def is_ignored(key: str) -> bool:
    """The documented ignored groups: ``T.*``, the criterion buffer, CLIP pixel constants."""
    return key.startswith("T.") or key in IGNORED_SINGLE


def group(key: str) -> str:
    """Group of an official key for the per-group report (backbone, pixel_decoder, ...)."""
    if key.startswith("sem_seg_head."):
        return ".".join(key.split(".")[:2])
    if key.startswith(VISUAL):
        return "clip visual"
    if key.startswith(TEXT):
        return "clip text"
    return key.split(".")[0]


def assert_values_in_task(task, official: dict[str, torch.Tensor], kind: str) -> dict[str, int]:
    """Every non-ignored official tensor sits unchanged at its documented task key(s)."""
    tsd = task.state_dict()
    covered: set[str] = set()
    per_group: dict[str, int] = {}
    for key, value in official.items():
        if is_ignored(key):
            continue
        for target in documented_targets(key, kind):
            assert target in tsd, f"{key}: documented target {target} is not a task key"
            assert tsd[target].dtype == value.dtype, f"{key} -> {target}: dtype changed"
            assert torch.equal(tsd[target], value), f"{key} -> {target}: values differ"
            covered.add(target)
        per_group[group(key)] = per_group.get(group(key), 0) + 1
    assert covered == set(tsd), f"task keys filled from nowhere: {sorted(set(tsd) - covered)[:6]}"
    return per_group


def assert_prediction(task, settings) -> float:
    """A 600x800 image through ``Predictor`` (CPU): scores [C, H0, W0], finite, labels = argmax."""
    pred = Predictor(
        task,
        mode=task.eval_mode,
        short_side=settings.min_size_test,
        max_long_side=settings.max_size_test,
    )
    assert pred.mode == ("frozen_ip_clip" if settings.kind == "freeseg" else "maft")
    image = np.random.default_rng(0).integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8)
    assert pred.preprocess(image)["image"].shape[-2:] == (640, 864)  # resized and padded
    t0 = time.perf_counter()
    out = pred.predict(image, NAMES)
    seconds = time.perf_counter() - t0
    assert out.scores is not None and out.scores.shape == (len(NAMES), *IMAGE_SIZE)
    assert out.scores.dtype == torch.float32 and bool(torch.isfinite(out.scores).all())
    assert out.label_map.shape == IMAGE_SIZE
    assert torch.equal(out.label_map, out.scores.argmax(0))
    assert len(out.proposals) == task.hparams.generator["num_queries"]
    return seconds


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("which", list(CASES))
def test_fullsize_release_loads_every_key(
    which: str, release_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Random full-size weights load strictly; every tensor lands unchanged where documented."""
    case, times = CASES[which], {}
    t0 = time.perf_counter()
    keys = read_key_list(release_dir / f"fullsize_keys_{which}.txt")
    assert len(keys) == case["keys"]
    sd = fake_release_state_dict(keys)
    path = tmp_path / case["file"]
    torch.save({"model": sd, "iteration": 0}, path)
    del sd
    gc.collect()
    times["write"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="maft"):
        task, settings, mapping = maft_task_from_release(path)
    times["load"] = time.perf_counter() - t0
    assert not [r for r in caplog.records if "T.*" in r.getMessage()], "T.* copies flagged"
    assert settings.kind == case["kind"] and settings.source == "released defaults"
    assert settings.clip_arch["vision_cfg"]["width"] == case["width"]
    assert (settings.min_size_test, settings.max_size_test, settings.lambda_) == (640, 2560, 0.0)
    gen = settings.generator
    assert (gen["depth"], gen["conv_dim"], gen["hidden_dim"], gen["dec_layers"]) == (
        101,
        256,
        256,
        10,
    )
    assert (gen["enc_layers"], gen["num_queries"], gen["interaction_dim"]) == (6, 100, 2048)

    official = read_release_file(path)
    assert list(official) == [k for k, _, _ in keys]  # nothing lost on the way to disk
    assert settings.num_train_classes == official["criterion.empty_weight"].numel() - 1
    assert set(mapping.ignored) == {k for k in official if is_ignored(k)}
    teacher_reasons = {r for k, r in mapping.ignored.items() if k.startswith("T.")}
    assert teacher_reasons == ({IGNORED_PREFIXES["T."]} if case["kind"] == "maft" else set())
    n_teacher = sum(k.startswith("T.") for k in official)
    assert n_teacher == (
        0 if case["kind"] == "freeseg" else sum(k.startswith("IPCLIP.") for k in official)
    )
    per_group = assert_values_in_task(task, official, case["kind"])
    expected_groups = {"backbone", "sem_seg_head.pixel_decoder", "sem_seg_head.predictor"}
    expected_groups |= {"sem_seg_head.interaction", "clip_adapter", "clip text", "clip visual"}
    expected_groups |= {"IPCLIP"} if case["kind"] == "maft" else set()
    assert set(per_group) == expected_groups, per_group
    row = task.hparams.release
    assert row["file"] == case["file"] and row["paper_row"] == PAPER_ROWS[case["file"]]

    if which == "vitb":  # the official resolved yaml gives the same model
        del task
        gc.collect()
        t0 = time.perf_counter()
        task, settings_cfg, _ = maft_task_from_release(
            path, release_dir / "fullsize_vitb.config.yaml"
        )
        times["load with config"] = time.perf_counter() - t0
        assert settings_cfg.source.endswith("fullsize_vitb.config.yaml")
        common = set(settings.generator) & set(settings_cfg.generator)
        differ = {k for k in common if settings.generator[k] != settings_cfg.generator[k]}
        assert not differ, {k: (settings.generator[k], settings_cfg.generator[k]) for k in differ}
        assert settings_cfg.clip_arch == settings.clip_arch
        assert_values_in_task(task, official, case["kind"])
        settings = settings_cfg
    if case["predict"]:
        times["predict"] = assert_prediction(task, settings)
    print(f"\n{which}: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    del task, official, mapping
    gc.collect()
    path.unlink()  # up to 4.4 GB; pytest keeps the last temp folders


def test_fullsize_wrong_keys_are_named(release_dir: Path, tmp_path: Path) -> None:
    """A ViT-B file missing one sem_seg_head key and holding one extra key names both."""
    keys = read_key_list(release_dir / "fullsize_keys_vitb.txt")
    sd = fake_release_state_dict(keys, seed=None)  # zeros: only the key set matters here
    dropped = "sem_seg_head.predictor.decoder_norm.weight"
    extra = "sem_seg_head.predictor.extra_head.weight"
    assert dropped in sd
    del sd[dropped]
    sd[extra] = torch.zeros(4)
    path = tmp_path / "MAFT_Vitb_broken.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError) as err:
        maft_task_from_release(path)
    msg = str(err.value)
    assert dropped in msg and extra in msg and path.name in msg
    assert "1 missing" in msg and "1 unexpected" in msg

    sd[dropped] = torch.ones(256)
    del sd[extra]
    sd["decoder.extra.weight"] = torch.zeros(4)  # outside every documented group
    with pytest.raises(CheckpointError, match=r"decoder\.extra\.weight"):
        map_release_state_dict(sd, "maft", "MAFT_Vitb_broken.pt")
    del sd
    gc.collect()
    path.unlink()
