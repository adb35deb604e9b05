"""Importing the official MAFT checkpoint layout (IPCLIP.*, T.*, clip_adapter.clip_model.*)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import open_clip
import pytest
import torch

from maft.errors import CheckpointError
from maft.models.clip import build_clip
from maft.models.clip.convert import (
    convert_maft_state_dict,
    find_visual_prefix,
    load_maft_visual,
    text_tower_state_dict,
)
from maft.models.clip.ip_clip import IPClipEncoder
from maft.models.clip.text import TextClassifier

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "convert_maft_checkpoint.py"


def _official_like(clip: open_clip.CLIP) -> dict:
    """A detectron2-style checkpoint with the official attribute names and three visual towers."""
    visual = {k: v.clone() for k, v in clip.visual.state_dict().items()}
    model = {f"IPCLIP.{k}": v + 1.0 for k, v in visual.items()}  # the fine-tuned tower
    model.update({f"T.{k}": v for k, v in visual.items()})  # frozen teacher
    model.update({f"clip_adapter.clip_model.{k}": v for k, v in clip.state_dict().items()})
    model["sem_seg_head.predictor.query_embed.weight"] = torch.zeros(4, 8)
    return {"model": model, "iteration": 60000}


@pytest.fixture
def official_file(tiny_clip: open_clip.CLIP, tmp_path: Path) -> Path:
    path = tmp_path / "MAFT_tiny.pth"
    torch.save(_official_like(tiny_clip), path)
    return path


def test_convert_picks_ipclip_and_reports(tiny_clip: open_clip.CLIP) -> None:
    ckpt = _official_like(tiny_clip)
    visual_sd, report = convert_maft_state_dict(ckpt["model"], source="x.pth")
    n_visual = len(tiny_clip.visual.state_dict())
    assert report.prefix == "IPCLIP." and len(report.loaded) == n_visual
    assert report.ignored == len(ckpt["model"]) - n_visual
    torch.testing.assert_close(visual_sd["proj"], tiny_clip.visual.proj + 1.0)
    assert "loaded: " in report.summary() and "IPCLIP." in report.summary()


def test_prefix_rules() -> None:
    keys = [
        "clip_adapter.clip_model.visual.conv1.weight",
        "clip_adapter.clip_model.token_embedding.weight",
    ]
    assert find_visual_prefix(keys) == "clip_adapter.clip_model.visual."
    two = ["a.visual.conv1.weight", "b.conv1.weight"]
    assert find_visual_prefix(two) == "a.visual."
    with pytest.raises(CheckpointError, match="ckpt.pth.*candidate"):
        find_visual_prefix(["a.conv1.weight", "b.conv1.weight"], source="ckpt.pth")
    assert find_visual_prefix(["a.conv1.weight", "b.conv1.weight"], prefix="b.") == "b."
    with pytest.raises(CheckpointError, match="zzz"):
        find_visual_prefix(keys, prefix="zzz.")


def test_load_into_ip_clip_encoder(official_file: Path) -> None:
    target = open_clip.create_model("maft-tiny")
    enc = IPClipEncoder.from_open_clip(target.visual, start_layer=1)
    report = load_maft_visual(enc.visual, official_file)
    assert not report.missing and not report.unexpected
    ckpt = torch.load(official_file, weights_only=True)["model"]
    torch.testing.assert_close(enc.visual.conv1.weight, ckpt["IPCLIP.conv1.weight"], rtol=0, atol=0)
    teacher = open_clip.create_model("maft-tiny")
    load_maft_visual(teacher.visual, official_file, prefix="T.")
    torch.testing.assert_close(teacher.visual.proj, ckpt["T.proj"], rtol=0, atol=0)


def test_missing_key_names_file_and_key(tiny_clip: open_clip.CLIP, tmp_path: Path) -> None:
    ckpt = _official_like(tiny_clip)
    del ckpt["model"]["IPCLIP.ln_post.bias"]
    path = tmp_path / "broken_maft.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"broken_maft\.pth.*ln_post\.bias"):
        load_maft_visual(open_clip.create_model("maft-tiny").visual, path)


def test_text_tower_extraction(tiny_clip: open_clip.CLIP) -> None:
    text = text_tower_state_dict(_official_like(tiny_clip)["model"])
    assert "token_embedding.weight" in text and not any(k.startswith("visual.") for k in text)


def _script():
    spec = importlib.util.spec_from_file_location("convert_maft_checkpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_visual_and_full(
    official_file: Path, tiny_clip: open_clip.CLIP, tmp_path: Path, capsys
) -> None:
    script = _script()
    out = tmp_path / "visual.pt"
    assert script.main([str(official_file), str(out), "--model", "maft-tiny"]) == 0
    printed = capsys.readouterr().out
    assert "loaded: " in printed and "missing: 0" in printed and "unexpected: 0" in printed
    visual_sd = torch.load(out, weights_only=True)
    enc = IPClipEncoder.from_open_clip(open_clip.create_model("maft-tiny").visual, start_layer=1)
    enc.visual.load_state_dict(visual_sd)
    assert script.main([str(official_file), str(out), "--model", "maft-tiny"]) == 2  # no overwrite

    full = tmp_path / "full.pt"
    assert script.main([str(official_file), str(full), "--model", "maft-tiny", "--full"]) == 0
    model, _ = build_clip("maft-tiny", str(full))  # OpenAI markers → QuickGELU
    assert isinstance(
        model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU
    )
    torch.testing.assert_close(model.visual.proj, tiny_clip.visual.proj + 1.0, rtol=0, atol=0)
    torch.testing.assert_close(model.ln_final.weight, tiny_clip.ln_final.weight, rtol=0, atol=0)
    assert TextClassifier(model, open_clip.get_tokenizer("maft-tiny"))(["cat"]).shape == (1, 32)


def test_cli_reports_mismatch(official_file: Path, tmp_path: Path, capsys) -> None:
    script = _script()
    assert (
        script.main(
            [
                str(official_file),
                str(tmp_path / "o.pt"),
                "--model",
                "maft-tiny",
                "--prefix",
                "sem_seg_head.",
            ]
        )
        == 1
    )
    assert "error:" in capsys.readouterr().err
