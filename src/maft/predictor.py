"""Predictor: load a MaftTask checkpoint once, segment any image with any vocabulary (§a, §d.3).

``Predictor.from_checkpoint(path).predict(image, ["cat", "sofa", "wall"])`` runs the test-time
pipeline: short-side resize (default 640, long side <= 2560), pad to a multiple of 32, the
:class:`~maft.models.segmenter.ZeroShotSegmenter` of the chosen mode, scores cropped and resized
back to the original size. Vocabulary names that match a training class (case-insensitive) count as
seen for the λ-ensemble (§a.4); the others are unseen. ``run_predict_cli`` is the backend of
``python -m maft.predict``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from maft.data.collate import SemSegCollate
from maft.data.names import normalize_name
from maft.data.vocabulary import Vocabulary
from maft.errors import CheckpointError, ConfigError, DatasetFileError
from maft.models.segmenter import SegmenterOutput
from maft.viz import overlay, proposal_panel, to_rgb_array, write_label_png

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
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


def resolve_images(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """An image file, a folder (its images, sorted), a glob pattern, or a list of those."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in resolve_images(s)]
    path = Path(str(spec))
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        found = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
    if not found:
        raise DatasetFileError(
            f"no image found at {spec!r} (give a file, a folder of {'/'.join(IMAGE_SUFFIXES)} "
            "images, or a glob such as 'photos/*.jpg')"
        )
    return found


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


def _check_kind(path: Path) -> None:
    """Raise ``CheckpointError`` for stage-1 or foreign checkpoints before building anything."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - from_checkpoint re-reads and names the problem
        return
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if isinstance(hp, dict) and "criterion" in hp and "vocabulary" not in hp:
        raise CheckpointError(
            f"{path} is a ProposalTask (stage-1) checkpoint; prediction needs a MaftTask (stage-2) "
            "checkpoint, e.g. checkpoints/maft/final.ckpt of a training run"
        )
    if isinstance(ckpt, dict) and "state_dict" in ckpt and not isinstance(hp, dict):
        raise CheckpointError(
            f"{path} carries no hyperparameters, so the model cannot be rebuilt: not a maft "
            "MaftTask checkpoint"
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

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        _check_kind(path)
        task = MaftTask.from_checkpoint(path)
        if lambda_ is not None:
            task.lambda_ = float(lambda_)
        if form is not None:
            task.form = str(form)
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
        """uint8 ``[H, W, 3]`` -> a one-image batch as at test time (§d.3): resize, pad to 32."""
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
            proposals=describe_proposals(out, info["batch"], vocab.names, top_k),
            scores=scores if return_scores else None,
            image=info["image"],
        )

    def proposal_figure(
        self,
        image: ImageLike,
        vocabulary: VocabLike,
        num: int = 4,
        top_k: int = 5,
        min_area: float = 0.01,
    ) -> tuple[Image.Image, list[dict[str, Any]]]:
        """The paper's figure: the ``num`` proposals where frozen CLIP and MAFT disagree most.

        Both rows use the same proposals (one generator); frozen = teacher IP-CLIP
        (``frozen_ip_clip``), MAFT = fine-tuned IP-CLIP (``maft``). Proposals are ranked by the
        total-variation distance between the two ``A^c`` distributions, among valid proposals
        covering at least ``min_area`` of the image (see :func:`select_proposals`). Returns the
        picture and, per proposal shown, ``{"index", "area_share", "disagreement", "frozen",
        "maft"}``.
        """
        out_maft, info = self.run(image, vocabulary, mode="maft")
        out_frozen, _ = self.run(info["image"], info["vocab"], mode="frozen_ip_clip")
        names, batch = info["vocab"].names, info["batch"]
        props = describe_proposals(out_maft, batch, names, top_k)
        tv = disagreement(out_frozen.clip_probs[0], out_maft.clip_probs[0])  # [N]
        chosen = select_proposals(props, tv, num, min_area)
        masks = proposal_masks(out_maft, batch)[chosen]  # [K, H0, W0]
        rows = [
            {
                "index": q,
                "area_share": props[q]["area_share"],
                "disagreement": round(float(tv[q]), 6),
                "frozen": [tuple(t) for t in _topk(out_frozen.clip_probs[0, q], names, top_k)],
                "maft": [tuple(t) for t in _topk(out_maft.clip_probs[0, q], names, top_k)],
            }
            for q in chosen
        ]
        picture = proposal_panel(
            info["image"],
            masks.cpu().numpy(),
            [r["frozen"] for r in rows],
            [r["maft"] for r in rows],
        )
        return picture, rows


def disagreement(frozen: torch.Tensor, maft: torch.Tensor) -> torch.Tensor:
    """Total-variation distance between two ``A^c`` rows per proposal: ``[N, C], [N, C] -> [N]``."""
    return 0.5 * (frozen.float() - maft.float()).abs().sum(-1).cpu()


def select_proposals(
    props: Sequence[dict[str, Any]], tv: torch.Tensor, num: int, min_area: float = 0.01
) -> list[int]:
    """Indices of the ``num`` proposals to show, most disagreeing first.

    Valid proposals covering at least ``min_area`` of the image come first, by decreasing
    total-variation distance ``tv`` (ties: lower index); when fewer qualify, the rest fill in
    (valid before invalid, large before small, then by ``tv``).
    """

    def key(p: dict[str, Any]) -> tuple[bool, bool, float, int]:
        q = int(p["index"])
        return (not p["valid"], p["area_share"] < min_area, -float(tv[q]), q)

    return [int(p["index"]) for p in sorted(props, key=key)[: max(int(num), 0)]]


# ---------------------------------------------------------------------------------------- proposals
def _topk(probs: torch.Tensor, names: Sequence[str], k: int) -> list[list[Any]]:
    vals, idx = probs.float().topk(min(k, probs.shape[-1]))
    return [[names[int(i)], round(float(v), 6)] for v, i in zip(vals, idx)]


def proposal_masks(
    out: SegmenterOutput, batch: dict[str, Any], index: int = 0, full_size: bool = True
) -> torch.Tensor:
    """Soft proposal masks of one image: ``[N, H0, W0]`` (or ``[N, h, w]``: the valid 1/4 grid).

    Same path as the semantic scores (§a.5): bilinear to the canvas (``align_corners=True``), crop
    to the valid region, bilinear to the original size, then the sigmoid.
    """
    logits = out.mask_logits[index : index + 1].float()  # [1, N, h4, w4]
    hp, wp = (int(s) for s in batch["image"].shape[-2:])
    vh, vw = (int(v) for v in batch["valid_size"][index])
    if not full_size:
        h4, w4 = logits.shape[-2:]
        rows, cols = max(1, round(vh * h4 / hp)), max(1, round(vw * w4 / wp))
        return logits[0, :, :rows, :cols].sigmoid()  # [N, rows, cols]
    h0, w0 = (int(v) for v in batch["orig_size"][index])
    canvas = F.interpolate(logits, size=(hp, wp), mode="bilinear", align_corners=True)
    crop = canvas[..., :vh, :vw]  # [1, N, vh, vw]
    full = F.interpolate(crop, size=(h0, w0), mode="bilinear", align_corners=False)
    return full[0].sigmoid()  # [N, H0, W0]


def describe_proposals(
    out: SegmenterOutput, batch: dict[str, Any], names: Sequence[str], top_k: int = 5
) -> list[dict[str, Any]]:
    """Per proposal: mask area (original-size pixels, share), validity, top-k of Â and A^c."""
    masks = proposal_masks(out, batch, full_size=False)  # [N, rows, cols]
    share = (masks > 0.5).flatten(1).float().mean(1)  # [N]
    h0, w0 = (int(v) for v in batch["orig_size"][0])
    result = []
    for q in range(masks.shape[0]):
        result.append(
            {
                "index": q,
                "area": int(round(float(share[q]) * h0 * w0)),
                "area_share": round(float(share[q]), 6),
                "valid": bool(out.valid[0, q]),
                "top_k": _topk(out.ensembled[0, q], names, top_k),
                "clip_top_k": _topk(out.clip_probs[0, q], names, top_k),
            }
        )
    return result


# ------------------------------------------------------------------------------------ CLI backend
def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` for DictConfig or dict, resolved to plain Python."""
    from omegaconf import DictConfig, OmegaConf

    node = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return default if node is None else node


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in used:
        stem, n = f"{path.stem}_{n}", n + 1
    used.add(stem)
    return stem


def check_writable(out_dir: Path) -> None:
    """ConfigError now, before any work, when ``out_dir`` cannot be created or written."""
    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"output folder {out_dir} is not writable (checked {probe}); choose another "
            "output_dir=..."
        )


def _output_files(out_dir: Path, images: Sequence[Path]) -> list[dict[str, Path]]:
    """The label PNG, overlay PNG and JSON each image will write (stems made unique)."""
    used: set[str] = set()
    plans = []
    for path in images:
        stem = _unique_stem(path, used)
        plans.append(
            {
                "label": out_dir / f"{stem}_label.png",
                "overlay": out_dir / f"{stem}_overlay.png",
                "json": out_dir / f"{stem}.json",
            }
        )
    return plans


def _load_predictor(cfg: Any, ckpt: str) -> Predictor:
    """A MaftTask checkpoint (or an official release file) as a Predictor, per the CLI options."""
    from maft.models.release import is_release_file

    ens = _get(cfg, "ensemble", {}) or {}
    device, mode = _get(cfg, "device", "auto"), _get(cfg, "mode", "maft")
    if is_release_file(ckpt):
        predictor = Predictor.from_official(ckpt, _get(cfg, "release_config"), device=device)
        if ens.get("lambda_") is not None:
            predictor.task.lambda_ = float(ens["lambda_"])
        if ens.get("form") is not None:
            predictor.task.form = str(ens["form"])
        return predictor
    return Predictor.from_checkpoint(
        ckpt,
        device=device,
        mode=mode,
        short_side=int(_get(cfg, "short_side", 640)),
        lambda_=ens.get("lambda_"),
        form=ens.get("form"),
    )


def run_predict_cli(cfg: Any) -> dict[str, Any]:
    """Segment ``cfg.image`` (file, folder or glob) with ``cfg.vocabulary``; write PNGs + JSON.

    Everything that can be checked is checked before any work: the inputs, the checkpoint, that
    the output folder is writable and that no output would overwrite an existing file (unless
    ``overwrite=true``). An unreadable image does not stop a folder run: the others are written,
    the failures are listed at the end and the run fails (exit status 2).
    """
    from tqdm import tqdm

    ckpt = _get(cfg, "ckpt_path")
    if not ckpt or ckpt == "???":
        raise ConfigError("ckpt_path is required: python -m maft.predict ckpt_path=<MaftTask ckpt>")
    if _get(cfg, "vocabulary") in (None, "???"):
        raise ConfigError("vocabulary is required: vocabulary=[cat,sofa,wall] or a text file")
    images = resolve_images(_get(cfg, "image"))
    vocab = as_vocabulary(_get(cfg, "vocabulary"))
    out_dir = Path(_get(cfg, "output_dir", "predictions"))
    check_writable(out_dir)
    plans = _output_files(out_dir, images)
    existing = [str(f) for plan in plans for f in plan.values() if f.exists()]
    if existing and not _get(cfg, "overwrite", False):
        more = f" (+{len(existing) - 3} more)" if len(existing) > 3 else ""
        raise ConfigError(
            f"refusing to overwrite {existing[:3]}{more}; pass overwrite=true or another "
            "output_dir=..."
        )
    predictor = _load_predictor(cfg, str(ckpt))
    top_k, written, failed = int(_get(cfg, "top_k", 5)), [], []
    for path, files in tqdm(
        list(zip(images, plans)), desc="predict", unit="image", disable=len(images) < 2
    ):
        try:
            pred = predictor.predict(path, vocab, top_k=top_k, return_scores=False)
        except DatasetFileError as err:  # an unreadable image: go on with the others
            failed.append(f"{path}: {err}")
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        write_label_png(pred.label_map, len(pred.names), files["label"])
        pred.overlay().save(files["overlay"], format="PNG")
        record = {"image": str(path), **pred.to_dict()}
        files["json"].write_text(json.dumps(record, indent=2), "utf-8")
        written.append({"image": str(path), **{k: str(v) for k, v in files.items()}})
    split = predictor.split(vocab)
    summary = {
        "checkpoint": str(ckpt),
        "output_dir": str(out_dir),
        "num_images": len(written),
        "mode": predictor.mode,
        "lambda_": predictor.task.lambda_,
        "form": predictor.task.form,
        "names": list(split.names),
        "seen_names": split.seen_names,
        "unseen_names": split.unseen_names,
        "files": written,
        "failed": failed,
    }
    print(f"maft.predict: {len(written)} image(s) -> {out_dir}")
    if split.unseen_names:
        print(f"  unseen (not among the training classes): {', '.join(split.unseen_names)}")
    if failed:
        raise DatasetFileError(
            f"{len(failed)} of {len(images)} image(s) could not be segmented:\n  "
            + "\n  ".join(failed)
        )
    return summary


__all__ = [
    "Prediction",
    "Predictor",
    "as_vocabulary",
    "describe_proposals",
    "disagreement",
    "load_image",
    "proposal_masks",
    "check_writable",
    "resolve_images",
    "run_predict_cli",
    "select_proposals",
    "write_label_png",
]
