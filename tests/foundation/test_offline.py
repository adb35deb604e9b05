"""Offline, pretrained weights fail at once with a remedy (never the hub's ~50 s of retries).

No test here touches the network: ``HF_HUB_OFFLINE=1`` or a replaced probe decides, the caches
are empty temporary folders, and the download functions record any call.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import maft.offline as offline
from maft.config import compose
from maft.errors import ConfigError, MaftError
from maft.models.clip import build_clip, factory
from maft.models.proposals.backbone import TimmBackbone
from maft.offline import WeightsUnavailableError, check_weights_available

ROOT = Path(__file__).resolve().parents[2]
PROXIES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")
VIT_B16_HUB = "models--timm--vit_base_patch16_clip_224.openai"


@pytest.fixture()
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty HF hub, open_clip URL and torch hub caches; no proxy, the default HF endpoint."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # open_clip's ~/.cache/clip
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))
    for key in (*PROXIES, "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


@pytest.fixture()
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every download attempt (open_clip's and timm's pretrained weights), recorded, never run."""
    calls: list[str] = []

    def fake_open_clip(cfg: dict, *args: object, **kwargs: object) -> str:
        calls.append(f"open_clip {cfg.get('hf_hub') or cfg.get('url')}")
        return "/downloaded/weights.bin"

    real_create = timm.create_model

    def fake_create(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        if pretrained and "pretrained_cfg_overlay" not in kwargs:
            calls.append(f"timm {name}")
            raise AssertionError("timm download attempted")
        return real_create(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(factory, "download_pretrained", fake_open_clip)
    monkeypatch.setattr(timm, "create_model", fake_create)
    return calls


def _no_probe(host: str, port: int, timeout: float = 0.0) -> bool:
    raise AssertionError(f"probed {host}:{port} although HF_HUB_OFFLINE is set")


def test_offline_clip_tag_fails_at_once_naming_weights_and_remedy(
    empty_caches: Path, downloads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(offline, "probe", _no_probe)
    with pytest.raises(WeightsUnavailableError) as info:
        build_clip("ViT-B-16", "openai")
    message = str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, MaftError)
    assert "model.clip.name=ViT-B-16 pretrained=openai" in message
    assert "HF_HUB_OFFLINE" in message and "vit_base_patch16_clip_224.openai" in message
    assert "model.clip.pretrained=/path/to/weights" in message
    assert "experiment=folder_cpu" in message
    assert downloads == []


def test_unreachable_hub_is_probed_once_then_fails(
    empty_caches: Path, downloads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probes: list[tuple[str, int]] = []
    monkeypatch.setattr(offline, "probe", lambda h, p, timeout=0.0: probes.append((h, p)) or False)
    with pytest.raises(WeightsUnavailableError, match=r"huggingface\.co:443 cannot be reached"):
        build_clip("ViT-B-16", "openai")
    assert probes == [("huggingface.co", 443)] and downloads == []
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # the proxy is what to reach
    with pytest.raises(WeightsUnavailableError, match=r"proxy\.example:3128 cannot be reached"):
        build_clip("ViT-B-16", "openai")


def test_reachable_hub_downloads(
    empty_caches: Path, downloads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(offline, "probe", lambda h, p, timeout=0.0: True)
    cfg = factory.get_pretrained_cfg("ViT-B-16", "openai")
    assert factory._download_pretrained("ViT-B-16", "openai", cfg) == "/downloaded/weights.bin"
    assert downloads == ["open_clip timm/vit_base_patch16_clip_224.openai/"]


def test_cached_files_are_used_without_network(
    empty_caches: Path, downloads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(offline, "probe", _no_probe)
    repo = empty_caches / "hf" / VIT_B16_HUB
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    hit = repo / "snapshots" / "abc123" / "open_clip_pytorch_model.bin"
    hit.parent.mkdir(parents=True)
    hit.write_bytes(b"weights")
    cfg = factory.get_pretrained_cfg("ViT-B-16", "openai")
    assert factory._download_pretrained("ViT-B-16", "openai", cfg) == str(hit)
    factory.check_pretrained_available("ViT-B-16", "openai")  # the pre-flight agrees
    url_only = {"url": "https://example.invalid/clip/ViT-X.pt"}  # open_clip's URL cache
    cached = empty_caches / "home" / ".cache" / "clip" / "ViT-X.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert factory._download_pretrained("ViT-X", "tag", url_only) == str(cached)
    assert downloads == []


def test_offline_timm_backbone_fails_at_once(
    empty_caches: Path, downloads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(offline, "probe", _no_probe)
    with pytest.raises(WeightsUnavailableError) as info:
        TimmBackbone("resnet50", pretrained=True)
    message = str(info.value)
    assert "model.proposals.backbone=resnet50" in message and "timm/resnet50" in message
    assert "model.proposals.backbone_weights=<file>" in message
    assert "model.proposals.pretrained_backbone=false" in message
    assert downloads == []


def test_preflight_of_a_training_config(
    empty_caches: Path, downloads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(offline, "probe", _no_probe)
    folder = ["data=folder", f"data.root={empty_caches / 'my_data'}", "split=from_file"]
    with pytest.raises(WeightsUnavailableError, match="pretrained=openai"):
        check_weights_available(compose(folder, output_dir=empty_caches / "run"))
    local = empty_caches / "ViT-B-16.pt"
    local.write_bytes(b"a local file")
    lite = [*folder, f"model.clip.pretrained={local}", "model/proposals=lite_r50"]
    with pytest.raises(WeightsUnavailableError, match="backbone=resnet50"):
        check_weights_available(compose(lite, output_dir=empty_caches / "run"))
    recipe = ["experiment=folder_cpu", f"data.root={empty_caches / 'my_data'}"]
    check_weights_available(compose(recipe, output_dir=empty_caches / "run"))  # nothing to fetch
    assert downloads == []


def test_cli_offline_default_clip_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k not in PROXIES},
        "PYTHONPATH": str(ROOT / "src"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hf"),
        "HOME": str(tmp_path / "home"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }
    cmd = [
        sys.executable,
        "-m",
        "maft.train",
        "data=folder",
        f"data.root={tmp_path / 'my_data'}",
        "split=from_file",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("maft: error: WeightsUnavailableError: the CLIP weights")
    assert "model.clip.pretrained=" in last and "experiment=folder_cpu" in last
