"""Batch collation: pad to a multiple of 32, keep valid and original sizes (docs/method.md §4.4).

Images pad bottom/right with ``image_pad_value`` (default 128, the training pad value of §6.2;
models should rely on ``valid_size`` rather than the pad colour), labels with the ignore value.
``valid_size`` is each image's ``(h, w)`` before padding; ``orig_size`` its size on disk, so
predictions are cropped to ``valid_size`` and resized to ``orig_size`` as detectron2 does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


class SemSegCollate:
    """Collate function for :class:`~maft.data.dataset.SemSegDataset` samples."""

    def __init__(
        self, ignore_index: int = 255, size_divisibility: int = 32, image_pad_value: int = 128
    ) -> None:
        self.ignore_index = int(ignore_index)
        self.size_divisibility = int(size_divisibility)
        self.image_pad_value = int(image_pad_value)

    def _padded_size(self, samples: Sequence[dict[str, Any]]) -> tuple[int, int]:
        h = max(int(s["image"].shape[-2]) for s in samples)
        w = max(int(s["image"].shape[-1]) for s in samples)
        d = self.size_divisibility
        if d > 1:
            h, w = math.ceil(h / d) * d, math.ceil(w / d) * d
        return h, w

    @staticmethod
    def _check_original_labels(samples: Sequence[dict[str, Any]]) -> None:
        """A label that does not match its image must be the original-size label."""
        for i, s in enumerate(samples):
            if tuple(s["label"].shape) != tuple(s["orig_size"]):
                raise ValueError(
                    f"{s.get('file_name', i)}: label {tuple(s['label'].shape)} matches neither the "
                    f"image {tuple(s['image'].shape[-2:])} nor the original size {s['orig_size']}"
                )

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Stack samples into ``image`` uint8 [B,3,H,W], ``label`` int64 [B,H,W] and sizes."""
        h, w = self._padded_size(samples)
        b = len(samples)
        # Training: labels share the image canvas. Evaluation: labels stay at their original size
        # (the test transform resizes only the image) and get a canvas of their own.
        aligned = all(tuple(s["label"].shape) == tuple(s["image"].shape[-2:]) for s in samples)
        if aligned:
            lh, lw = h, w
        else:
            self._check_original_labels(samples)
            lh = max(int(s["label"].shape[0]) for s in samples)
            lw = max(int(s["label"].shape[1]) for s in samples)
        images = torch.full((b, 3, h, w), self.image_pad_value, dtype=torch.uint8)
        labels = torch.full((b, lh, lw), self.ignore_index, dtype=torch.int64)
        valid = torch.zeros((b, 2), dtype=torch.int64)
        for i, s in enumerate(samples):
            img, lab = s["image"], s["label"].to(torch.int64)  # uint16 -> int64 first
            ih, iw = img.shape[-2:]
            images[i, :, :ih, :iw] = img
            labels[i, : lab.shape[0], : lab.shape[1]] = lab
            valid[i] = torch.tensor([ih, iw])
        return {
            "image": images,
            "label": labels,
            "valid_size": valid,
            "orig_size": torch.tensor([list(s["orig_size"]) for s in samples], dtype=torch.int64),
            "file_name": [str(s["file_name"]) for s in samples],
        }
