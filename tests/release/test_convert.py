"""``maft-convert``: a release file becomes maft checkpoints that give the same predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maft.convert import main as convert_main
from maft.data.vocabulary import Vocabulary
from maft.predictor import Predictor
from maft.tasks.proposal_task import ProposalTask


@pytest.fixture(scope="module")
def converted(maft_dev: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("converted")
    argv = [str(maft_dev["weights"]), "--out", str(out), "--config", str(maft_dev["config"])]
    assert convert_main(argv) == 0
    return out


def test_report_accounts_for_every_key(converted: Path, maft_dev: dict) -> None:
    report = json.loads((converted / "conversion.json").read_text())
    sd = maft_dev["state_dict"]
    assert report["kind"] == "maft"
    ignored = sum(report["ignored_keys"].values())
    assert report["consumed_keys"] + ignored == len(sd)
    assert ignored == sum(1 for k in sd if k.startswith("T.")) + 3


def test_maft_checkpoint_predicts_like_the_release(converted: Path, maft_dev: dict) -> None:
    inputs = maft_dev["inputs"]
    vocab = Vocabulary.from_names(
        list(inputs["class_names"]), [bool(s) for s in inputs["seen_flags"]]
    )
    direct = Predictor.from_official(maft_dev["weights"], maft_dev["config"])
    loaded = Predictor.from_checkpoint(converted / "maft.ckpt", short_side=direct.short_side)
    a = direct.predict(maft_dev["image"], vocab)
    b = loaded.predict(maft_dev["image"], vocab)
    assert torch.equal(a.scores, b.scores)
    gold = maft_dev["outputs"]["sem_seg_scores"]
    assert float((b.scores - gold).abs().max()) <= 1e-4 * float(gold.abs().max())


def test_proposal_checkpoint_holds_the_generator(converted: Path, maft_dev: dict) -> None:
    task = ProposalTask.load_from_checkpoint(converted / "proposals.ckpt", weights_only=True)
    sd = maft_dev["state_dict"]
    got = task.generator.state_dict()
    for key in ("backbone.res5.2.conv3.weight", "sem_seg_head.predictor.class_embed.layers.1.bias"):
        assert torch.equal(got[key], sd[key])
    assert torch.equal(got["void_embedding"], sd["clip_adapter.non_object_embedding"])
    assert task.hparams.generator["arch"] == "freeseg"


def test_refuses_to_overwrite(converted: Path, maft_dev: dict, capsys) -> None:
    assert convert_main([str(maft_dev["weights"]), "--out", str(converted)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_not_a_release_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, bad)
    assert convert_main([str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not an official FreeSeg/MAFT release file" in capsys.readouterr().err
