"""Predictor: load a MaftTask checkpoint once, segment any image with any vocabulary.

Test-time inference as docs/method.md §4 describes it.

``Predictor.from_checkpoint(path).predict(image, ["cat", "sofa", "wall"])`` runs the test-time
pipeline: short-side resize (default 640, long side <= 2560), pad to a multiple of 32, the
:class:`~maft.models.segmenter.ZeroShotSegmenter` of the chosen mode, scores cropped and resized
back to the original size. Vocabulary names that match a training class (case-insensitive) count as
seen for the λ-ensemble (docs/method.md §4.2); the others are unseen. The CLI backend of ``python -m
maft.predict`` is :mod:`maft.predict_run`; the proposal figure is in :mod:`maft.pictures`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from maft.checkpoints import expect_kind
from maft.data.collate import SemSegCollate
from maft.data.names import normalize_name
from maft.data.vocabulary import Vocabulary
from maft.errors import DatasetFileError
from maft.models.segmenter import SegmenterOutput, describe_proposals
from maft.viz import overlay, to_rgb_array

log = logging.getLogger(__name__)

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor
VocabLike = Sequence[str] | Vocabulary | str | Path


# ---------------------------------------------------------------------------------------- inputs
def load_image(image: ImageLike) -> np.ndarray:
    """Path / PIL / uint8 ``[H, W, 3]`` array / ``[3, H, W]`` tensor (0-255) -> ``[H, W, 3]``.

    Files are turned upright by their EXIF orientation, so outputs match what viewers show.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise DatasetFileError(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                upright = ImageOps.exif_transpose(im)  # phone photos: as they are displayed
                return np.array(upright.convert("RGB"), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DatasetFileError(f"cannot read image {path}: {err}") from None
    try:
        arr = to_rgb_array(image)
    except ValueError as err:
        raise DatasetFileError(f"unusable image input: {err}") from None
    if min(arr.shape[:2]) < 1:
        raise DatasetFileError(f"empty image of shape {arr.shape}")
    return arr


def as_vocabulary(vocabulary: VocabLike) -> Vocabulary:
    """A list of names, a :class:`Vocabulary`, a text file or a string list.

    A string without commas or brackets is a file path (missing file: an error with a hint); a
    one-class vocabulary is a list such as ``["cat"]``. Full rules: :meth:`Vocabulary.parse`.
    """
    return Vocabulary.parse(vocabulary)


# ---------------------------------------------------------------------------------------- result
@dataclass
class Prediction:
    """Result of :meth:`Predictor.predict` for one image."""

    label_map: torch.Tensor  # int64 [H, W], indices into ``names``
    names: list[str]
    seen_names: list[str]
    unseen_names: list[str]
    proposals: list[dict[str, Any]]
    scores: torch.Tensor | None = None  # float32 [C, H, W] (sem_seg before argmax) or None
    image: np.ndarray | None = field(default=None, repr=False)  # uint8 [H, W, 3]

    def class_shares(self) -> dict[str, float]:
        """Pixel share of each class present, largest first (shares sum to 1)."""
        counts = torch.bincount(self.label_map.flatten(), minlength=len(self.names))
        total = max(int(self.label_map.numel()), 1)
        order = sorted(
            (i for i in range(len(self.names)) if counts[i] > 0), key=lambda i: -int(counts[i])
        )
        return {self.names[i]: int(counts[i]) / total for i in order}

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The image with the class colours blended in and a legend of the classes present."""
        if self.image is None:
            raise ValueError("this Prediction holds no image")
        return overlay(self.image, self.label_map.numpy(), self.names, alpha=alpha)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: class shares, seen / unseen names, proposals."""
        return {
            "names": list(self.names),
            "class_shares": self.class_shares(),
            "seen_names": list(self.seen_names),
            "unseen_names": list(self.unseen_names),
            "proposals": self.proposals,
        }


# ---------------------------------------------------------------------------------------- predictor
def _pick_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


PREDICT_HINT = (
    "a MAFT run writes one as checkpoints/maft/final.ckpt; an official release file loads with "
    "Predictor.from_official"
)


class Predictor:
    """A MaftTask ready for inference on user images and vocabularies (the Python API)."""

    def __init__(
        self,
        task: Any,
        device: str | torch.device = "cpu",
        mode: str = "maft",
        short_side: int = 640,
        max_long_side: int = 2560,
    ) -> None:
        self.device = _pick_device(device)
        self.task = task.to(self.device).eval()
        self.mode = mode
        self.short_side, self.max_long_side = int(short_side), int(max_long_side)
        self.segmenter(mode)  # unknown modes fail here, naming the valid ones
        self.training_names = {normalize_name(n) for n in task.vocab.seen_names}
        self.collate = SemSegCollate(ignore_index=255, size_divisibility=32)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        mode: str = "maft",
        short_side: int = 640,
        lambda_: float | None = None,
        form: str | None = None,
    ) -> Predictor:
        """Rebuild a MaftTask from ``path`` alone (no download, no stage-1 file)."""
        from maft.tasks.maft_task import MaftTask

        expect_kind(path, ["maft"], PREDICT_HINT)  # before anything is built
        task = MaftTask.from_checkpoint(path).configure_inference(lambda_=lambda_, form=form)
        return cls(task, device=device, mode=mode, short_side=short_side)

    @classmethod
    def from_official(
        cls,
        weights: str | Path,
        config: str | Path | None = None,
        device: str | torch.device = "cpu",
        mode: str | None = None,
    ) -> Predictor:
        """Rebuild a released model from its detectron2 checkpoint (``freeseg_model.pt``,
        ``MAFT_Vitb.pt``, ``MAFT_Vitl.pt``) as released, or with an official resolved yaml.

        Test-time settings (short side, long side, λ) come from ``config`` when given, else the
        released ones (640, 2560, 0). ``mode`` defaults to ``maft`` for MAFT files and
        ``frozen_ip_clip`` (FreeSeg's row) for FreeSeg files.
        """
        from maft.tasks.release import maft_task_from_release

        task, settings, _ = maft_task_from_release(weights, config)
        return cls(
            task,
            device=device,
            mode=mode or task.eval_mode,
            short_side=settings.min_size_test,
            max_long_side=settings.max_size_test,
        )

    def segmenter(self, mode: str | None = None) -> Any:
        """The task's ZeroShotSegmenter of ``mode`` (default: the predictor's mode)."""
        return self.task.segmenter(mode or self.mode)

    def split(self, vocab: Vocabulary) -> Vocabulary:
        """``vocab`` with seen = matches a training class and not marked ``| unseen``."""
        match = [normalize_name(n) in self.training_names for n in vocab.names]
        seen = torch.tensor(match, dtype=torch.bool) & vocab.seen
        return Vocabulary(vocab.names, seen, vocab.ignore_index, vocab.benchmark, vocab.split)

    def preprocess(self, image: np.ndarray) -> dict[str, Any]:
        """uint8 ``[H, W, 3]`` -> a one-image batch as at test time: resize, pad to 32.

        Test-time geometry: docs/method.md §4.4.
        """
        from maft.data.transforms import shortest_edge_size

        h0, w0 = image.shape[:2]
        h, w = shortest_edge_size(h0, w0, self.short_side, self.max_long_side)
        resized = (
            image
            if (h, w) == (h0, w0)
            else np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        )
        tensor = torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1)  # [3, h, w]
        sample = {
            "image": tensor,
            "label": torch.zeros((h, w), dtype=torch.int64),
            "orig_size": (h0, w0),
            "file_name": "input",
        }
        return self.collate([sample])

    @torch.no_grad()
    def run(
        self, image: ImageLike, vocabulary: VocabLike, mode: str | None = None
    ) -> tuple[SegmenterOutput, dict[str, Any]]:
        """Low-level forward: SegmenterOutput plus the batch, the split vocabulary, the image."""
        img = load_image(image)
        vocab = self.split(as_vocabulary(vocabulary))
        batch = self.preprocess(img)
        text = self.task.text_embeddings(vocab)  # [C, D]
        out = self.segmenter(mode)(
            batch["image"].to(self.device),
            text,
            vocab.seen.to(self.device),
            batch["valid_size"],
            batch["orig_size"],
        )
        return out, {"batch": batch, "vocab": vocab, "image": img}

    def predict(
        self,
        image: ImageLike,
        vocabulary: VocabLike,
        top_k: int = 5,
        return_scores: bool = True,
        mode: str | None = None,
    ) -> Prediction:
        """Segment ``image`` over ``vocabulary``; label values index the vocabulary's names.

        ``scores`` is the per-class score map ``[C, H, W]`` at the original size before the argmax
        (the official ``sem_seg`` output; ``label_map`` is its argmax); pass
        ``return_scores=False`` to drop it (large vocabularies on large images).
        """
        out, info = self.run(image, vocabulary, mode)
        vocab = info["vocab"]
        scores = out.scores[0].float().cpu()  # [C, H0, W0]
        return Prediction(
            label_map=out.labels[0].to(torch.int64).cpu(),
            names=list(vocab.names),
            seen_names=vocab.seen_names,
            unseen_names=vocab.unseen_names,
            proposals=describe_proposals(out, vocab.names, top_k),
            scores=scores if return_scores else None,
            image=info["image"],
        )


__all__ = ["Prediction", "Predictor", "as_vocabulary", "load_image"]
