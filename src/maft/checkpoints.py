"""Checkpoint files: read them, tell which kind they are, check their keys against a model.

Every error names the file and the problem. The kinds maft reads:

``maft``       a MaftTask (stage-2) Lightning checkpoint: ``state_dict`` + the hyperparameters
               ``vocabulary``, ``clip`` and ``generator`` it is rebuilt from;
``proposals``  a ProposalTask (stage-1) Lightning checkpoint (``criterion`` hyperparameters);
``release``    an official FreeSeg / MAFT detectron2 file (``sem_seg_head.*`` under ``model``);
``clip``       an OpenAI (JIT archive or state dict) or open_clip CLIP state dict;
``unknown``    anything else.

This module imports neither Lightning nor the models, so every layer may use it.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from maft.errors import CheckpointError

KINDS = ("maft", "proposals", "release", "clip", "unknown")
KIND_NAMES = {
    "maft": "a MaftTask (stage-2) checkpoint",
    "proposals": "a ProposalTask (stage-1) checkpoint",
    "release": "an official FreeSeg/MAFT release file",
    "clip": "a CLIP state dict",
    "unknown": "a file maft does not recognise (no maft, release or CLIP checkpoint)",
}
#: Hyperparameters a MaftTask is rebuilt from (``MaftTask.from_checkpoint``).
MAFT_HPARAMS = frozenset({"vocabulary", "clip", "generator"})
#: Entries OpenAI writes next to the CLIP weights (they mark QuickGELU weights).
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_CLIP_KEYS = ("logit_scale", "token_embedding.weight", "visual.conv1.weight")
_NESTED_KEYS = ("state_dict", "model")
_SHOWN = 6


# ------------------------------------------------------------------------------------- reading
def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive (OpenAI's released CLIP ``.pt`` files are JIT archives)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") for n in zf.namelist())


def _load(path: Path, map_location: Any, weights_only: bool, mmap: bool) -> Any:
    """``torch.load``; with ``mmap``, files of the legacy (non-zip) format are read plainly."""
    if mmap:
        try:
            return torch.load(path, map_location=map_location, weights_only=weights_only, mmap=True)
        except Exception:  # noqa: BLE001 - mmap needs the zip format; the plain read names errors
            pass
    return torch.load(path, map_location=map_location, weights_only=weights_only)


def read_checkpoint(
    path: str | Path,
    map_location: Any = "cpu",
    *,
    what: str = "checkpoint",
    weights_only: bool = True,
    mmap: bool = False,
) -> dict[str, Any]:
    """``torch.load`` of a checkpoint dict; ``CheckpointError`` naming the file when it is missing,
    unreadable or not a dict (``what`` names the file's role in the messages)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        obj = _load(path, map_location, weights_only, mmap)
    except Exception as err:  # noqa: BLE001 - any unreadable file: one message naming it
        reason, hint = str(err), ""
        if weights_only and isinstance(err, pickle.UnpicklingError):
            detail = reason.partition("WeightsUnpickler error:")[2].strip()  # torch's own words
            reason = detail.splitlines()[0] if detail else reason
            hint = "; a trusted file holding non-tensor objects loads with weights_only=False"
        raise CheckpointError(f"{path}: cannot read {what} ({reason}){hint}") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a {what} (holds a {type(obj).__name__}, not a dict)")
    return obj


def read_lightning_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint (a dict with ``state_dict``) with errors naming the file."""
    ckpt = read_checkpoint(path, map_location)
    if not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def read_state_dict(
    path: str | Path, *, weights_only: bool = True
) -> tuple[dict[str, torch.Tensor], bool]:
    """A flat tensor state dict from any weights file, and whether it is in OpenAI format.

    Accepts a bare state dict, one nested under ``state_dict`` / ``model`` (Lightning,
    detectron2), and OpenAI JIT or state-dict archives. A leading ``module.`` is stripped; the
    OpenAI entries ``input_resolution`` / ``context_length`` / ``vocab_size`` are dropped.
    """
    path = Path(path)
    if path.is_file() and is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
                obj: Any = torch.jit.load(str(path), map_location="cpu").state_dict()
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(f"{path}: cannot read TorchScript archive ({err})") from err
        is_openai = True
    else:
        obj, is_openai = read_checkpoint(path, weights_only=weights_only), False
    sd = _flat_state_dict(obj)
    if not sd:
        raise CheckpointError(f"{path}: holds no state dict (no tensor among its entries)")
    is_openai = is_openai or any(k in sd for k in OPENAI_EXTRA_KEYS)
    return {k: v for k, v in sd.items() if k not in OPENAI_EXTRA_KEYS}, is_openai


def _flat_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of ``obj`` or of its ``state_dict`` / ``model`` entry, ``module.`` stripped."""
    for key in _NESTED_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


# ------------------------------------------------------------------------------------- kinds
def checkpoint_kind(obj: Any) -> str:
    """The kind (one of :data:`KINDS`) of a loaded checkpoint object."""
    if not isinstance(obj, Mapping):
        return "unknown"
    if isinstance(obj.get("state_dict"), Mapping):  # Lightning
        hp = obj.get("hyper_parameters")
        if isinstance(hp, Mapping):
            if "criterion" in hp:  # only ProposalTask has a stage-1 criterion (old and new forms)
                return "proposals"
            if MAFT_HPARAMS <= set(hp):
                return "maft"
        return "clip" if _looks_like_clip(obj) else "unknown"
    sd = obj.get("model", obj)
    if isinstance(sd, Mapping) and any(str(k).startswith("sem_seg_head.") for k in sd):
        return "release"
    return "clip" if _looks_like_clip(obj) else "unknown"


def _looks_like_clip(obj: Mapping[str, Any]) -> bool:
    sd = _flat_state_dict(obj)
    return any(k in sd for k in _CLIP_KEYS) or any(k in obj for k in OPENAI_EXTRA_KEYS)


def identify_checkpoint(path: str | Path) -> str:
    """The kind of the file at ``path`` (memory-mapped read); CheckpointError when unreadable."""
    return _read_for_kind(path)[1]


def _read_for_kind(path: str | Path) -> tuple[Any, str]:
    """The checkpoint object (None for a TorchScript archive) and its kind."""
    path = Path(path)
    if path.is_file() and is_torchscript(path):
        return None, "clip"
    obj = read_checkpoint(path, mmap=True)
    return obj, checkpoint_kind(obj)


def _describe(obj: Any, kind: str) -> str:
    """What the file is, for messages (an unknown Lightning file: why it cannot be used)."""
    if kind != "unknown":
        return KIND_NAMES[kind]
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return "a Lightning checkpoint without maft hyperparameters (no model can be rebuilt)"
    return KIND_NAMES["unknown"]


def wrong_kind(
    path: str | Path, obj: Any, expected: Collection[str], hint: str = ""
) -> CheckpointError | None:
    """The error saying what ``obj`` (read from ``path``) is and which kind was expected, or None
    when its kind is among ``expected`` (``hint``: what to do instead)."""
    kind = "clip" if obj is None else checkpoint_kind(obj)
    if kind in expected:
        return None
    wanted = " or ".join(KIND_NAMES[k] for k in expected)
    tail = f" ({hint})" if hint else ""
    return CheckpointError(f"{path} is {_describe(obj, kind)}, not {wanted}{tail}")


def expect_kind(path: str | Path, expected: Collection[str], hint: str = "") -> str:
    """The kind of ``path`` when it is one of ``expected``, checked before any model is built;
    else CheckpointError saying what the file is instead."""
    obj, kind = _read_for_kind(path)
    error = wrong_kind(path, obj, expected, hint)
    if error is not None:
        raise error
    return kind


# ------------------------------------------------------------------------------------- keys
def _listed(label: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {label}: [{', '.join(keys[:_SHOWN])}]{more}"


def raise_key_problems(
    source: str | Path,
    missing: Iterable[str] = (),
    unexpected: Iterable[str] = (),
    wrong_shape: Iterable[str] = (),
    what: str = "the model",
    hint: str = "",
) -> None:
    """CheckpointError naming ``source`` and listing the bad keys (none when no list has any)."""
    lists = {
        "missing": list(missing),
        "unexpected": list(unexpected),
        "wrong shape": list(wrong_shape),
    }
    parts = [_listed(label, keys) for label, keys in lists.items() if keys]
    if parts:
        tail = f". {hint}" if hint else ""
        raise CheckpointError(f"{source} does not fit {what}: " + "; ".join(parts) + tail)


def check_keys(
    expected: Mapping[str, Any],
    given: Mapping[str, Any],
    source: str | Path,
    what: str = "the model",
    hint: str = "",
) -> None:
    """Compare a checkpoint's state dict ``given`` with a model's ``expected`` one: missing,
    unexpected and mis-shaped keys raise one CheckpointError naming ``source``."""
    wrong = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in given
        if k in expected
        and hasattr(given[k], "shape")
        and hasattr(expected[k], "shape")
        and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    raise_key_problems(
        source,
        [k for k in expected if k not in given],
        [k for k in given if k not in expected],
        wrong,
        what,
        hint,
    )


def check_load_result(result: Any, source: str | Path, what: str = "the model") -> None:
    """Raise for the missing / unexpected keys of a ``load_state_dict(strict=False)`` result."""
    raise_key_problems(source, result.missing_keys, result.unexpected_keys, what=what)


__all__ = [
    "KINDS",
    "KIND_NAMES",
    "MAFT_HPARAMS",
    "OPENAI_EXTRA_KEYS",
    "check_keys",
    "check_load_result",
    "checkpoint_kind",
    "expect_kind",
    "identify_checkpoint",
    "is_torchscript",
    "raise_key_problems",
    "read_checkpoint",
    "read_lightning_checkpoint",
    "read_state_dict",
    "wrong_kind",
]
