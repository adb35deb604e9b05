"""maft.checkpoints: every kind is told from a file, every error names the file and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from maft.checkpoints import (
    check_keys,
    check_load_result,
    expect_kind,
    identify_checkpoint,
    read_checkpoint,
    read_lightning_checkpoint,
    read_state_dict,
)
from maft.errors import CheckpointError
from maft.models.release import is_release_file

T = torch.zeros(2)
MAFT_HP = {"vocabulary": {}, "clip": {}, "generator": {}, "lambda_": 0.0}
STAGE1_HP = {"class_names": ["a"], "generator": {}, "criterion": {}}
FILES = {
    "maft.ckpt": ({"state_dict": {"generator.w": T}, "hyper_parameters": MAFT_HP}, "maft"),
    "stage1.ckpt": (
        {
            "state_dict": {"generator.w": T},
            "hyper_parameters": {"class_names": ["a"], "criterion": {}},
        },
        "proposals",
    ),
    "MAFT_Vitb.pt": ({"model": {"backbone.stem.w": T, "sem_seg_head.w": T}}, "release"),
    "bare_release.pth": ({"backbone.stem.w": T, "sem_seg_head.w": T}, "release"),
    "open_clip.pt": ({"logit_scale": T, "visual.conv1.weight": T}, "clip"),
    "openai_sd.pt": ({"input_resolution": T, "token_embedding.weight": T}, "clip"),
    "module_clip.pt": ({"module.logit_scale": T, "module.token_embedding.weight": T}, "clip"),
    "foreign.pt": ({"weight": T}, "unknown"),
    "no_hparams.ckpt": ({"state_dict": {"w": T}}, "unknown"),
    "other_task.ckpt": ({"state_dict": {"w": T}, "hyper_parameters": {"lr": 1.0}}, "unknown"),
}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """One file per entry of FILES."""
    for name, (obj, _) in FILES.items():
        torch.save(obj, tmp_path / name)
    return {name: tmp_path / name for name in FILES}


def test_each_kind_is_identified(files: dict[str, Path]) -> None:
    for name, (_, kind) in FILES.items():
        assert identify_checkpoint(files[name]) == kind, name
        assert is_release_file(files[name]) == (kind == "release"), name


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation notices
def test_real_maft_checkpoint_and_legacy_and_torchscript_files(maft_ckpt: Path, tmp_path: Path):
    assert identify_checkpoint(maft_ckpt) == "maft"
    legacy = tmp_path / "legacy.pt"  # pre-zip format: no memory map, read plainly
    torch.save({"model": {"sem_seg_head.w": T}}, legacy, _use_new_zipfile_serialization=False)
    assert identify_checkpoint(legacy) == "release"
    jit = tmp_path / "ViT-jit.pt"  # OpenAI's released CLIPs are TorchScript archives
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(jit))
    assert identify_checkpoint(jit) == "clip"
    sd, is_openai = read_state_dict(jit)
    assert is_openai and set(sd) == {"weight", "bias"}


def test_read_state_dict_unwraps_and_marks_openai(files: dict[str, Path]) -> None:
    sd, is_openai = read_state_dict(files["openai_sd.pt"])
    assert is_openai and set(sd) == {"token_embedding.weight"}  # OpenAI entries dropped
    assert read_state_dict(files["module_clip.pt"])[0].keys() == {
        "logit_scale",
        "token_embedding.weight",
    }
    sd, is_openai = read_state_dict(files["MAFT_Vitb.pt"])  # detectron2: under "model"
    assert set(sd) == {"backbone.stem.w", "sem_seg_head.w"} and not is_openai


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"not found: .*absent\.ckpt"):
        read_checkpoint(tmp_path / "absent.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt: cannot read checkpoint"):
        read_checkpoint(garbage)
    with pytest.raises(CheckpointError, match=r"garbage\.ckpt: cannot read"):
        identify_checkpoint(garbage)
    assert not is_release_file(garbage) and not is_release_file(tmp_path / "absent.ckpt")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match=r"tensor\.pt: not a checkpoint .*Tensor"):
        read_checkpoint(tensor)
    plain = tmp_path / "plain.pt"
    torch.save({"weight": T}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.pt: not a Lightning checkpoint"):
        read_lightning_checkpoint(plain)
    empty = tmp_path / "empty.pt"
    torch.save({"step": 3}, empty)
    with pytest.raises(CheckpointError, match=r"empty\.pt: holds no state dict"):
        read_state_dict(empty)


def test_expect_kind_says_what_the_file_is(files: dict[str, Path]) -> None:
    assert expect_kind(files["maft.ckpt"], ["maft"]) == "maft"
    with pytest.raises(CheckpointError, match=r"stage1\.ckpt is a ProposalTask .*not a MaftTask"):
        expect_kind(files["stage1.ckpt"], ["maft"], "use the stage-2 file")
    with pytest.raises(CheckpointError, match=r"no_hparams\.ckpt .*without maft hyperparameters"):
        expect_kind(files["no_hparams.ckpt"], ["maft", "proposals"])
    with pytest.raises(CheckpointError, match=r"foreign\.pt is a file maft does not recognise"):
        expect_kind(files["foreign.pt"], ["release"])


def test_key_checks_list_every_problem_with_the_file() -> None:
    model = nn.Linear(3, 2)
    given = {"weight": torch.zeros(2, 4), "extra": T}  # bias missing, weight mis-shaped
    with pytest.raises(CheckpointError) as err:
        check_keys(model.state_dict(), given, "w.pt", hint="Check the model name.")
    msg = str(err.value)
    assert msg.startswith("w.pt does not fit the model: 1 missing: [bias]; 1 unexpected: [extra]")
    assert "1 wrong shape: [weight: checkpoint (2, 4) vs model (2, 3)]" in msg
    assert msg.endswith("Check the model name.")
    check_keys(model.state_dict(), model.state_dict(), "same.pt")  # a match raises nothing
    many = {f"k{i}": T for i in range(9)}
    with pytest.raises(CheckpointError, match=r"9 unexpected: \[k0, .*k5\] \(\+3 more\)"):
        check_keys({}, many, "many.pt")
    result = model.load_state_dict({"weight": torch.zeros(2, 3), "x": T}, strict=False)
    with pytest.raises(CheckpointError, match=r"run\.ckpt does not fit the head: 1 missing"):
        check_load_result(result, Path("run.ckpt"), "the head")


def test_proposal_task_checkpoint_of_either_form_is_stage_1(tmp_path: Path) -> None:
    """A ProposalTask saved with its vocabulary dict (MaftTask's three keys too) is stage 1."""
    from maft.data.vocabulary import Vocabulary
    from maft.tasks.maft_task import MaftTask
    from maft.tasks.proposal_task import ProposalTask
    from maft_testing import TINY_LITE_KWARGS, lightning_checkpoint

    vocab = Vocabulary.from_names(["sky", "road"], [True, False])
    task = ProposalTask(
        vocabulary=vocab.to_dict(), clip={"name": "maft-tiny"}, generator=dict(TINY_LITE_KWARGS)
    )
    path = lightning_checkpoint(task, tmp_path / "stage1.ckpt")
    assert identify_checkpoint(path) == "proposals"
    with pytest.raises(CheckpointError, match=r"stage1\.ckpt is a ProposalTask"):
        MaftTask.from_checkpoint(path)
