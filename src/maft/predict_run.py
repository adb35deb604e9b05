"""The backend of ``python -m maft.predict``: images in, label PNGs, overlays and JSON out.

:func:`run_predict_cli` checks everything it can before any work (inputs, checkpoint, output
folder, files it would overwrite), loads the model once (a MaftTask checkpoint or an official
release file) and segments each image with :class:`~maft.predictor.Predictor`.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maft.errors import ConfigError, DatasetFileError
from maft.predictor import Predictor, as_vocabulary
from maft.train import check_writable
from maft.viz import write_label_png

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def cfg_value(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` of a DictConfig or dict as plain Python (``default`` when absent or null)."""
    from omegaconf import DictConfig, OmegaConf

    node = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return default if node is None else node


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


def _unique_stem(path: Path, used: set[str]) -> str:
    """``path``'s stem, suffixed ``_1``, ``_2``, ... when an earlier image already took it."""
    stem, n = path.stem, 1
    while stem in used:
        stem, n = f"{path.stem}_{n}", n + 1
    used.add(stem)
    return stem


def output_files(out_dir: Path, images: Sequence[Path]) -> list[dict[str, Path]]:
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


def load_predictor(cfg: Any, ckpt: str) -> Predictor:
    """A MaftTask checkpoint (or an official release file) as a Predictor, per the CLI options."""
    from maft.models.release import is_release_file

    ens = cfg_value(cfg, "ensemble", {}) or {}
    device, mode = cfg_value(cfg, "device", "auto"), cfg_value(cfg, "mode", "maft")
    if is_release_file(ckpt):
        predictor = Predictor.from_official(ckpt, cfg_value(cfg, "release_config"), device=device)
        predictor.task.configure_inference(lambda_=ens.get("lambda_"), form=ens.get("form"))
        return predictor
    return Predictor.from_checkpoint(
        ckpt,
        device=device,
        mode=mode,
        short_side=int(cfg_value(cfg, "short_side", 640)),
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

    ckpt = cfg_value(cfg, "ckpt_path")
    if not ckpt or ckpt == "???":
        raise ConfigError("ckpt_path is required: python -m maft.predict ckpt_path=<MaftTask ckpt>")
    if cfg_value(cfg, "vocabulary") in (None, "???"):
        raise ConfigError("vocabulary is required: vocabulary=[cat,sofa,wall] or a text file")
    images = resolve_images(cfg_value(cfg, "image"))
    vocab = as_vocabulary(cfg_value(cfg, "vocabulary"))
    out_dir = Path(cfg_value(cfg, "output_dir", "predictions"))
    check_writable(out_dir)
    plans = output_files(out_dir, images)
    existing = [str(f) for plan in plans for f in plan.values() if f.exists()]
    if existing and not cfg_value(cfg, "overwrite", False):
        more = f" (+{len(existing) - 3} more)" if len(existing) > 3 else ""
        raise ConfigError(
            f"refusing to overwrite {existing[:3]}{more}; pass overwrite=true or another "
            "output_dir=..."
        )
    predictor = load_predictor(cfg, str(ckpt))
    top_k, written, failed = int(cfg_value(cfg, "top_k", 5)), [], []
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
    "IMAGE_SUFFIXES",
    "cfg_value",
    "load_predictor",
    "output_files",
    "resolve_images",
    "run_predict_cli",
]
