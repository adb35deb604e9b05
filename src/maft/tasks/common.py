"""Pieces shared by the LightningModules: schedules, evaluation targets, stage-1 weight loading."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maft.checkpoints import check_keys, read_lightning_checkpoint
from maft.errors import CheckpointError

#: Generator settings that only choose initial weights (not the architecture).
INIT_ONLY_KEYS = ("backbone_weights", "pretrained_backbone")

#: Evaluation modes of MaftTask: fine-tuned IP-CLIP, frozen IP-CLIP, frozen CLIP on merged crops.
EVAL_MODES = ("maft", "frozen_ip_clip", "frozen_merge")


def poly_lambda(
    max_steps: int, power: float = 0.9, warmup_steps: int = 0
) -> Callable[[int], float]:
    """LR factor: linear warm-up, then ``(1 - t/T)^power`` (WarmupPolyLR; power 0: constant)."""
    total = max(int(max_steps), 1)

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1.0 - step / total) ** power

    return factor


def segmentation_targets(
    preds: list[torch.Tensor], batch: dict[str, Any]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Pair each prediction (at the original size) with its label at the original size.

    Evaluation labels must come at the original resolution (the test transform resizes only the
    image); a label of another size is an error, never a silent resize.
    """
    labels = batch["label"]
    for i, pred in enumerate(preds):
        h0, w0 = (int(v) for v in batch["orig_size"][i])
        if labels.shape[-2] < h0 or labels.shape[-1] < w0:
            raise ValueError(
                f"evaluation label of {batch['file_name'][i]} is {tuple(labels.shape[-2:])}, "
                f"smaller than the original image {h0}x{w0}: evaluation needs original-size labels"
            )
        yield pred, labels[i, :h0, :w0].to(pred.device)


def load_generator_weights(
    generator: nn.Module, path: str | Path, expected_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Load the ``generator.*`` weights of a ProposalTask checkpoint into ``generator``.

    Returns the checkpoint's hyperparameters. Raises ``CheckpointError`` naming the file when the
    file is not a ProposalTask checkpoint or when its architecture differs from ``expected_kwargs``.
    """
    ckpt = read_lightning_checkpoint(path)
    hp = dict(ckpt.get("hyper_parameters") or {})
    if expected_kwargs is not None and "generator" in hp:
        diff = {
            k: (hp["generator"].get(k), v)
            for k, v in expected_kwargs.items()
            if k in hp["generator"] and k not in INIT_ONLY_KEYS and hp["generator"][k] != v
        }
        if diff:
            raise CheckpointError(
                f"{path}: proposal generator architecture differs from the config "
                f"(key: (checkpoint, config)) {diff}"
            )
    prefix = "generator."
    sd = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not sd:
        raise CheckpointError(f"{path}: no 'generator.*' weights: not a ProposalTask checkpoint")
    check_keys(generator.state_dict(), sd, path, "the proposal generator")
    generator.load_state_dict(sd)
    return hp
