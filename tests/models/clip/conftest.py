"""Fixtures for the CLIP layer: tiny open_clip models, their weight files, the golden file."""

from __future__ import annotations

import os
from pathlib import Path

import open_clip
import pytest
import torch

import maft.models.clip  # noqa: F401  (registers maft-tiny with open_clip)

_HERE = Path(__file__).parent
_GOLDEN_CANDIDATES = [
    Path(os.environ["MAFT_GOLDEN_DIR"]) if "MAFT_GOLDEN_DIR" in os.environ else None,
    _HERE.parents[3] / "shared" / "reference" / "golden",  # shared/ beside the checkout
]


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-trivial random values (LayerNorm gains, biases, ...)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim == 1 and ("ln" in name or "norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def golden() -> dict:
    """Outputs of the official IP-CLIP forward (``ipclip_224.pt`` of the golden folder).

    The 4 MB file is not copied into git; CI has ``shared/`` beside the clone. Where it is absent,
    a CI run fails (the parity test must run there) and a local run skips.
    """
    for d in _GOLDEN_CANDIDATES:
        if d is not None and (d / "ipclip_224.pt").is_file():
            return torch.load(d / "ipclip_224.pt", weights_only=True)
    msg = "ipclip_224.pt not found (set MAFT_GOLDEN_DIR to shared/reference/golden)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def _tiny_clip_session() -> open_clip.CLIP:
    return randomize_(open_clip.create_model("maft-tiny")).eval()


@pytest.fixture
def tiny_clip(_tiny_clip_session: open_clip.CLIP) -> open_clip.CLIP:
    """A maft-tiny CLIP with random non-trivial weights (fresh copy per test)."""
    model = open_clip.create_model("maft-tiny").eval()
    model.load_state_dict(_tiny_clip_session.state_dict())
    return model


@pytest.fixture
def tiny_clip_file(tiny_clip: open_clip.CLIP, tmp_path: Path) -> Path:
    """The tiny CLIP's open_clip state dict written to a file."""
    path = tmp_path / "maft_tiny.pt"
    torch.save(tiny_clip.state_dict(), path)
    return path


@pytest.fixture
def tiny_tokenizer():
    """open_clip's real BPE tokenizer with maft-tiny's context length."""
    return open_clip.get_tokenizer("maft-tiny")
