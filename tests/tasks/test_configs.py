"""Every experiment composes and instantiates; misspelled keys fail with their name."""

from __future__ import annotations

from pathlib import Path

import pytest

from maft.config import CONFIG_DIR, compose
from maft.data.synthetic import write_benchmark
from maft.errors import ConfigError
from maft.runner import (
    build_datamodule,
    build_maft_task,
    build_proposal_task,
    build_vocabulary,
    run_train,
)

from .conftest import TINY_DATA, TINY_MODEL

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
BENCHMARKS = ["coco_stuff_171", "voc_20", "ade20k_847", "ade20k_150", "pcontext_59", "pcontext_459"]
WORLD = {"world", "world_quick", "smoke"}
FOLDER = {"folder_cpu"}  # a user's folder: data.root names it


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every benchmark in its real on-disk layout under one MAFT_DATA_ROOT."""
    root = tmp_path_factory.mktemp("benchmarks")
    for b in [*BENCHMARKS, "folder"]:
        write_benchmark(root, b, n_images=3, size=(64, 64), seed=1)
    return root


def experiment_overrides(name: str, data_root: Path, tmp: Path) -> list[str]:
    over = [f"experiment={name}", f"paths.cache_dir={tmp / 'cache'}", *TINY_MODEL]
    if name not in WORLD:
        over += [f"paths.data_root={data_root}", *TINY_DATA]
    if name in FOLDER:
        over.append(f"data.root={data_root / 'folder'}")
    return over


def test_there_are_experiments() -> None:
    expected = {"coco_zs", "voc_zs", "ade_zs", "coco_cross", "frozen_clip_coco_zs"}
    expected |= {"proposals_coco_zs", "proposals_coco_full"}
    assert expected <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e not in WORLD])
def test_experiment_composes_and_instantiates(name: str, data_root: Path, tmp_path: Path) -> None:
    cfg = compose(experiment_overrides(name, data_root, tmp_path), output_dir=tmp_path)
    vocab = build_vocabulary(cfg)
    dm = build_datamodule(cfg, vocab)
    assert dm.test_vocabularies and len(dm.test_names) == len(dm.test_vocabularies)
    if "proposals" in cfg.stages or "proposals" in cfg.evaluate:
        task = build_proposal_task(cfg, vocab)
        assert task.vocab == vocab and task.hparams["vocabulary"] == vocab.to_dict()
    if "maft" in cfg.stages or any(r.startswith("frozen") for r in cfg.evaluate):
        task = build_maft_task(cfg, vocab, None)
        assert task.vocab == vocab
    if cfg.data.get("test_sets"):
        assert dm.test_names == [t["benchmark"] for t in cfg.data.test_sets]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [e for e in EXPERIMENTS if e not in WORLD and e != "freeseg_cross"]
)  # freeseg_cross evaluates a release file: tests/release/test_release_eval.py runs it
def test_experiment_runs_one_step(name: str, data_root: Path, tmp_path: Path) -> None:
    over = experiment_overrides(name, data_root, tmp_path)
    over += ["model.proposal_train.max_steps=1", "model.maft.max_steps=1"]
    if name.startswith("frozen_clip"):
        stage1 = compose([*over, "experiment=proposals_coco_zs"], output_dir=tmp_path / "s1")
        run_train(stage1)
        over.append(f"proposals_ckpt={tmp_path / 's1/checkpoints/proposals/final.ckpt'}")
    cfg = compose(over, output_dir=tmp_path / "run")
    out = run_train(cfg)
    assert set(out["results"]) == set(cfg.evaluate)
    assert (tmp_path / "run" / "report.md").is_file()


@pytest.mark.parametrize(
    "override, key",
    [
        ("+data.batch_sise=2", "batch_sise"),
        ("+model.proposals.hiden_dim=8", "hiden_dim"),
        ("+model.maft.dis_wieght=1", "dis_wieght"),
        ("+trainer.max_epoch=3", "max_epoch"),
    ],
)
def test_misspelled_keys_fail_with_their_name(
    override: str, key: str, data_root: Path, tmp_path: Path
) -> None:
    cfg = compose(
        [*experiment_overrides("coco_zs", data_root, tmp_path), override], output_dir=tmp_path
    )
    vocab = build_vocabulary(cfg)
    with pytest.raises(ConfigError, match=key):
        build_datamodule(cfg, vocab)
        build_proposal_task(cfg, vocab)
        build_maft_task(cfg, vocab, None)
        from maft.runner import build_trainer

        build_trainer(cfg, "maft", 1)
